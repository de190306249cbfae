package window

import (
	"context"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

type point struct {
	t, v int64
	w    uint64
}

// bruteForce is the definition: every window's values, each repeated by
// its weight, sorted, and quantile_over_time's interpolation.
func bruteForce(r Range, qs []float64, pts []point) ([]float64, []uint64) {
	var vals []float64
	var counts []uint64
	for t := r.Start; t <= r.End; t += r.Step {
		var win []float64
		for _, p := range pts {
			if p.t > t-r.Window && p.t <= t {
				for range p.w {
					win = append(win, float64(p.v)/1e9)
				}
			}
		}
		slices.Sort(win)
		counts = append(counts, uint64(len(win)))
		for _, q := range qs {
			vals = append(vals, promQuantile(q, win))
		}
	}
	return vals, counts
}

// promQuantile is Prometheus's quantile() on sorted values.
func promQuantile(q float64, values []float64) float64 {
	if len(values) == 0 || math.IsNaN(q) {
		return math.NaN()
	}
	if q < 0 {
		return math.Inf(-1)
	}
	if q > 1 {
		return math.Inf(+1)
	}
	n := float64(len(values))
	rank := q * (n - 1)
	lowerIndex := math.Max(0, math.Floor(rank))
	upperIndex := math.Min(n-1, lowerIndex+1)
	weight := rank - math.Floor(rank)
	if weight == 0 {
		return values[int(lowerIndex)]
	}
	return values[int(lowerIndex)]*(1-weight) + values[int(upperIndex)]*weight
}

// runsOf cuts pts into time-sorted runs of random length, as chunks of
// several series (overlapping in time) would arrive.
func runsOf(rng *rand.Rand, pts []point, series int) []Run {
	bySeries := make([][]point, series)
	for _, p := range pts {
		s := rng.IntN(series)
		bySeries[s] = append(bySeries[s], p)
	}
	var runs []Run
	for _, sp := range bySeries {
		// Out-of-order input: a series' points come in chunks whose time
		// ranges overlap, each chunk sorted.
		rng.Shuffle(len(sp), func(i, j int) { sp[i], sp[j] = sp[j], sp[i] })
		for len(sp) > 0 {
			n := 1 + rng.IntN(min(len(sp), 40))
			chunk := slices.Clone(sp[:n])
			sp = sp[n:]
			slices.SortFunc(chunk, func(a, b point) int { return cmpInt64(a.t, b.t) })
			weighted := false
			for _, p := range chunk {
				weighted = weighted || p.w != 1
			}
			runs = append(runs, Run{MinT: chunk[0].t, MaxT: chunk[len(chunk)-1].t, Load: func(dst *chunkenc.Samples) error {
				for _, p := range chunk {
					dst.T = append(dst.T, p.t)
					dst.Latency = append(dst.Latency, p.v)
					if weighted {
						dst.Weight = append(dst.Weight, p.w)
					}
				}
				if !weighted {
					dst.Weight = nil
				}
				return nil
			}})
		}
	}
	return runs
}

func TestQuantilesMatchBruteForce(t *testing.T) {
	qs := []float64{0, 0.1, 0.5, 0.9, 0.99, 1, 0.333}
	var c Computer
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		n := rng.IntN(400)
		span := int64(1 + rng.IntN(10_000))
		weighted := seed%3 == 0
		pts := make([]point, n)
		for i := range pts {
			pts[i] = point{t: rng.Int64N(span), v: rng.Int64N(1 + rng.Int64N(1e9)), w: 1}
			if rng.IntN(5) == 0 && i > 0 {
				pts[i].v = pts[i-1].v // ties
			}
			if weighted {
				pts[i].w = 1 + rng.Uint64N(8)
			}
		}
		r := Range{
			Start:  rng.Int64N(span) - span/4,
			Step:   1 + rng.Int64N(span/5+1),
			Window: 1 + rng.Int64N(span/2+1),
		}
		r.End = r.Start + rng.Int64N(span)
		runs := runsOf(rng, pts, 1+rng.IntN(5))

		wantV, wantC := bruteForce(r, qs, pts)
		gotV, gotC, err := c.Quantiles(context.Background(), r, qs, runs, nil, nil)
		require.NoError(t, err, "seed %d", seed)
		require.Equal(t, wantC, gotC, "seed %d range %+v", seed, r)
		require.Equal(t, len(wantV), len(gotV), "seed %d", seed)
		for i := range wantV {
			if math.IsNaN(wantV[i]) {
				require.True(t, math.IsNaN(gotV[i]), "seed %d value %d: got %v, want NaN", seed, i, gotV[i])
				continue
			}
			// Same float64 arithmetic on the same values: equal bits.
			require.Equal(t, wantV[i], gotV[i], "seed %d step %d q %v range %+v", seed, i/len(qs), qs[i%len(qs)], r)
		}
	}
}

