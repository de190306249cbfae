package cluster

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/auth"
)

func TestCommandRoundTrip(t *testing.T) {
	token, err := auth.NewToken(nil)
	require.NoError(t, err)
	hash := HashToken(token)
	for _, c := range []*command{
		{Op: OpPutTenant, Tenant: &Tenant{ID: "acme", Limits: Limits{IngestionRateSpans: 100, IngestionBurstSpans: 200, IngestionRateBytes: 1e6, MaxSeriesPerTenant: 1000},
			Settings: map[string]string{"ruler.evaluation-interval": "15s"}, TokenHashes: []TokenHash{hash}, Version: 7}},
		{Op: OpDeleteTenant, Tenant: &Tenant{ID: "acme"}},
		{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: "ns", Name: "g", YAML: "name: g\n"}},
		{Op: OpDeleteRuleGroup, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: "ns", Name: "g"}},
		{Op: OpDeleteNamespace, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: "ns"}},
		{Op: OpExcludeWriter, Exclusion: &Exclusion{Tenant: "acme", Writer: "w", Reason: "drain"}},
		{Op: OpIncludeWriter, Exclusion: &Exclusion{Tenant: "acme", Writer: "w"}},
		{Op: OpPutMember, Member: &Member{ID: "n1", GRPCAddr: "10.0.0.1:9802"}},
		{Op: OpSetMemberState, Member: &Member{ID: "n1", State: MemberUnreachable}},
	} {
		t.Run(string(c.Op), func(t *testing.T) {
			b, err := encodeCommand(nil, c)
			require.NoError(t, err)
			require.True(t, bytes.HasPrefix(b, []byte(`{"v":1,"op":"`+string(c.Op)+`"`)), "%s", b)
			got, err := decodeCommand(b)
			require.NoError(t, err)
			require.Equal(t, c, got)
		})
	}
}

func TestCommandDecodeRefuses(t *testing.T) {
	f := func(in string, kind error, contains string) {
		t.Helper()
		_, err := decodeCommand([]byte(in))
		require.ErrorIs(t, err, kind, "%s", in)
		require.ErrorIs(t, err, ErrInvalid, "%s", in)
		require.Contains(t, err.Error(), contains)
	}
	f(`{"v":2,"op":"tenant.put","tenant":{"id":"a"}}`, ErrUnsupportedVersion, "upgrade")
	f(`{"v":0,"op":"tenant.put","tenant":{"id":"a"}}`, ErrUnsupportedVersion, "version 0")
	f(`{"op":"tenant.put","tenant":{"id":"a"}}`, ErrInvalid, `no format version`)
	f(`not json`, ErrInvalid, "not one JSON object")
	f(``, ErrInvalid, "not one JSON object")
	f(`{"v":1,"op":"tenant.put","tenant":{"id":"a","colour":"red"}}`, ErrInvalid, `unknown field "colour"`)
	f(`{"v":1,"op":"tenant.put","tenant":{"id":"a"}} {}`, ErrInvalid, "after top-level value")
	f(`{"v":1,"op":"tenant.rename","tenant":{"id":"a"}}`, ErrInvalid, `unknown op "tenant.rename"`)
	f(`{"v":1,"op":"tenant.put"}`, ErrInvalid, `exactly one payload, "tenant"`)
	f(`{"v":1,"op":"tenant.put","tenant":{"id":"a"},"member":{"id":"n1"}}`, ErrInvalid, "exactly one payload")
	f(`{"v":1,"op":"tenant.put","tenant":{"id":"a","token_hashes":["abc"]}}`, ErrInvalid, "64 hex digits")
	f(`{"v":1,"op":"rule_group.put","rule_group":{"tenant":"a","namespace":"ns","name":"g"}}`, ErrInvalid, "rule_group.yaml: is empty")
}

