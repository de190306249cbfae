package chunkenc

import (
	"math/rand/v2"
	"testing"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

func testSamples(t testing.TB, name dataset.Name, n int, weighted bool) *Samples {
	ds, err := dataset.Generate(name, n, 3)
	require.NoError(t, err)
	s := &Samples{}
	rng := rand.New(rand.NewPCG(1, 1))
	for i, x := range ds {
		s.T = append(s.T, x.T)
		s.Latency = append(s.Latency, x.Latency)
		if weighted {
			s.Weight = append(s.Weight, uint64(1+rng.IntN(3)*rng.IntN(10)))
		}
		if i%97 == 5 {
			var id [16]byte
			id[0], id[15] = byte(i), byte(i>>8)
			s.Exemplars = append(s.Exemplars, Exemplar{Index: uint32(i), TraceID: id})
		}
	}
	return s
}

func TestChunkRoundTrip(t *testing.T) {
	bounds, err := nativehist.NewBounds(5)
	require.NoError(t, err)
	var e Encoder
	var d Decoder
	for _, name := range dataset.All {
		for _, weighted := range []bool{false, true} {
			in := testSamples(t, name, 3000, weighted)
			b, err := e.AppendChunk([]byte("prefix"), in, bounds)
			require.NoError(t, err)
			b = b[len("prefix"):]
			var out Samples
			sum, err := d.DecodeChunk(b, bounds, &out)
			require.NoError(t, err)
			require.Equal(t, in.T, out.T)
			require.Equal(t, in.Latency, out.Latency)
			require.Equal(t, in.Weight, out.Weight)
			require.Equal(t, in.Exemplars, out.Exemplars)

			// The summary, read without decoding, matches one built from
			// the samples.
			only, err := ReadSummary(b, bounds)
			require.NoError(t, err)
			require.Equal(t, sum.Count, only.Count)
			want := nativehist.New(bounds)
			var count uint64
			var total float64
			minV, maxV := in.Latency[0], in.Latency[0]
			for i, v := range in.Latency {
				w := uint64(1)
				if weighted {
					w = in.Weight[i]
				}
				want.Observe(float64(v)/1e9, w)
				count += w
				total += float64(v) * float64(w)
				minV, maxV = min(minV, v), max(maxV, v)
			}
			require.Equal(t, count, only.Count)
			require.Equal(t, minV, only.Min)
			require.Equal(t, maxV, only.Max)
			require.Equal(t, in.T[0], only.MinT)
			require.Equal(t, in.T[len(in.T)-1], only.MaxT)
			require.InEpsilon(t, total/1e9, only.Sum(), 1e-12)
			var wh, gh histogram.Histogram
			want.AppendTo(&wh)
			only.Histogram.AppendTo(&gh)
			require.Equal(t, wh.PositiveSpans, gh.PositiveSpans)
			require.Equal(t, wh.PositiveBuckets, gh.PositiveBuckets)
			require.Equal(t, wh.Count, gh.Count)
			require.Equal(t, wh.ZeroCount, gh.ZeroCount)
		}
	}
}

func TestChunkCorruptionIsAnError(t *testing.T) {
	bounds, _ := nativehist.NewBounds(5)
	var e Encoder
	var d Decoder
	b, err := e.AppendChunk(nil, testSamples(t, dataset.D1, 2000, true), bounds)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(2, 2))
	for range 500 {
		c := append([]byte(nil), b...)
		c[rng.IntN(len(c))] ^= byte(1 << rng.IntN(8))
		var out Samples
		_, err := d.DecodeChunk(c, bounds, &out)
		require.ErrorIs(t, err, ErrCorrupt)
		_, err = ReadSummary(c, bounds)
		require.ErrorIs(t, err, ErrCorrupt)
	}
	_, err = d.DecodeChunk(b[:len(b)/2], bounds, &Samples{})
	require.ErrorIs(t, err, ErrCorrupt)
	other, _ := nativehist.NewBounds(3)
	_, err = ReadSummary(b, other)
	require.ErrorContains(t, err, "schema")
}

// FuzzDecodeChunk skips the checksum (the fuzzer would rarely pass it) by
// recomputing it, so that the decoders behind it are exercised.
func FuzzDecodeChunk(f *testing.F) {
	bounds, _ := nativehist.NewBounds(5)
	var e Encoder
	for _, name := range dataset.All {
		b, _ := e.AppendChunk(nil, testSamples(f, name, 200, name == dataset.D3), bounds)
		f.Add(b[:len(b)-4])
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		b := appendCRC(body)
		var d Decoder
		var out Samples
		if _, err := d.DecodeChunk(b, bounds, &out); err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
		}
		if _, err := ReadSummary(b, bounds); err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
		}
	})
}

func appendCRC(body []byte) []byte {
	return appendChecksum(append([]byte(nil), body...), 0)
}

// A run of equal timestamps and latencies (an SDK stamping in ms, a fixed
// timeout) encodes in far less than a byte a sample; the chunk must still
// decode, however small it is.
func TestChunkOfIdenticalSamplesDecodes(t *testing.T) {
	bounds, _ := nativehist.NewBounds(5)
	var e Encoder
	var d Decoder
	for _, n := range []int{2, 8192, MaxSamples} {
		s := &Samples{}
		for i := range n {
			s.T = append(s.T, 1_700_000_000_000_000_000)
			s.Latency = append(s.Latency, 1_000_000)
			if i == n/2 {
				s.Exemplars = append(s.Exemplars, Exemplar{Index: uint32(i), TraceID: [16]byte{1}})
			}
		}
		b, err := e.AppendChunk(nil, s, bounds)
		require.NoError(t, err)
		require.Less(t, len(b), n/8+200, "the run costs (almost) nothing")
		sum, err := ReadSummary(b, bounds)
		require.NoError(t, err)
		require.Equal(t, uint64(n), sum.Count)
		var out Samples
		_, err = d.DecodeChunk(b, bounds, &out)
		require.NoError(t, err)
		require.Equal(t, s.T, out.T)
		require.Equal(t, s.Latency, out.Latency)
		require.Equal(t, s.Exemplars, out.Exemplars)
		minT, maxT, cnt, err := ReadTimeRange(b)
		require.NoError(t, err)
		require.Equal(t, [3]int64{s.T[0], s.T[0], int64(n)}, [3]int64{minT, maxT, int64(cnt)})
	}
	// Above MaxSamples the encoder refuses, so no chunk it writes is one the
	// decoder refuses.
	big := &Samples{T: make([]int64, MaxSamples+1), Latency: make([]int64, MaxSamples+1)}
	_, err := e.AppendChunk(nil, big, bounds)
	require.ErrorContains(t, err, "at most")
}
