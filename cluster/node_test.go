package cluster

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/auth"
)

func TestSingleNode(t *testing.T) {
	nodes := startCluster(t, 1, nil)
	n := nodes[0]
	ctx := ctxT(t)

	// Ready means the others can reach it: its gRPC address is registered.
	self, ok := n.State().Member(n.id)
	require.True(t, ok)
	require.Equal(t, n.cfg.GRPCAdvertise, self.GRPCAddr)

	watch, stopWatch := n.Watch()
	defer stopWatch()

	token, err := auth.NewToken(nil)
	require.NoError(t, err)
	hash := HashToken(token)
	v1, err := n.PutTenant(ctx, Tenant{ID: "acme", Limits: Limits{IngestionRateSpans: 5000}, TokenHashes: []TokenHash{hash}})
	require.NoError(t, err)
	<-watch

	got, ok := n.State().Tenant("acme")
	require.True(t, ok)
	require.Equal(t, v1, got.Version)
	require.Equal(t, 5000.0, got.Limits.IngestionRateSpans)
	require.False(t, got.Created.IsZero())
	byToken, ok := n.State().TenantByToken(token)
	require.True(t, ok)
	require.Equal(t, "acme", byToken.ID)

	// Optimistic concurrency: a stale version is a conflict.
	_, err = n.PutTenant(ctx, Tenant{ID: "acme", Version: v1 + 100})
	require.ErrorIs(t, err, ErrConflict)
	v2, err := n.PutTenant(ctx, Tenant{ID: "acme", Version: v1, Limits: Limits{IngestionRateSpans: 6000}})
	require.NoError(t, err)
	require.Greater(t, v2, v1)

	// Invalid changes never reach the log.
	last := n.raft.LastIndex()
	_, err = n.PutTenant(ctx, Tenant{ID: "", Limits: Limits{IngestionBurstSpans: -1}})
	require.ErrorIs(t, err, ErrInvalid)
	var ve *ValidationError
	require.True(t, errors.As(err, &ve))
	require.Equal(t, last, n.raft.LastIndex())

	_, err = n.DeleteRuleGroup(ctx, "acme", "ns", "missing")
	require.ErrorIs(t, err, ErrNotFound)

	_, err = n.PutRuleGroup(ctx, "acme", "ns", "g1", "name: g1\nrules: []\n")
	require.NoError(t, err)
	_, err = n.ExcludeWriter(ctx, "acme", "w1", "draining")
	require.NoError(t, err)
	require.True(t, n.State().WriterExcluded("acme", "w1"))

	require.NoError(t, n.Linearizable(ctx))
	st := n.Status()
	require.Equal(t, "Leader", st.RaftState)
	require.Len(t, st.Members, 1)
	require.Equal(t, RoleLeader, st.Members[0].Role)
	require.Equal(t, n.cfg.GRPCAdvertise, st.Members[0].GRPCAddr)
	require.Len(t, n.LiveMembers(), 1)

	require.Equal(t, 1.0, testutil.ToFloat64(n.metrics.changes.WithLabelValues(string(OpPutTenant), "conflict")))
	require.Equal(t, 1.0, testutil.ToFloat64(n.metrics.changes.WithLabelValues(string(OpDeleteRuleGroup), "not_found")))
	require.Equal(t, 1, testutil.CollectAndCount(n.reg, "hopwatch_cluster_commit_duration_seconds"))
	require.Equal(t, 1.0, testutil.ToFloat64(n.metrics.leaderChanges))

	// Deleting the tenant takes its rule groups and exclusions along.
	want := stateBytes(t, n.State())
	n.stop(t)
	n = n.restart(t)
	waitReady(t, n)
	require.Equal(t, want, stateBytes(t, waitSameState(t, v2, n)))

	_, err = n.DeleteTenant(ctx, "acme")
	require.NoError(t, err)
	s := n.State()
	_, ok = s.Tenant("acme")
	require.False(t, ok)
	require.Empty(t, s.RuleGroups("acme"))
	require.False(t, s.WriterExcluded("acme", "w1"))
	_, ok = s.TenantByToken(token)
	require.False(t, ok)
}

func TestConfigValidate(t *testing.T) {
	f := func(mod func(*Config), want ...string) {
		t.Helper()
		c := testConfig("n1", t.TempDir())
		mod(&c)
		err := c.withDefaults().Validate()
		if len(want) == 0 {
			require.NoError(t, err)
			return
		}
		require.Error(t, err)
		for _, w := range want {
			require.Contains(t, err.Error(), w)
		}
		_, err = New(c, nil, nil)
		require.Error(t, err, "New accepted what Validate refuses")
	}
	f(func(*Config) {})
	f(func(c *Config) { c.NodeID = "" }, "NodeID")
	f(func(c *Config) { c.NodeID = "a b" }, "NodeID")
	f(func(c *Config) { c.Dir = "" }, "Dir: is empty")
	f(func(c *Config) { c.Bootstrap, c.Join = true, []string{"h:1"}; c.GRPCAdvertise = "h:2" }, "Bootstrap: is set together with Join")
	f(func(c *Config) { c.Join = []string{"h:1"} }, "GRPCAdvertise: is empty")
	f(func(c *Config) { c.GRPCAdvertise = "nohost" }, "GRPCAdvertise")
	f(func(c *Config) { c.LeaderLeaseTimeout = 2 * c.HeartbeatTimeout }, "LeaderLeaseTimeout")
	f(func(c *Config) { c.ElectionTimeout = c.HeartbeatTimeout / 2 }, "ElectionTimeout")
	f(func(c *Config) { c.ApplyTimeout = time.Microsecond }, "ApplyTimeout")
	f(func(c *Config) { c.NodeID, c.Dir = "", "" }, "NodeID", "Dir")
}

func TestRaftBindAllAddressesNeedsAdvertise(t *testing.T) {
	c := testConfig("n1", t.TempDir())
	c.RaftBind = "0.0.0.0:0"
	_, err := New(c, nil, nil)
	require.ErrorContains(t, err, "set RaftAdvertise")
}
