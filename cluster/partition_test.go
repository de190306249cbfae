package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/stretchr/testify/require"
)

// TestFiveNodesPartition cuts a 5-node cluster into a minority holding the
// leader and one follower, and a majority of three, with raft's in-memory
// transport (the nodes' gRPC still runs over loopback TCP). The minority
// refuses writes with ErrNoLeader, the majority goes on; after healing,
// all five hold one history.
func TestFiveNodesPartition(t *testing.T) {
	const size = 5
	trans := make([]*raft.InmemTransport, size)
	for i := range trans {
		_, trans[i] = raft.NewInmemTransport("")
	}
	connect := func(a, b int) {
		trans[a].Connect(trans[b].LocalAddr(), trans[b])
		trans[b].Connect(trans[a].LocalAddr(), trans[a])
	}
	for a := range size {
		for b := a + 1; b < size; b++ {
			connect(a, b)
		}
	}
	nodes := startCluster(t, size, func(c *Config) {
		var i int
		_, _ = fmt.Sscanf(c.NodeID, "n%d", &i)
		c.transport = trans[i-1]
		c.ApplyTimeout = 3 * time.Second
	})
	index := func(n *testNode) int {
		for i := range nodes {
			if nodes[i] == n {
				return i
			}
		}
		panic("unknown node")
	}
	ctx := ctxT(t)
	var last uint64
	for i, n := range nodes {
		idx, err := n.PutTenant(ctx, Tenant{ID: fmt.Sprintf("before-%d", i)})
		require.NoError(t, err)
		last = max(last, idx)
	}
	waitSameState(t, last, nodes...)

	// Partition: the leader and one follower against the other three.
	l := leader(t, nodes...)
	minority := []*testNode{l, running(nodes, l)[0]}
	majority := running(nodes, minority...)
	for _, m := range minority {
		trans[index(m)].DisconnectAll()
		for _, o := range majority {
			trans[index(o)].Disconnect(m.trans.LocalAddr())
		}
	}
	connect(index(minority[0]), index(minority[1]))

	// The minority refuses writes: its leader loses its lease and steps
	// down, and nobody there can win an election.
	var wg sync.WaitGroup
	minorityErrs := make([]error, len(minority))
	for i, m := range minority {
		wg.Go(func() {
			// A write sent in the first instants after the cut may still
			// reach the old leader and fail once it steps down: retry
			// until the refusal is the steady one, a lack of leader.
			for attempt := 0; ; attempt++ {
				_, err := m.PutTenant(context.Background(), Tenant{ID: fmt.Sprintf("minority-%d-%d", i, attempt)})
				minorityErrs[i] = err
				if err == nil || attempt == 5 {
					return
				}
				if _, id := m.raft.LeaderWithID(); id == "" {
					return
				}
			}
		})
	}

	// The majority elects a leader and takes writes on every node. (A
	// write sent before then could still reach the old leader and end
	// with an unknown outcome.)
	newLeader := leader(t, majority...)
	require.NotEqual(t, l.id, newLeader.id)
	for i := range 10 {
		idx, err := majority[i%len(majority)].ExcludeWriter(ctx, "before-0", fmt.Sprintf("w%d", i), "")
		require.NoError(t, err)
		last = max(last, idx)
	}
	wg.Wait()
	for i, err := range minorityErrs {
		require.ErrorIs(t, err, ErrNoLeader, "minority node %s", minority[i].id)
	}
	require.Eventually(t, func() bool { return len(newLeader.LiveMembers()) == 3 }, waitFor, tick,
		"the majority's leader did not mark the minority unreachable")

	// Heal: everyone converges on the majority's history; the minority's
	// refused writes are nowhere.
	for _, m := range minority {
		for _, o := range majority {
			connect(index(m), index(o))
		}
	}
	idx, err := minority[1].PutTenant(ctx, Tenant{ID: "after-heal"})
	require.NoError(t, err)
	last = max(last, idx)
	require.Eventually(t, func() bool {
		for _, n := range nodes {
			if len(n.LiveMembers()) != size {
				return false
			}
		}
		return true
	}, waitFor, tick, "healed nodes not live again")
	require.NoError(t, newLeader.Linearizable(ctx))
	s := waitSameState(t, max(last, newLeader.State().Index()), nodes...)
	for _, tn := range s.Tenants() {
		require.NotContains(t, tn.ID, "minority", "a refused write was applied")
	}
	require.Len(t, s.Exclusions("before-0"), 10)
	_, ok := s.Tenant("after-heal")
	require.True(t, ok)

	// One history: every node's log holds the same entries up to the
	// commit index they share.
	commit := nodes[0].raft.CommitIndex()
	for _, n := range nodes {
		commit = min(commit, n.raft.CommitIndex())
	}
	for i := uint64(1); i <= commit; i++ {
		var want raft.Log
		require.NoError(t, nodes[0].wal.GetLog(i, &want))
		for _, n := range nodes[1:] {
			var got raft.Log
			require.NoError(t, n.wal.GetLog(i, &got))
			require.Equal(t, want.Term, got.Term, "entry %d on %s", i, n.id)
			require.Equal(t, want.Data, got.Data, "entry %d on %s", i, n.id)
		}
	}
}
