package raw

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

type recutSample struct {
	t, lat int64
	w      uint64
	id     [16]byte // zero unless an exemplar
}

func TestRecutMergesOverlapsAndKeepsWeightsAndExemplars(t *testing.T) {
	bounds, err := nativehist.NewBounds(5)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(5, 5))
	var (
		enc    chunkenc.Encoder
		chunks []headChunk
		want   []recutSample
	)
	// Overlapping chunks, some weighted, one timestamp (1000) shared by
	// more samples (60) than a chunk may hold (25), and an isolated chunk.
	mk := func(ts []int64, weighted bool) {
		s := &chunkenc.Samples{}
		slices.Sort(ts)
		for i, v := range ts {
			s.T = append(s.T, v)
			s.Latency = append(s.Latency, rng.Int64N(1000))
			w := uint64(1)
			if weighted {
				w = uint64(1 + rng.IntN(4))
				s.Weight = append(s.Weight, w)
			}
			var id [16]byte
			if i%3 == 0 {
				id[0], id[1] = byte(len(want)), byte(len(want)>>8)
				s.Exemplars = append(s.Exemplars, chunkenc.Exemplar{Index: uint32(i), TraceID: id})
			}
			want = append(want, recutSample{v, s.Latency[i], w, id})
		}
		data, err := enc.AppendChunk(nil, s, bounds)
		require.NoError(t, err)
		chunks = append(chunks, headChunk{data: data, minT: ts[0], maxT: ts[len(ts)-1]})
	}
	for c := range 6 {
		var ts []int64
		for range 15 {
			ts = append(ts, 900+rng.Int64N(200))
		}
		for range 10 {
			ts = append(ts, 1000)
		}
		mk(ts, c%2 == 1)
	}
	mk([]int64{5000, 5001, 5002}, false)
	rng.Shuffle(len(chunks), func(i, j int) { chunks[i], chunks[j] = chunks[j], chunks[i] })

	rc := &recutter{bounds: bounds, chunkSize: 10, maxSamples: 25, cutAt: minTime}
	out, err := rc.recut(chunks)
	require.NoError(t, err)
	var got []recutSample
	var dec chunkenc.Decoder
	var s chunkenc.Samples
	for i, c := range out {
		_, err := dec.DecodeChunk(c.data, bounds, &s)
		require.NoError(t, err)
		require.LessOrEqual(t, len(s.T), 25)
		require.Equal(t, [2]int64{s.T[0], s.T[len(s.T)-1]}, [2]int64{c.minT, c.maxT})
		if i > 0 && c.minT <= out[i-1].maxT {
			require.Equal(t, int64(1000), c.minT, "only the over-long run of one timestamp is split")
			require.Equal(t, c.minT, out[i-1].maxT)
		}
		ex := 0
		for j := range s.T {
			r := recutSample{t: s.T[j], lat: s.Latency[j], w: 1}
			if s.Weight != nil {
				r.w = s.Weight[j]
			}
			if ex < len(s.Exemplars) && int(s.Exemplars[ex].Index) == j {
				r.id = s.Exemplars[ex].TraceID
				ex++
			}
			got = append(got, r)
		}
	}
	order := func(a, b recutSample) int {
		if a.t != b.t {
			return int(a.t - b.t)
		}
		if a.lat != b.lat {
			return int(a.lat - b.lat)
		}
		if a.w != b.w {
			return int(a.w) - int(b.w)
		}
		return slices.Compare(a.id[:], b.id[:])
	}
	slices.SortFunc(want, order)
	slices.SortFunc(got, order)
	require.Equal(t, want, got, "every sample, weight and trace id survives")

	// The block writer puts the chunks sharing timestamp 1000 under one
	// index entry, and reading gives them all back.
	dir := t.TempDir()
	meta, err := writeBlock(dir, []blockSeries{{lset: labels.FromStrings("a", "b"), chunks: out}}, 1, nil, chunkSamples, true)
	require.NoError(t, err)
	require.Equal(t, uint64(len(want)), meta.Stats.Samples)
	b, err := openBlock(filepath.Join(dir, meta.ULID.String()))
	require.NoError(t, err)
	defer b.Close()
	sel, err := b.selectSeries(minTime, maxTime)
	require.NoError(t, err)
	require.Len(t, sel, 1)
	require.Len(t, sel[0].Chunks, len(out))
	sel, err = b.selectSeries(1000, 1000)
	require.NoError(t, err)
	n := 0
	for _, c := range sel[0].Chunks {
		_, err := dec.DecodeChunk(c, bounds, &s)
		require.NoError(t, err)
		for _, v := range s.T {
			if v == 1000 {
				n++
			}
		}
	}
	require.Equal(t, 60, n, "a query at the shared timestamp finds all of its samples")
}
