package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// commandVersion is the version of the command format this node writes and
// the only one it reads. A change that an older node would apply
// differently (a new op, a field that changes the meaning of a command)
// needs a new version; adding an optional field whose zero value keeps the
// old meaning does not.
const commandVersion = 1

// Op names the kind of a change.
type Op string

// The ops of command format version 1.
const (
	OpPutTenant       Op = "tenant.put"
	OpDeleteTenant    Op = "tenant.delete"
	OpPutRuleGroup    Op = "rule_group.put"
	OpDeleteRuleGroup Op = "rule_group.delete"
	// OpDeleteNamespace deletes every rule group of a tenant's namespace.
	OpDeleteNamespace Op = "rule_group.delete_namespace"
	OpExcludeWriter   Op = "writer.exclude"
	OpIncludeWriter   Op = "writer.include"
	OpPutMember       Op = "member.put"
	OpSetMemberState  Op = "member.state"
	// OpSetDefaultLimits sets the cluster's default limits, those of
	// every tenant without an override.
	OpSetDefaultLimits Op = "limits.defaults"
)

// Bounds on what one command carries. Metadata is small; these keep one
// tenant's mistake from bloating every node's memory and the log.
const (
	maxNameBytes      = 256
	maxSettings       = 64
	maxSettingKey     = 128
	maxSettingValue   = 4096
	maxTokenHashes    = 32
	maxRuleGroupBytes = 256 << 10
	maxReasonBytes    = 1024
	maxMemberIDBytes  = 128
)

// command is one change to the replicated state, as written to the raft
// log: JSON with the format version in "v", the op, and the op's one
// payload.
//
//	{"v":1,"op":"tenant.put","tenant":{"id":"acme","limits":{"ingestion_rate_spans":5000}}}
//	{"v":1,"op":"tenant.delete","tenant":{"id":"acme"}}
//	{"v":1,"op":"rule_group.put","rule_group":{"tenant":"acme","namespace":"ns","name":"g","yaml":"..."}}
//	{"v":1,"op":"rule_group.delete","rule_group":{"tenant":"acme","namespace":"ns","name":"g"}}
//	{"v":1,"op":"rule_group.delete_namespace","rule_group":{"tenant":"acme","namespace":"ns"}}
//	{"v":1,"op":"writer.exclude","exclusion":{"tenant":"acme","writer":"w1","reason":"draining"}}
//	{"v":1,"op":"writer.include","exclusion":{"tenant":"acme","writer":"w1"}}
//	{"v":1,"op":"member.put","member":{"id":"n2","grpc_addr":"10.0.0.2:9802"}}
//	{"v":1,"op":"member.state","member":{"id":"n2","state":"unreachable"}}
type command struct {
	V         int        `json:"v"`
	Op        Op         `json:"op"`
	Tenant    *Tenant    `json:"tenant,omitempty"`
	RuleGroup *RuleGroup `json:"rule_group,omitempty"`
	Exclusion *Exclusion `json:"exclusion,omitempty"`
	Member    *Member    `json:"member,omitempty"`
	Defaults  *Defaults  `json:"defaults,omitempty"`
}

// Defaults is the payload of OpSetDefaultLimits.
type Defaults struct {
	Limits Limits `json:"limits"`
	// IfUnset applies the change only to a cluster without default
	// limits yet: the first node to start seeds them from its flags, and
	// a node racing it changes nothing.
	IfUnset bool `json:"if_unset,omitempty"`
}

// encodeCommand appends the encoding of c to dst.
func encodeCommand(dst []byte, c *command) ([]byte, error) {
	c.V = commandVersion
	b, err := json.Marshal(c)
	if err != nil {
		return dst, fmt.Errorf("hopwatch/cluster: encode %s: %w", c.Op, err)
	}
	return append(dst, b...), nil
}

