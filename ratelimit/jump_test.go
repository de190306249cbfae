package ratelimit

import (
	"fmt"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestJumpHashReference: the published algorithm's outputs, so that every
// hopwatch version places tenants alike.
func TestJumpHashReference(t *testing.T) {
	// Values from the reference implementation (Lamping & Veach, and
	// github.com/dgryski/go-jump's tests).
	f := func(key uint64, buckets, want int) {
		t.Helper()
		require.Equal(t, want, JumpHash(key, buckets), "key %d buckets %d", key, buckets)
	}
	f(1, 1, 0)
	f(42, 57, 43)
	f(0xDEAD10CC, 1, 0)
	f(0xDEAD10CC, 666, 361)
	f(256, 1024, 520)
	f(0, 0, -1)
	f(0, -3, -1)
	// Pinned: a change here moves tenants between nodes running
	// different versions.
	require.Equal(t, uint64(0xf52a15e9a9b5e89b), TenantKey(""))
	require.Equal(t, uint64(0x130a76222d4427ef), TenantKey("acme"))
}

func members(ids ...string) []Member {
	ms := make([]Member, len(ids))
	for i, id := range ids {
		ms[i] = Member{ID: id}
	}
	return ms
}

func owners(tenants []string, ms []Member) []string {
	out := make([]string, len(tenants))
	for i, t := range tenants {
		if o := Owner(t, ms); o >= 0 {
			out[i] = ms[o].ID
		}
	}
	return out
}

func movedFraction(a, b []string) float64 {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return float64(n) / float64(len(a))
}

// TestOwnerMoves: adding a node at the end of the ring moves about 1/n of
// the tenants, all of them to the new node; a node going down moves only
// its own tenants, evenly to the others, and they come back when it does;
// owners spread evenly.
func TestOwnerMoves(t *testing.T) {
	tenants := make([]string, 100000)
	for i := range tenants {
		tenants[i] = "tenant-" + strconv.Itoa(i)
	}
	three := owners(tenants, members("node1", "node2", "node3"))
	count := map[string]int{}
	for _, o := range three {
		count[o]++
	}
	for _, id := range []string{"node1", "node2", "node3"} {
		require.InDelta(t, 1.0/3, float64(count[id])/float64(len(tenants)), 0.01, id)
	}

	four := owners(tenants, members("node1", "node2", "node3", "node4"))
	require.InDelta(t, 0.25, movedFraction(three, four), 0.01)
	for i := range tenants {
		if three[i] != four[i] {
			require.Equal(t, "node4", four[i], "a tenant moves only to the new node")
		}
	}

	down := members("node1", "node2", "node3", "node4")
	down[1].Down = true
	downOwners := owners(tenants, down)
	require.InDelta(t, 0.25, movedFraction(four, downOwners), 0.01)
	moved := map[string]int{}
	for i := range tenants {
		if four[i] != downOwners[i] {
			require.Equal(t, "node2", four[i], "only the down node's tenants move")
			moved[downOwners[i]]++
		}
	}
	for _, id := range []string{"node1", "node3", "node4"} {
		require.InDelta(t, 1.0/3, float64(moved[id])/float64(len(tenants)/4), 0.03, id)
	}
	down[1].Down = false
	require.Equal(t, four, owners(tenants, down))

	// Removing the node from the ring instead of marking it down reorders
	// the slots after it: more than its own tenants move.
	removed := owners(tenants, members("node1", "node3", "node4"))
	fmt.Printf("removing a middle member moves %.3f\n", movedFraction(four, removed))
	require.Greater(t, movedFraction(four, removed), 0.3)

	all := members("a", "b")
	all[0].Down, all[1].Down = true, true
	require.Equal(t, -1, Owner("x", all))
	require.Equal(t, 1, liveCount(all))
}