func TestCommandValidation(t *testing.T) {
	f := func(c *command, fields ...string) {
		t.Helper()
		err := c.validate()
		if len(fields) == 0 {
			require.NoError(t, err)
			return
		}
		require.ErrorIs(t, err, ErrInvalid)
		var got []string
		for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
			var ve *ValidationError
			require.True(t, errors.As(e, &ve), "%v", e)
			got = append(got, ve.Field)
		}
		require.Equal(t, fields, got, "%v", err)
	}
	tenant := func(mod func(*Tenant)) *command {
		t := &Tenant{ID: "acme"}
		mod(t)
		return &command{Op: OpPutTenant, Tenant: t}
	}
	f(tenant(func(*Tenant) {}))
	f(tenant(func(t *Tenant) { t.ID = "" }), "tenant.id")
	f(tenant(func(t *Tenant) { t.ID = "a/b" }), "tenant.id")
	f(tenant(func(t *Tenant) { t.ID = strings.Repeat("a", 151) }), "tenant.id")
	f(tenant(func(t *Tenant) {
		t.Limits = Limits{IngestionRateSpans: -1, IngestionRateBytes: math.Inf(1), IngestionBurstSpans: -2, MaxSeriesPerTenant: -3}
	}), "tenant.limits.ingestion_rate_spans", "tenant.limits.ingestion_rate_bytes", "tenant.limits.ingestion_burst_spans", "tenant.limits.max_series_per_tenant")
	f(tenant(func(t *Tenant) { t.Limits.IngestionRateSpans = math.NaN() }), "tenant.limits.ingestion_rate_spans")
	f(tenant(func(t *Tenant) { t.Settings = map[string]string{"Bad Key": "x"} }), "tenant.settings")
	f(tenant(func(t *Tenant) { t.Settings = map[string]string{"ok": strings.Repeat("x", maxSettingValue+1)} }), "tenant.settings.ok")
	f(tenant(func(t *Tenant) { t.TokenHashes = []TokenHash{{}} }), "tenant.token_hashes[0]")
	f(tenant(func(t *Tenant) { t.TokenHashes = []TokenHash{HashToken("a"), HashToken("a")} }), "tenant.token_hashes[1]")
	f(tenant(func(t *Tenant) {
		for i := range maxTokenHashes + 1 {
			t.TokenHashes = append(t.TokenHashes, HashToken(strconv.Itoa(i)))
		}
	}), "tenant.token_hashes")

	group := func(ns, name, yaml string) *command {
		return &command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: ns, Name: name, YAML: yaml}}
	}
	f(group("ns", "g", "x"))
	f(group("", "g", "x"), "rule_group.namespace")
	f(group("ns", "a\nb", "x"), "rule_group.name")
	f(group("ns", "g", strings.Repeat("x", maxRuleGroupBytes+1)), "rule_group.yaml")
	f(&command{Op: OpDeleteRuleGroup, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: "ns", Name: "g", YAML: "x"}}, "rule_group.yaml")

	f(&command{Op: OpDeleteNamespace, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: "ns", Name: "g"}}, "rule_group.name")
	f(&command{Op: OpDeleteNamespace, RuleGroup: &RuleGroup{Tenant: "acme", Namespace: "ns"}})
	f(&command{Op: OpExcludeWriter, Exclusion: &Exclusion{Tenant: "acme", Writer: ""}}, "exclusion.writer")
	f(&command{Op: OpPutMember, Member: &Member{ID: "n 1", GRPCAddr: "host"}}, "member.id", "member.grpc_addr")
	f(&command{Op: OpPutMember, Member: &Member{ID: "n1", GRPCAddr: "host:0"}}, "member.grpc_addr")
	f(&command{Op: OpSetMemberState, Member: &Member{ID: "n1", State: "gone"}}, "member.state")
	f(&command{Op: "x"}, "op")
	f(&command{Op: OpDeleteTenant, RuleGroup: &RuleGroup{}}, "tenant")
}

