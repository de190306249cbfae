package chunkenc

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

// columns returns the test inputs: every dataset plus adversarial cases.
func columns(t testing.TB) map[string][2][]int64 {
	cols := map[string][2][]int64{}
	for _, name := range dataset.All {
		s, err := dataset.Generate(name, 5000, 9)
		require.NoError(t, err)
		ts, lat := make([]int64, len(s)), make([]int64, len(s))
		for i, x := range s {
			ts[i], lat[i] = x.T, x.Latency
		}
		cols[string(name)] = [2][]int64{ts, lat}
	}
	rng := rand.New(rand.NewPCG(5, 5))
	rnd := func(n int, f func(i int) int64) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	cols["empty"] = [2][]int64{nil, nil}
	cols["one"] = [2][]int64{{123}, {456}}
	cols["equal"] = [2][]int64{rnd(100, func(int) int64 { return 7 }), rnd(100, func(int) int64 { return 0 })}
	cols["extremes"] = [2][]int64{{math.MinInt64, 0, math.MaxInt64}, {0, math.MaxInt64, 1}}
	cols["random"] = [2][]int64{rnd(3000, func(int) int64 { return int64(rng.Uint64()) }), rnd(3000, func(int) int64 { return rng.Int64() })}
	cols["outlier"] = [2][]int64{rnd(1000, func(i int) int64 {
		if i == 500 {
			return int64(i)*1000 + 1<<40
		}
		return int64(i) * 1000
	}), rnd(1000, func(i int) int64 { return int64(1 + i%3) })}
	cols["tiny values"] = [2][]int64{rnd(500, func(i int) int64 { return int64(i) }), rnd(500, func(i int) int64 { return int64(i % 4) })}
	return cols
}

func TestTimestampsRoundTrip(t *testing.T) {
	var e Encoder
	var d Decoder
	for name, col := range columns(t) {
		ts := col[0]
		check := func(b []byte, what string) {
			t.Helper()
			got, err := d.DecodeTimestamps(nil, b, len(ts))
			require.NoError(t, err, "%s %s", name, what)
			if len(ts) == 0 {
				require.Empty(t, got)
				return
			}
			require.Equal(t, ts, got, "%s %s", name, what)
		}
		check(e.AppendTimestamps(nil, ts), "best")
		for _, tr := range []TSTransform{TSDelta, TSDoD, TSGrid} {
			b, err := e.AppendTimestampsWith(nil, ts, tr)
			if tr == TSDelta && !deltaEncodable(ts) {
				require.Error(t, err)
				continue
			}
			require.NoError(t, err)
			check(b, tr.String())
		}
	}
}

// deltaEncodable tells whether ts is sorted with every delta in int64.
func deltaEncodable(ts []int64) bool {
	for i := 1; i < len(ts); i++ {
		if ts[i] < ts[i-1] || ts[i]-ts[i-1] < 0 {
			return false
		}
	}
	return true
}

func TestLatenciesRoundTrip(t *testing.T) {
	var e Encoder
	var d Decoder
	for name, col := range columns(t) {
		lat := make([]int64, len(col[1]))
		for i, v := range col[1] {
			lat[i] = max(v, 0) // latencies are never negative
			if v == math.MinInt64 {
				lat[i] = 0
			}
		}
		check := func(b []byte, what string) {
			t.Helper()
			got, err := d.DecodeLatencies(nil, b, len(lat))
			require.NoError(t, err, "%s %s", name, what)
			if len(lat) == 0 {
				require.Empty(t, got)
				return
			}
			require.Equal(t, lat, got, "%s %s", name, what)
		}
		b, err := e.AppendLatencies(nil, lat)
		require.NoError(t, err)
		check(b, "best")
		for _, enc := range []LatEncoding{LatExpMantissa, LatInts} {
			b, err := e.AppendLatenciesWith(nil, lat, enc)
			require.NoError(t, err)
			check(b, enc.String())
		}
	}
	_, err := e.AppendLatencies(nil, []int64{1, -1})
	require.ErrorContains(t, err, "negative")
}

func TestCorruptColumnsAreErrors(t *testing.T) {
	var e Encoder
	var d Decoder
	col := columns(t)["D1"]
	tsb := e.AppendTimestamps(nil, col[0])
	latb, err := e.AppendLatencies(nil, col[1])
	require.NoError(t, err)
	for cut := 0; cut < len(tsb); cut += 97 {
		_, err := d.DecodeTimestamps(nil, tsb[:cut], len(col[0]))
		require.ErrorIs(t, err, ErrCorrupt, "timestamps cut at %d", cut)
	}
	for cut := 0; cut < len(latb); cut += 97 {
		_, err := d.DecodeLatencies(nil, latb[:cut], len(col[1]))
		require.ErrorIs(t, err, ErrCorrupt, "latencies cut at %d", cut)
	}
	// A count far beyond what the bytes can hold is refused up front.
	_, err = d.DecodeTimestamps(nil, tsb, 1<<40)
	require.ErrorIs(t, err, ErrCorrupt)
}

func FuzzDecodeTimestamps(f *testing.F) {
	var e Encoder
	for _, col := range columns(f) {
		f.Add(e.AppendTimestamps(nil, col[0]), uint16(len(col[0])))
	}
	f.Fuzz(func(t *testing.T, b []byte, n uint16) {
		var d Decoder
		got, err := d.DecodeTimestamps(nil, b, int(n))
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.Len(t, got, int(n))
		// Whatever decodes re-encodes and decodes to the same values.
		var e Encoder
		again, err := d.DecodeTimestamps(nil, e.AppendTimestamps(nil, got), len(got))
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}

func FuzzDecodeLatencies(f *testing.F) {
	var e Encoder
	for _, col := range columns(f) {
		lat := make([]int64, len(col[1]))
		for i, v := range col[1] {
			lat[i] = max(v, 0)
		}
		for _, enc := range []LatEncoding{LatExpMantissa, LatInts} {
			b, _ := e.AppendLatenciesWith(nil, lat, enc)
			f.Add(b, uint16(len(lat)))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, n uint16) {
		var d Decoder
		got, err := d.DecodeLatencies(nil, b, int(n))
		if err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.Len(t, got, int(n))
		var e Encoder
		enc, err := e.AppendLatencies(nil, got)
		require.NoError(t, err)
		again, err := d.DecodeLatencies(nil, enc, len(got))
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}

// TestSizes logs bytes per sample of each column on each dataset, for a
// quick look; the figures of record come from the benchmark command.
func TestSizes(t *testing.T) {
	var e Encoder
	for _, name := range dataset.All {
		s, err := dataset.Generate(name, 1<<16, 1)
		require.NoError(t, err)
		const chunk = 8192
		var tsBytes, latBytes int
		for off := 0; off < len(s); off += chunk {
			part := s[off:min(off+chunk, len(s))]
			ts, lat := make([]int64, len(part)), make([]int64, len(part))
			for i, x := range part {
				ts[i], lat[i] = x.T, x.Latency
			}
			tsBytes += len(e.AppendTimestamps(nil, ts))
			b, err := e.AppendLatencies(nil, lat)
			require.NoError(t, err)
			latBytes += len(b)
		}
		n := float64(len(s))
		t.Logf("%s: ts %.3f B, latency %.3f B, total %.3f B/sample; entropy bound %.3f B", name,
			float64(tsBytes)/n, float64(latBytes)/n, float64(tsBytes+latBytes)/n, dataset.EntropyBound(name)/8)
	}
}
