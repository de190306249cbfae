package window

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRadixSortMatchesSort(t *testing.T) {
	var s sorter
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 3))
		n := rng.IntN(3000)
		v := make([]int64, n)
		spread := []int64{1, 1 << 11, 1 << 22, 1 << 40, math.MaxInt64}[seed%5]
		for i := range v {
			v[i] = rng.Int64N(spread)
			if seed%7 == 0 {
				v[i] -= spread / 2 // negatives
			}
		}
		if seed%11 == 0 && n > 1 {
			v[0], v[1] = math.MinInt64, math.MaxInt64 // a range wider than 63 bits
		}
		var w []uint64
		if seed%2 == 1 {
			w = make([]uint64, n)
			for i := range w {
				w[i] = uint64(v[i])*31 + 7 // a function of v: pairs stay together
			}
		}
		want := slices.Clone(v)
		slices.Sort(want)
		gotV, gotW := s.sort(v, w)
		require.Equal(t, want, gotV, "seed %d", seed)
		if w != nil {
			for i := range gotV {
				require.Equal(t, uint64(gotV[i])*31+7, gotW[i], "seed %d: weight left its value", seed)
			}
		}
	}
}

func TestQuantilesLargePanesMatchBruteForce(t *testing.T) {
	var c Computer
	qs := []float64{0.5, 0.99}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 11))
		pts := make([]point, 5000)
		for i := range pts {
			pts[i] = point{t: rng.Int64N(1000), v: rng.Int64N(1 << 36), w: 1}
			if seed%2 == 1 {
				pts[i].w = 1 + rng.Uint64N(4)
			}
		}
		r := Range{Start: 100, End: 1000, Step: 100, Window: 300}
		wantV, wantC := bruteForce(r, qs, pts)
		gotV, gotC, err := c.Quantiles(t.Context(), r, qs, runsOf(rng, pts, 3), nil, nil)
		require.NoError(t, err)
		require.Equal(t, wantC, gotC)
		require.Equal(t, wantV, gotV, "seed %d", seed)
	}
}