func TestStateApply(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	s := emptyState()
	index := uint64(0)
	apply := func(c *command) error {
		t.Helper()
		require.NoError(t, c.validate())
		index++
		next, err := s.apply(c, index, at.Add(time.Duration(index)*time.Second))
		if err == nil {
			s = next
		} else {
			require.Equal(t, stateBytes(t, s), stateBytes(t, func() *State { c := *next; c.index = s.index; return &c }()), "a refused change changed the state")
		}
		return err
	}
	ha, hb := HashToken("a"), HashToken("b")
	require.NoError(t, apply(&command{Op: OpPutTenant, Tenant: &Tenant{ID: "t1", TokenHashes: []TokenHash{ha}}}))
	before := s
	require.ErrorIs(t, apply(&command{Op: OpPutTenant, Tenant: &Tenant{ID: "t2", TokenHashes: []TokenHash{ha}}}), ErrConflict)
	require.ErrorIs(t, apply(&command{Op: OpPutTenant, Tenant: &Tenant{ID: "t2", Version: 1}}), ErrConflict)
	require.NoError(t, apply(&command{Op: OpPutTenant, Tenant: &Tenant{ID: "t1", Version: 1, TokenHashes: []TokenHash{hb}}}))
	t1, _ := s.Tenant("t1")
	require.Equal(t, uint64(4), t1.Version)
	require.Equal(t, at.Add(time.Second), t1.Created)
	require.Equal(t, at.Add(4*time.Second), t1.Updated)
	_, ok := s.TenantByToken("a")
	require.False(t, ok, "a replaced token still maps")
	_, ok = before.TenantByToken("a")
	require.True(t, ok, "an older State changed: copy-on-write broken")

	require.NoError(t, apply(&command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "b", Name: "g", YAML: "x"}}))
	require.NoError(t, apply(&command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "a", Name: "g", YAML: "y"}}))
	require.NoError(t, apply(&command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "t9", Namespace: "a", Name: "g", YAML: "y"}}))
	gs := s.RuleGroups("t1")
	require.Len(t, gs, 2)
	require.Equal(t, "a", gs[0].Namespace)
	require.Equal(t, []string{"t1", "t9"}, s.RuleTenants())
	require.ErrorIs(t, apply(&command{Op: OpDeleteRuleGroup, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "c", Name: "g"}}), ErrNotFound)
	require.NoError(t, apply(&command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "c", Name: "g1", YAML: "x"}}))
	require.NoError(t, apply(&command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "c", Name: "g2", YAML: "x"}}))
	require.NoError(t, apply(&command{Op: OpDeleteNamespace, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "c"}}))
	require.Len(t, s.RuleGroups("t1"), 2)
	require.ErrorIs(t, apply(&command{Op: OpDeleteNamespace, RuleGroup: &RuleGroup{Tenant: "t1", Namespace: "c"}}), ErrNotFound)

	require.NoError(t, apply(&command{Op: OpExcludeWriter, Exclusion: &Exclusion{Tenant: "t1", Writer: "w", Reason: "one"}}))
	since := s.Exclusions("t1")[0].Since
	require.NoError(t, apply(&command{Op: OpExcludeWriter, Exclusion: &Exclusion{Tenant: "t1", Writer: "w", Reason: "two"}}))
	require.Equal(t, since, s.Exclusions("t1")[0].Since, "excluding again moved the start")
	require.Equal(t, "two", s.Exclusions("t1")[0].Reason)
	require.NoError(t, apply(&command{Op: OpIncludeWriter, Exclusion: &Exclusion{Tenant: "t1", Writer: "w"}}))
	require.ErrorIs(t, apply(&command{Op: OpIncludeWriter, Exclusion: &Exclusion{Tenant: "t1", Writer: "w"}}), ErrNotFound)
	require.NoError(t, apply(&command{Op: OpExcludeWriter, Exclusion: &Exclusion{Tenant: "t1", Writer: "w"}}))

	require.NoError(t, apply(&command{Op: OpDeleteTenant, Tenant: &Tenant{ID: "t1"}}))
	require.Empty(t, s.RuleGroups("t1"))
	require.Empty(t, s.Exclusions("t1"))
	require.Len(t, s.RuleGroups("t9"), 1, "deleting t1 touched t9")
	require.ErrorIs(t, apply(&command{Op: OpDeleteTenant, Tenant: &Tenant{ID: "t1"}}), ErrNotFound)

	// Members: the gRPC address can come before the node is in raft's
	// configuration; it leaves with the node.
	require.NoError(t, apply(&command{Op: OpPutMember, Member: &Member{ID: "n2", GRPCAddr: "h:2"}}))
	require.Empty(t, s.Members())
	index++
	s = s.withConfiguration(index, []raft.Server{{ID: "n1", Address: "h:1", Suffrage: raft.Voter}, {ID: "n2", Address: "h:21", Suffrage: raft.Nonvoter}})
	require.Equal(t, []Member{
		{ID: "n1", RaftAddr: "h:1", Voter: true, State: MemberLive},
		{ID: "n2", RaftAddr: "h:21", GRPCAddr: "h:2", State: MemberLive, Since: s.infos["n2"].Since},
	}, s.Members())
	require.NoError(t, apply(&command{Op: OpSetMemberState, Member: &Member{ID: "n2", State: MemberUnreachable}}))
	m, _ := s.Member("n2")
	require.Equal(t, MemberUnreachable, m.State)
	require.Equal(t, at.Add(time.Duration(index)*time.Second), m.Since)
	index++
	s = s.withConfiguration(index, []raft.Server{{ID: "n1", Address: "h:1", Suffrage: raft.Voter}})
	require.NotContains(t, s.infos, "n2")

	// The snapshot format holds all of it.
	back, err := decodeSnapshot(strings.NewReader(stateBytes(t, s)))
	require.NoError(t, err)
	require.Equal(t, stateBytes(t, s), stateBytes(t, back))
	_, err = decodeSnapshot(strings.NewReader(`{"v":9}`))
	require.ErrorIs(t, err, ErrUnsupportedVersion)
}

