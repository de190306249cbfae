package cluster

import (
	"errors"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// TestThreeNodes runs a 3-node cluster over real TCP on loopback, with the
// raft log and snapshots in real files: writes on any node, losing the
// leader, a node catching up after downtime through a snapshot, restarts
// from snapshots, and a leader leaving.
func TestThreeNodes(t *testing.T) {
	// A short log tail in small segments, so that a node that misses a
	// few dozen changes has to catch up from a snapshot.
	nodes := startCluster(t, 3, func(c *Config) { c.TrailingLogs = 8; c.walSegmentSize = 4 << 10 })
	ctx := ctxT(t)

	// Writes on every node: followers forward them to the leader.
	var last uint64
	for i, n := range nodes {
		idx, err := n.PutTenant(ctx, Tenant{ID: fmt.Sprintf("t%d", i), Limits: Limits{MaxSeriesPerTenant: int64(1000 + i)}})
		require.NoError(t, err)
		require.Greater(t, idx, last)
		last = idx
	}
	l := leader(t, nodes...)
	for _, n := range running(nodes, l) {
		require.Positive(t, testutil.ToFloat64(n.metrics.forwarded.WithLabelValues("write", "ok")), "follower %s forwarded nothing", n.id)
	}
	s := waitSameState(t, last, nodes...)
	require.Len(t, s.Tenants(), 3)
	members := s.Members()
	require.Len(t, members, 3)
	for i, m := range members {
		require.Equal(t, nodes[i].id, m.ID)
		require.Equal(t, nodes[i].cfg.GRPCAdvertise, m.GRPCAddr)
		require.Equal(t, string(nodes[i].trans.LocalAddr()), m.RaftAddr)
		require.True(t, m.Voter)
		require.Equal(t, MemberLive, m.State)
	}

	// A linearizable read on a follower sees a write just made elsewhere,
	// and its watchers hear of it.
	f := running(nodes, l)[0]
	watch, stopWatch := f.Watch()
	defer stopWatch()
	idx, err := l.ExcludeWriter(ctx, "t0", "w-lin", "")
	require.NoError(t, err)
	require.NoError(t, f.Linearizable(ctx))
	require.GreaterOrEqual(t, f.State().Index(), idx)
	require.True(t, f.State().WriterExcluded("t0", "w-lin"))
	select {
	case <-watch:
	case <-ctx.Done():
		t.Fatal("no watch notification on the follower")
	}

	// The leader's refusals reach a follower's caller as the same kinds.
	_, err = f.DeleteRuleGroup(ctx, "t0", "ns", "missing")
	require.ErrorIs(t, err, ErrNotFound)
	require.Contains(t, err.Error(), `no rule group "missing"`)
	_, err = f.PutTenant(ctx, Tenant{ID: "t0", Version: 1})
	require.ErrorIs(t, err, ErrConflict)
	require.ErrorIs(t, f.Join(ctx, "n9", string(l.trans.LocalAddr()), ""), ErrConflict)

	// Stop the leader: the other two elect a new one, which serves writes
	// and holds every committed change.
	l.stop(t)
	survivors := running(nodes, l)
	idx, err = survivors[0].PutTenant(ctx, Tenant{ID: "after-failover"})
	require.NoError(t, err)
	l2 := leader(t, survivors...)
	require.NotEqual(t, l.id, l2.id)
	s = waitSameState(t, idx, survivors...)
	for _, id := range []string{"t0", "t1", "t2", "after-failover"} {
		_, ok := s.Tenant(id)
		require.True(t, ok, "tenant %s lost", id)
	}
	require.True(t, s.WriterExcluded("t0", "w-lin"))
	// The stopped node leaves the ring of live members.
	require.Eventually(t, func() bool {
		for _, n := range survivors {
			if len(n.LiveMembers()) != 2 {
				return false
			}
		}
		return true
	}, waitFor, tick)
	for _, ms := range l2.Status().Members {
		if ms.ID == l.id {
			require.Equal(t, RoleUnreachable, ms.Role)
			require.False(t, ms.LastContact.IsZero())
		}
	}

	// While it is down, the log moves on past its trailing entries and is
	// compacted by a snapshot: the restarted node catches up from the
	// leader's snapshot, then from the log.
	for i := range 30 {
		idx, err = survivors[i%2].ExcludeWriter(ctx, "t1", fmt.Sprintf("w%02d", i), "")
		require.NoError(t, err)
	}
	require.NoError(t, l2.raft.Snapshot().Error())
	l = l.restart(t)
	nodes = append(survivors, l)
	waitReady(t, l)
	s = waitSameState(t, idx, nodes...)
	require.Len(t, s.Exclusions("t1"), 30)
	require.Equal(t, 1.0, testutil.ToFloat64(l.metrics.restores), "the restarted node did not install the leader's snapshot")
	// ... and is live again.
	require.Eventually(t, func() bool { return len(l2.LiveMembers()) == 3 && len(l.LiveMembers()) == 3 }, waitFor, tick)
	// The leader recorded that as membership changes: every node applies
	// them before the snapshots below.
	s = waitSameState(t, l2.State().Index(), nodes...)

	// Snapshot on every node, restart one: it restores its state from its
	// own snapshot and the log after it.
	for _, n := range nodes {
		require.NoError(t, n.raft.Snapshot().Error())
		require.Positive(t, testutil.ToFloat64(n.metrics.snapshots))
	}
	want := stateBytes(t, s)
	old := running(nodes, l2)[0]
	old.stop(t)
	r := old.restart(t)
	require.Equal(t, 1.0, testutil.ToFloat64(r.metrics.restores))
	require.Equal(t, want, stateBytes(t, r.State()), "restored state differs before any new change")
	nodes = append(running(nodes, old), r)
	waitReady(t, r)

	// The leader leaves: it hands leadership over, then is removed; the
	// remaining two go on.
	l3 := leader(t, nodes...)
	require.NoError(t, l3.Leave(ctx))
	rest := running(nodes, l3)
	l4 := leader(t, rest...)
	require.NotEqual(t, l3.id, l4.id)
	idx, err = rest[0].DeleteTenant(ctx, "t2")
	require.NoError(t, err)
	s = waitSameState(t, idx, rest...)
	require.Len(t, s.Members(), 2)
	_, ok := s.Member(l3.id)
	require.False(t, ok)
	l3.stop(t)
	require.ErrorIs(t, rest[0].Remove(ctx, "nobody"), ErrNotFound)
}

// TestConcurrentWriters has writers on every node of a 3-node cluster: each
// one appends unique rule groups and increments its own counter with
// compare-and-set. Every acknowledged change must be present exactly once.
func TestConcurrentWriters(t *testing.T) {
	nodes := startCluster(t, 3, nil)
	ctx := ctxT(t)
	const writersPerNode, changes = 3, 15

	type result struct {
		writer     string
		groups     []string
		increments int
		err        error
	}
	results := make(chan result)
	for i, n := range nodes {
		for w := range writersPerNode {
			go func() {
				r := result{writer: fmt.Sprintf("n%d-w%d", i, w)}
				defer func() { results <- r }()
				if _, r.err = n.PutTenant(ctx, Tenant{ID: r.writer, Settings: map[string]string{"counter": "0"}}); r.err != nil {
					return
				}
				for c := range changes {
					name := fmt.Sprintf("g%02d", c)
					var index uint64
					if index, r.err = n.PutRuleGroup(ctx, "shared", r.writer, name, "name: "+name+"\n"); r.err != nil {
						return
					}
					r.groups = append(r.groups, name)
					// A write through a follower is acknowledged once the
					// leader commits it: read this node's state once it
					// has applied that far.
					if r.err = n.WaitApplied(ctx, index); r.err != nil {
						return
					}
					// Compare-and-set: read, increment, write at the version read.
					cur, _ := n.State().Tenant(r.writer)
					for {
						next := cur
						next.Settings = map[string]string{"counter": fmt.Sprint(r.increments + 1)}
						_, err := n.PutTenant(ctx, next)
						if err == nil {
							r.increments++
							break
						}
						if !isConflict(err) {
							r.err = err
							return
						}
						// This node's state lagged behind our own last
						// write: read again, linearizably.
						if r.err = n.Linearizable(ctx); r.err != nil {
							return
						}
						cur, _ = n.State().Tenant(r.writer)
					}
				}
			}()
		}
	}
	var all []result
	for range len(nodes) * writersPerNode {
		all = append(all, <-results)
	}
	var max uint64
	for _, n := range nodes {
		require.NoError(t, n.Linearizable(ctx))
		max = n.State().Index()
	}
	s := waitSameState(t, max, nodes...)
	for _, r := range all {
		require.NoError(t, r.err, r.writer)
		require.Equal(t, changes, r.increments)
		tn, ok := s.Tenant(r.writer)
		require.True(t, ok)
		require.Equal(t, fmt.Sprint(changes), tn.Settings["counter"], r.writer)
		var got []string
		for _, g := range s.RuleGroups("shared") {
			if g.Namespace == r.writer {
				got = append(got, g.Name)
			}
		}
		require.Equal(t, r.groups, got, r.writer)
	}
	require.Len(t, s.RuleGroups("shared"), len(nodes)*writersPerNode*changes)
}

func isConflict(err error) bool { return errors.Is(err, ErrConflict) }
