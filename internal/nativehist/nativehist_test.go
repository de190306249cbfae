package nativehist

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/stretchr/testify/require"
)

func TestKeyMatchesBucketBounds(t *testing.T) {
	for schema := int32(MinSchema); schema <= MaxSchema; schema++ {
		b, err := NewBounds(schema)
		require.NoError(t, err)
		rng := rand.New(rand.NewPCG(1, uint64(schema+10)))
		for range 2000 {
			v := math.Exp(rng.NormFloat64()*5 - 5)
			key := b.Key(v)
			upper, lower := b.UpperBound(key), b.UpperBound(key-1)
			// Allow one ulp of slack: the table and math.Exp2 may round differently.
			require.LessOrEqual(t, v, math.Nextafter(upper, math.Inf(1)), "schema %d v %g key %d", schema, v, key)
			require.Greater(t, v, math.Nextafter(lower, math.Inf(-1)), "schema %d v %g key %d", schema, v, key)
		}
		// Exact powers of two are upper bounds, so they belong to the lower bucket.
		require.Equal(t, int32(0), b.Key(1), "schema %d", schema)
	}
}

func TestNewBoundsRefusesBadSchema(t *testing.T) {
	_, err := NewBounds(9)
	require.ErrorContains(t, err, "schema 9")
	_, err = NewBounds(-5)
	require.Error(t, err)
}

func TestAppendToIsValidAndMatchesObservations(t *testing.T) {
	b, err := NewBounds(3)
	require.NoError(t, err)
	h := New(b)
	rng := rand.New(rand.NewPCG(7, 7))
	want := map[int32]uint64{}
	var sum float64
	for range 5000 {
		v := math.Exp(rng.NormFloat64()*2 - 6)
		h.Observe(v, 1)
		want[b.Key(v)]++
		sum += v
	}
	h.Observe(0, 3)

	var ph histogram.Histogram
	h.AppendTo(&ph)
	require.NoError(t, ph.Validate())
	require.Equal(t, uint64(5003), ph.Count)
	require.Equal(t, uint64(3), ph.ZeroCount)
	require.InDelta(t, sum, ph.Sum, 1e-9)

	got := map[int32]uint64{}
	it := ph.PositiveBucketIterator()
	for it.Next() {
		bk := it.At()
		if bk.Count == 0 {
			continue
		}
		got[b.Key(bk.Upper)] += bk.Count
	}
	require.Equal(t, want, got)
}

func TestObserveGrowsDownward(t *testing.T) {
	b, err := NewBounds(0)
	require.NoError(t, err)
	h := New(b)
	h.Observe(1024, 1)
	h.Observe(1, 2)
	h.Observe(4, 1)
	var keys []int32
	var counts []uint64
	h.Buckets(func(k int32, c uint64) { keys, counts = append(keys, k), append(counts, c) })
	require.Equal(t, []int32{0, 2, 10}, keys)
	require.Equal(t, []uint64{2, 1, 1}, counts)

	var ph histogram.Histogram
	h.AppendTo(&ph)
	require.NoError(t, ph.Validate())
	require.Equal(t, []histogram.Span{{Offset: 0, Length: 3}, {Offset: 7, Length: 1}}, ph.PositiveSpans)
	require.Equal(t, []int64{2, -2, 1, 0}, ph.PositiveBuckets)
}

func BenchmarkObserve(b *testing.B) {
	bounds, _ := NewBounds(5)
	h := New(bounds)
	rng := rand.New(rand.NewPCG(1, 1))
	vals := make([]float64, 4096)
	for i := range vals {
		vals[i] = math.Exp(rng.NormFloat64()*0.8 - 5)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		h.Observe(vals[i&4095], 1)
	}
}