// FuzzDecodeCommand: any input decodes to a valid command or an ErrInvalid
// error, never a panic; a decoded command encodes to bytes that decode to a
// command with the same encoding (an empty map and a missing one are the
// same command).
func FuzzDecodeCommand(f *testing.F) {
	for _, seed := range []string{
		`{"v":1,"op":"tenant.put","tenant":{"id":"acme","limits":{"ingestion_rate_spans":5000},"settings":{"a":"b"},"token_hashes":["` + HashToken("x").String() + `"],"version":3}}`,
		`{"v":1,"op":"tenant.delete","tenant":{"id":"acme"}}`,
		`{"v":1,"op":"rule_group.put","rule_group":{"tenant":"acme","namespace":"ns","name":"g","yaml":"name: g"}}`,
		`{"v":1,"op":"rule_group.delete_namespace","rule_group":{"tenant":"acme","namespace":"ns"}}`,
		`{"v":1,"op":"writer.exclude","exclusion":{"tenant":"acme","writer":"w","reason":"r"}}`,
		`{"v":1,"op":"member.put","member":{"id":"n1","grpc_addr":"h:1"}}`,
		`{"v":1,"op":"member.state","member":{"id":"n1","state":"live"}}`,
		`{"v":2}`, `{}`, `[]`, `null`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := decodeCommand(b)
		if err != nil {
			require.ErrorIs(t, err, ErrInvalid)
			return
		}
		enc, err := encodeCommand(nil, c)
		require.NoError(t, err)
		back, err := decodeCommand(enc)
		require.NoError(t, err)
		enc2, err := encodeCommand(nil, back)
		require.NoError(t, err)
		require.Equal(t, string(enc), string(enc2))
	})
}