// decodeCommand decodes and validates one command. It refuses versions other
// than commandVersion and fields it does not know, so that a node never
// applies a change it only partly understands.
func decodeCommand(b []byte) (*command, error) {
	var head struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("%w: command of %d bytes is not one JSON object: %v", ErrInvalid, len(b), err)
	}
	if head.V == nil {
		return nil, fmt.Errorf("%w: command has no format version (\"v\")", ErrInvalid)
	}
	if *head.V != commandVersion {
		return nil, fmt.Errorf("%w %d: this node reads command version %d; upgrade it", ErrUnsupportedVersion, *head.V, commandVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	c := new(command)
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%w: command version %d: %v", ErrInvalid, commandVersion, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: data after the command", ErrInvalid)
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// validate reports every problem with c, each a *ValidationError.
func (c *command) validate() error {
	var v validator
	payloads := 0
	for _, set := range []bool{c.Tenant != nil, c.RuleGroup != nil, c.Exclusion != nil, c.Member != nil, c.Defaults != nil} {
		if set {
			payloads++
		}
	}
	want := ""
	switch c.Op {
	case OpPutTenant, OpDeleteTenant:
		want = "tenant"
	case OpPutRuleGroup, OpDeleteRuleGroup, OpDeleteNamespace:
		want = "rule_group"
	case OpExcludeWriter, OpIncludeWriter:
		want = "exclusion"
	case OpPutMember, OpSetMemberState:
		want = "member"
	case OpSetDefaultLimits:
		want = "defaults"
	default:
		v.add("op", fmt.Sprintf("unknown op %q", c.Op))
		return v.err()
	}
	if payloads != 1 || (want == "tenant") != (c.Tenant != nil) || (want == "rule_group") != (c.RuleGroup != nil) ||
		(want == "exclusion") != (c.Exclusion != nil) || (want == "member") != (c.Member != nil) || (want == "defaults") != (c.Defaults != nil) {
		v.add(want, fmt.Sprintf("op %s carries exactly one payload, %q", c.Op, want))
		return v.err()
	}
	switch c.Op {
	case OpPutTenant:
		validateTenant(&v, c.Tenant)
	case OpDeleteTenant:
		v.tenantID("tenant.id", c.Tenant.ID)
	case OpPutRuleGroup, OpDeleteRuleGroup, OpDeleteNamespace:
		g := c.RuleGroup
		v.tenantID("rule_group.tenant", g.Tenant)
		v.name("rule_group.namespace", g.Namespace, maxNameBytes)
		if c.Op != OpDeleteNamespace {
			v.name("rule_group.name", g.Name, maxNameBytes)
		} else if g.Name != "" {
			v.add("rule_group.name", "is set on a namespace delete")
		}
		if c.Op == OpPutRuleGroup {
			switch {
			case g.YAML == "":
				v.add("rule_group.yaml", "is empty; send the group's YAML")
			case len(g.YAML) > maxRuleGroupBytes:
				v.add("rule_group.yaml", fmt.Sprintf("is %d bytes, more than the limit of %d; split the group", len(g.YAML), maxRuleGroupBytes))
			case !utf8.ValidString(g.YAML):
				v.add("rule_group.yaml", "is not valid UTF-8")
			}
		} else if g.YAML != "" {
			v.add("rule_group.yaml", "is set on a delete")
		}
	case OpExcludeWriter, OpIncludeWriter:
		e := c.Exclusion
		v.tenantID("exclusion.tenant", e.Tenant)
		v.name("exclusion.writer", e.Writer, maxNameBytes)
		if len(e.Reason) > maxReasonBytes || !utf8.ValidString(e.Reason) {
			v.add("exclusion.reason", fmt.Sprintf("is %d bytes; at most %d bytes of UTF-8 text", len(e.Reason), maxReasonBytes))
		}
	case OpPutMember:
		v.memberID("member.id", c.Member.ID)
		if c.Member.GRPCAddr == "" {
			v.add("member.grpc_addr", "is empty; set the node's cluster gRPC address (host:port)")
		} else {
			v.hostPort("member.grpc_addr", c.Member.GRPCAddr)
		}
	case OpSetDefaultLimits:
		validateLimits(&v, "defaults.limits", c.Defaults.Limits)
	case OpSetMemberState:
		v.memberID("member.id", c.Member.ID)
		if s := c.Member.State; s != MemberLive && s != MemberUnreachable {
			v.add("member.state", fmt.Sprintf("is %q; use %q or %q", s, MemberLive, MemberUnreachable))
		}
	}
	return v.err()
}

func validateLimits(v *validator, field string, l Limits) {
	v.rate(field+".ingestion_rate_spans", l.IngestionRateSpans)
	v.rate(field+".ingestion_rate_bytes", l.IngestionRateBytes)
	v.count(field+".ingestion_burst_spans", l.IngestionBurstSpans)
	v.count(field+".max_series_per_tenant", l.MaxSeriesPerTenant)
}

func validateTenant(v *validator, t *Tenant) {
	v.tenantID("tenant.id", t.ID)
	validateLimits(v, "tenant.limits", t.Limits)
	if len(t.Settings) > maxSettings {
		v.add("tenant.settings", fmt.Sprintf("has %d entries, more than the limit of %d", len(t.Settings), maxSettings))
	}
	for _, k := range slices.Sorted(maps.Keys(t.Settings)) {
		val := t.Settings[k]
		if !validSettingKey(k) {
			v.add("tenant.settings", fmt.Sprintf("key %q: a setting is named by 1 to %d of a-z, 0-9, '.', '-', '_'", k, maxSettingKey))
		}
		if len(val) > maxSettingValue || !utf8.ValidString(val) {
			v.add("tenant.settings."+k, fmt.Sprintf("is %d bytes; at most %d bytes of UTF-8 text", len(val), maxSettingValue))
		}
	}
	if len(t.TokenHashes) > maxTokenHashes {
		v.add("tenant.token_hashes", fmt.Sprintf("has %d hashes, more than the limit of %d; remove unused tokens", len(t.TokenHashes), maxTokenHashes))
	}
	seen := make(map[TokenHash]bool, len(t.TokenHashes))
	for i, h := range t.TokenHashes {
		if h == (TokenHash{}) {
			v.add(fmt.Sprintf("tenant.token_hashes[%d]", i), "is all zeros; store HashToken(token)")
		}
		if seen[h] {
			v.add(fmt.Sprintf("tenant.token_hashes[%d]", i), "repeats an earlier hash")
		}
		seen[h] = true
	}
}

func validSettingKey(k string) bool {
	if k == "" || len(k) > maxSettingKey {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validator collects validation errors.
type validator struct{ errs []error }

func (v *validator) add(field, reason string) {
	v.errs = append(v.errs, &ValidationError{Field: field, Reason: reason})
}

func (v *validator) err() error { return errors.Join(v.errs...) }

func (v *validator) tenantID(field, id string) {
	if err := tenant.Validate(id); err != nil {
		v.add(field, err.Error())
	}
}

// name checks a name that is free text but must stay printable and short:
// namespaces, rule group names, writer IDs.
func (v *validator) name(field, s string, maxLen int) {
	switch {
	case s == "":
		v.add(field, "is empty")
		return
	case len(s) > maxLen:
		v.add(field, fmt.Sprintf("is %d bytes, longer than the limit of %d", len(s), maxLen))
		return
	case !utf8.ValidString(s):
		v.add(field, "is not valid UTF-8")
		return
	}
	for i, r := range s {
		if r < 0x20 || r == 0x7f {
			v.add(field, fmt.Sprintf("has control character %U at offset %d", r, i))
			return
		}
	}
}

func (v *validator) memberID(field, id string) {
	if id == "" || len(id) > maxMemberIDBytes {
		v.add(field, fmt.Sprintf("is %d bytes; a node ID is 1 to %d of A-Z, a-z, 0-9, '.', '-', '_'", len(id), maxMemberIDBytes))
		return
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			v.add(field, fmt.Sprintf("%q has character %q at offset %d; a node ID is A-Z, a-z, 0-9, '.', '-', '_'", id, c, i))
			return
		}
	}
}

func (v *validator) hostPort(field, addr string) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		v.add(field, fmt.Sprintf("%q is not host:port: %v", addr, err))
		return
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if host == "" || err != nil || p == 0 {
		v.add(field, fmt.Sprintf("%q: give a host and a port from 1 to 65535", addr))
	}
}

func (v *validator) rate(field string, x float64) {
	if x < 0 || math.IsNaN(x) || math.IsInf(x, 0) {
		v.add(field, fmt.Sprintf("is %v; set a finite number >= 0 (0 keeps the server's default)", x))
	}
}

func (v *validator) count(field string, x int64) {
	if x < 0 {
		v.add(field, fmt.Sprintf("is %d; set a number >= 0 (0 keeps the server's default)", x))
	}
}