func TestQuantilesOutOfRangeQuantile(t *testing.T) {
	var c Computer
	runs := []Run{{MinT: 5, MaxT: 5, Load: func(dst *chunkenc.Samples) error {
		dst.T, dst.Latency = append(dst.T, 5), append(dst.Latency, 1e6)
		return nil
	}}}
	vals, counts, err := c.Quantiles(context.Background(), Range{Start: 10, End: 20, Step: 10, Window: 10}, []float64{-1, 2, math.NaN()}, runs, nil, nil)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 0}, counts)
	require.Equal(t, math.Inf(-1), vals[0])
	require.Equal(t, math.Inf(1), vals[1])
	require.True(t, math.IsNaN(vals[2]))
	for _, v := range vals[3:] {
		require.True(t, math.IsNaN(v), "empty window")
	}
}

func TestQuantilesMaxSamples(t *testing.T) {
	c := Computer{MaxSamples: 10}
	load := func(dst *chunkenc.Samples) error {
		for i := range 20 {
			dst.T = append(dst.T, int64(i+1))
			dst.Latency = append(dst.Latency, int64(i))
		}
		return nil
	}
	_, _, err := c.Quantiles(context.Background(), Range{Start: 20, End: 20, Step: 1, Window: 20}, []float64{0.5}, []Run{{MinT: 1, MaxT: 20, Load: load}}, nil, nil)
	require.ErrorIs(t, err, ErrTooManySamples)
	// The same computer works again with room.
	c.MaxSamples = 20
	vals, _, err := c.Quantiles(context.Background(), Range{Start: 20, End: 20, Step: 1, Window: 20}, []float64{0.5}, []Run{{MinT: 1, MaxT: 20, Load: load}}, nil, nil)
	require.NoError(t, err)
	require.Equal(t, []float64{promQuantile(0.5, []float64{0, 1e-9, 2e-9, 3e-9, 4e-9, 5e-9, 6e-9, 7e-9, 8e-9, 9e-9, 10e-9, 11e-9, 12e-9, 13e-9, 14e-9, 15e-9, 16e-9, 17e-9, 18e-9, 19e-9})}, vals)
}

func TestQuantilesRejectsRunBeforeItsMinT(t *testing.T) {
	var c Computer
	bad := func(dst *chunkenc.Samples) error {
		dst.T, dst.Latency = append(dst.T, 1), append(dst.Latency, 1)
		return nil
	}
	good := func(dst *chunkenc.Samples) error {
		dst.T, dst.Latency = append(dst.T, 5), append(dst.Latency, 1)
		return nil
	}
	// The second run claims MinT 50 but holds t=1, in a pane already sorted.
	_, _, err := c.Quantiles(context.Background(), Range{Start: 10, End: 60, Step: 10, Window: 60},
		[]float64{0.5}, []Run{{MinT: 5, MaxT: 5, Load: good}, {MinT: 50, MaxT: 50, Load: bad}}, nil, nil)
	require.ErrorIs(t, err, errRunOrder)
}

func TestRangeValidate(t *testing.T) {
	require.Error(t, Range{Start: 10, End: 5, Step: 1, Window: 1}.Validate())
	require.Error(t, Range{Start: 0, End: 5, Step: 0, Window: 1}.Validate())
	require.Error(t, Range{Start: 0, End: 5, Step: 1, Window: 0}.Validate())
	require.NoError(t, Range{Start: 0, End: 5, Step: 1, Window: 1}.Validate())
	require.Equal(t, 6, Range{Start: 0, End: 5, Step: 1, Window: 1}.Steps())
}
