package ratelimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestBurstSplit: two nodes offered a tenant's spans in requests of 100,
// each at half the load, on the test clock (no wall time): at 90% of the
// limit almost nothing is refused, as a single bucket of the global limit
// would refuse nothing, even where the even split of the burst is smaller
// than one request (150 over two nodes); at 150% the cluster admits the
// limit within 5%. The two nodes' requests alternate, evenly spaced, so
// that a single global bucket admits all of them at 90%.
func TestBurstSplit(t *testing.T) {
	const batch = 100
	f := func(lim Limit, load float64) (admitted, refused int64) {
		c := newCluster(t, lim, "a", "b")
		per := float64(batch) / (lim.Rate * load / 2) // seconds between a node's requests
		next := map[string]float64{"a": 0, "b": per / 2}
		now := 0.0
		for range 60 { // seconds, an exchange round after each
			for range 1000 {
				c.clock.Step(time.Millisecond)
				now += 0.001
				for _, id := range []string{"a", "b"} {
					for next[id] <= now {
						next[id] += per
						if c.nodes[id].l.AllowN("acme", batch).Allowed {
							admitted += batch
						} else {
							refused += batch
						}
					}
				}
			}
			c.round("a", "b")
		}
		return admitted, refused
	}
	for _, lim := range []Limit{{Rate: 1000, Burst: 150}, {Rate: 1000, Burst: 1000}, {Rate: 400, Burst: 400}} {
		admitted, refused := f(lim, 0.9)
		require.LessOrEqual(t, float64(refused), 0.01*float64(admitted+refused),
			"%+v at 90%%: %d of %d spans refused", lim, refused, admitted+refused)
		admitted, refused = f(lim, 1.5)
		require.InEpsilon(t, lim.Rate*60, float64(admitted), 0.05,
			"%+v at 150%%: admitted %d spans in 60 s (%d refused)", lim, admitted, refused)
	}
}
