package raw

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// withRandomTraceIDs returns copies of batches whose samples have random
// trace ids, as W3C trace ids are.
func withRandomTraceIDs(batches []*sample.Batch, rng *rand.Rand) []*sample.Batch {
	out := make([]*sample.Batch, len(batches))
	for i, b := range batches {
		nb := &sample.Batch{Series: b.Series, Samples: slices.Clone(b.Samples)}
		for j := range nb.Samples {
			binary.LittleEndian.PutUint64(nb.Samples[j].TraceID[:8], rng.Uint64())
			binary.LittleEndian.PutUint64(nb.Samples[j].TraceID[8:], rng.Uint64())
		}
		out[i] = nb
	}
	return out
}

type wpoint struct {
	t, lat int64
	w      uint64
}

func sortPoints(ps []wpoint) {
	slices.SortFunc(ps, func(a, b wpoint) int {
		if a.t != b.t {
			return int(a.t - b.t)
		}
		if a.lat != b.lat {
			return int(a.lat - b.lat)
		}
		return int(a.w) - int(b.w)
	})
}

// readAllWeighted returns every sample with its weight, per series label
// string, sorted; it checks that each chunk's summary counts the weights.
func readAllWeighted(t testing.TB, db *DB) map[string][]wpoint {
	out := map[string][]wpoint{}
	var d chunkenc.Decoder
	var s chunkenc.Samples
	weight := func(ws []uint64, i int) uint64 {
		if ws == nil {
			return 1
		}
		return ws[i]
	}
	for _, sr := range db.Select(minTime, maxTime) {
		var ps []wpoint
		for _, c := range sr.Chunks {
			sum, err := d.DecodeChunk(c, db.bounds, &s)
			require.NoError(t, err)
			var total uint64
			for i := range s.T {
				ps = append(ps, wpoint{s.T[i], s.Latency[i], weight(s.Weight, i)})
				total += weight(s.Weight, i)
				require.NotZero(t, weight(s.Weight, i))
			}
			require.Equal(t, total, sum.Count, "the chunk summary counts weights")
		}
		if sr.Open.Weight != nil {
			require.Len(t, sr.Open.Weight, len(sr.Open.T))
			require.True(t, slices.ContainsFunc(sr.Open.Weight, func(w uint64) bool { return w != 1 }), "an all-ones Open.Weight is nil")
		}
		for i := range sr.Open.T {
			ps = append(ps, wpoint{sr.Open.T[i], sr.Open.Latency[i], weight(sr.Open.Weight, i)})
		}
		sortPoints(ps)
		out[sr.Labels.String()] = ps
	}
	return out
}

// expectedSampled is what the raw tier must hold after batches[i] was
// appended at levels[i].
func expectedSampled(batches []*sample.Batch, levels []int) map[string][]wpoint {
	out := map[string][]wpoint{}
	for i, b := range batches {
		for _, s := range b.Samples {
			if SampledIn(s.TraceID, levels[i]) {
				k := b.Series[s.Series].Labels.String()
				out[k] = append(out[k], wpoint{s.Start, s.Duration, 1 << levels[i]})
			}
		}
	}
	for _, ps := range out {
		sortPoints(ps)
	}
	return out
}

func traceID(r uint64) [16]byte {
	var id [16]byte
	binary.BigEndian.PutUint64(id[8:], r)
	id[0] = 0xab // outside the random bits: never looked at
	return id
}

func TestSamplingDecision(t *testing.T) {
	// OpenTelemetry's rule: keep when R ≥ (1-p)·2^56.
	for level := 1; level <= MaxSamplingLevel; level++ {
		T := uint64(1)<<56 - uint64(1)<<(56-level)
		require.True(t, SampledIn(traceID(T), level), "level %d", level)
		require.False(t, SampledIn(traceID(T-1), level), "level %d", level)
		require.True(t, SampledIn(traceID(1<<56-1), level))
	}
	require.True(t, SampledIn([16]byte{}, 0), "level 0 keeps everything")
	require.False(t, SampledIn([16]byte{}, 1))
	// Byte 8 and before are not random in every trace id format.
	id := traceID(0)
	for i := range 9 {
		id[i] = 0xff
	}
	require.False(t, SampledIn(id, 1))

	// Nested levels, and the share kept is 2^-level.
	rng := rand.New(rand.NewPCG(3, 4))
	const n = 1 << 16
	kept := make([]int, MaxSamplingLevel+1)
	for range n {
		var id [16]byte
		binary.LittleEndian.PutUint64(id[:8], rng.Uint64())
		binary.LittleEndian.PutUint64(id[8:], rng.Uint64())
		for level := range kept {
			if SampledIn(id, level) {
				kept[level]++
				if level > 0 {
					require.True(t, SampledIn(id, level-1), "a trace kept at level %d is kept at %d", level, level-1)
				}
			}
		}
	}
	require.Equal(t, n, kept[0])
	for level := 1; level <= 6; level++ {
		p := math.Ldexp(1, -level)
		sd := math.Sqrt(n * p * (1 - p))
		require.InDelta(t, n*p, float64(kept[level]), 5*sd, "level %d", level)
	}
}

func TestAppendSampledKeepsTracesWhole(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := testOptions(t.TempDir())
	opts.ChunkSize = 100
	opts.Exemplars = ExemplarPolicy{All: true}
	db, err := Open(opts, reg, nil)
	require.NoError(t, err)
	defer db.Close()

	// The same 1000 traces pass through two services.
	rng := rand.New(rand.NewPCG(5, 6))
	la, lb := labels.FromStrings("service", "a"), labels.FromStrings("service", "b")
	b := &sample.Batch{Series: []sample.Series{{Key: "a", Labels: la}, {Key: "b", Labels: lb}}}
	for i := range 1000 {
		var id [16]byte
		binary.LittleEndian.PutUint64(id[:8], rng.Uint64())
		binary.LittleEndian.PutUint64(id[8:], rng.Uint64())
		start := int64(1_800_000_000_000_000_000) + int64(i)*1000
		b.Samples = append(b.Samples,
			sample.Sample{Series: 0, Start: start, Duration: 100 + int64(i), TraceID: id},
			sample.Sample{Series: 1, Start: start + 10, Duration: 50 + int64(i), TraceID: id})
	}
	before := slices.Clone(b.Samples)
	tooOld, out, err := db.AppendSampled(b, 3)
	require.NoError(t, err)
	require.Zero(t, tooOld)
	require.Equal(t, before, b.Samples, "the batch is left as it was, for the aggregates")

	ids := map[string][][16]byte{}
	var d chunkenc.Decoder
	var s chunkenc.Samples
	kept := 0
	for _, sr := range db.Select(minTime, maxTime) {
		for _, c := range sr.Chunks {
			_, err := d.DecodeChunk(c, db.bounds, &s)
			require.NoError(t, err)
			require.Len(t, s.Exemplars, len(s.T))
			for _, ex := range s.Exemplars {
				require.True(t, SampledIn(ex.TraceID, 3))
				require.Equal(t, uint64(8), s.Weight[ex.Index])
				ids[sr.Labels.Get("service")] = append(ids[sr.Labels.Get("service")], ex.TraceID)
			}
		}
		kept += len(sr.Chunks)*opts.ChunkSize + len(sr.Open.T)
	}
	require.NotEmpty(t, ids["a"])
	require.Equal(t, ids["a"], ids["b"], "both services keep the same traces")
	require.Equal(t, 2000, kept+out)
	require.InDelta(t, 2000.0/8, kept, 5*math.Sqrt(2*1000*(1.0/8)*(7.0/8)))
	require.Equal(t, float64(out), testutil.ToFloat64(db.metrics.sampledOut))
	require.Equal(t, float64(kept), testutil.ToFloat64(db.metrics.appended))

	_, _, err = db.AppendSampled(b, MaxSamplingLevel+1)
	require.ErrorIs(t, err, errSamplingLevel)
	_, _, err = db.AppendSampled(b, -1)
	require.ErrorIs(t, err, errSamplingLevel)
}

func TestWeightColumnOnlyWhenSampled(t *testing.T) {
	opts := testOptions(t.TempDir())
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	batches := withRandomTraceIDs(testBatches(t, 1, 3000, 500), rand.New(rand.NewPCG(1, 2)))
	for _, b := range batches[:5] {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	res := db.Select(minTime, maxTime)
	require.Len(t, res, 1)
	require.Len(t, res[0].Chunks, 2)
	require.Len(t, res[0].Open.T, 500)
	require.Nil(t, res[0].Open.Weight)
	var d chunkenc.Decoder
	var s chunkenc.Samples
	for _, c := range res[0].Chunks {
		_, err := d.DecodeChunk(c, db.bounds, &s)
		require.NoError(t, err)
		require.Nil(t, s.Weight, "no weight column without sampling")
	}

	// Sampling starts half-way through the open chunk: the samples before
	// it get weight 1.
	_, _, err = db.AppendSampled(batches[5], 2)
	require.NoError(t, err)
	res = db.Select(minTime, maxTime)
	require.Greater(t, len(res[0].Open.T), 500)
	for i, w := range res[0].Open.Weight {
		if i < 500 {
			require.Equal(t, uint64(1), w)
		} else {
			require.Equal(t, uint64(4), w)
		}
	}
	levels := []int{0, 0, 0, 0, 0, 2}
	require.Equal(t, expectedSampled(batches, levels), readAllWeighted(t, db))
}

// TestWeightsSurviveReplayCheckpointAndCompaction appends at mixed levels
// and checks every sample and weight through WAL replay, head checkpoints,
// blocks, block compaction and reopening, on disk.
func TestWeightsSurviveReplayCheckpointAndCompaction(t *testing.T) {
	dir := t.TempDir()
	opts := blockOptions(dir)
	opts.ChunkSize = 200 // chunks of about 100 ms, so that blocks merge
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	batches := withRandomTraceIDs(testBatches(t, 3, 30_000, 500), rand.New(rand.NewPCG(7, 8))) // about 3 s of data
	levels := make([]int, len(batches))
	for i := range levels {
		levels[i] = []int{0, 2, 3, 0, 1}[i%5]
	}
	half := len(batches) / 2
	appendRange := func(db *DB, from, to int, compact bool) {
		for i := from; i < to; i++ {
			_, _, err := db.AppendSampled(batches[i], levels[i])
			require.NoError(t, err)
			if compact && i%10 == 9 {
				require.NoError(t, db.Compact(dataNow(db)))
			}
		}
	}
	check := func(db *DB, n int, what string) {
		t.Helper()
		require.Equal(t, expectedSampled(batches[:n], levels[:n]), readAllWeighted(t, db), what)
	}

	appendRange(db, 0, half, false)
	check(db, half, "head")
	crash(db)
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	check(db, half, "after WAL replay")

	require.NoError(t, db.Compact(dataNow(db)))
	require.NotEmpty(t, db.Blocks())
	check(db, half, "blocks and head after the checkpoint")
	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	check(db, half, "after loading the checkpoint")

	appendRange(db, half, len(batches), true)
	require.NoError(t, db.Compact(dataNow(db)))
	merged := false
	for _, m := range db.Blocks() {
		merged = merged || m.Level > 1
	}
	require.True(t, merged, "compaction merged blocks")
	check(db, len(batches), "after compaction")
	weighted := false
	for _, sr := range db.Select(minTime, maxTime) {
		weighted = weighted || sr.Open.Weight != nil
	}
	require.True(t, weighted, "the head still holds weighted open samples")
	crash(db)
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	check(db, len(batches), "after checkpoint and WAL replay")
	require.NoError(t, db.Compact(dataNow(db)))
	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	check(db, len(batches), "after a last compaction and reopening")
}

// TestHeadCheckpointV1IsRead opens a head checkpoint written before open
// samples had weights.
func TestHeadCheckpointV1IsRead(t *testing.T) {
	dir := t.TempDir()
	lset := labels.FromStrings("service", "a")
	b := []byte(headCheckpointMagicV1)
	b = binary.AppendUvarint(b, 0) // first segment
	b = binary.AppendUvarint(b, 0) // pending blocks
	b = binary.AppendUvarint(b, 2) // next ref
	b = binary.AppendUvarint(b, 1) // series
	b = binary.AppendUvarint(b, 1)
	b = appendSeriesHead(b, "a", lset)
	b = binary.AppendVarint(b, 2000)
	b = binary.AppendUvarint(b, 0) // chunks
	b = binary.AppendUvarint(b, 2) // open samples
	for _, p := range []wpoint{{1000, 5, 1}, {2000, 7, 1}} {
		b = binary.AppendVarint(b, p.t)
		b = binary.AppendUvarint(b, uint64(p.lat))
		b = append(b, make([]byte, 16)...)
	}
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	require.NoError(t, os.WriteFile(dir+"/head.checkpoint", b, 0o644))

	db, err := Open(testOptions(dir), nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, map[string][]wpoint{lset.String(): {{1000, 5, 1}, {2000, 7, 1}}}, readAllWeighted(t, db))
}

func TestDecodeWeightedSamplesRecord(t *testing.T) {
	f := func(weight uint64, wantErr bool) {
		t.Helper()
		rec := appendUvarintPlaceholder([]byte{recWeightedSamples})
		rec = appendUvarint(rec, weight)
		rec = appendUvarint(rec, 1)
		rec = appendVarint(rec, 1000)
		rec = appendUvarint(rec, 42)
		rec = append(rec, make([]byte, 16)...)
		rec = fillCount(rec, 1+countWidth, 1)
		got, err := decodeSamplesRecord(rec, nil)
		if wantErr {
			require.ErrorIs(t, err, errCorruptRecord)
			require.ErrorContains(t, err, "sample weight")
			return
		}
		require.NoError(t, err)
		require.Equal(t, []walSample{{ref: 1, t: 1000, latency: 42, weight: uint32(weight)}}, got)
	}
	f(1, false)
	f(1024, false)
	f(math.MaxUint32, false)
	f(0, true)
	f(math.MaxUint32+1, true)
}

// TestWeightedEstimatesAreUnbiased checks that the kept samples, with
// their weights, are unbiased estimates of the data before sampling: the
// weighted count and latency sum, and the weighted quantiles (the samples
// counted as many times as their weight, ranks interpolated as Prometheus's
// quantile_over_time does). Each run is its own series of lognormal
// latencies with random trace ids, sampled through the DB and read back
// from its chunks and open samples; over the runs, the mean error of each
// estimate must be within four standard errors of zero. Seeds are fixed,
// so the outcome is too.
func TestWeightedEstimatesAreUnbiased(t *testing.T) {
	const (
		runs = 100
		n    = 20_000 // spans per run
	)
	quantiles := []float64{0.5, 0.9, 0.99}
	for _, level := range []int{2, 4} {
		p := math.Ldexp(1, -level)
		t.Run(fmt.Sprintf("p=1/%d", 1<<level), func(t *testing.T) {
			opts := testOptions(t.TempDir())
			opts.WALSegmentSize = 8 << 20
			db, err := Open(opts, nil, nil)
			require.NoError(t, err)
			defer db.Close()
			rng := rand.New(rand.NewPCG(uint64(level), 99))

			type truth struct {
				sum       float64
				quantiles []float64
			}
			truths := make([]truth, runs)
			ones := make([]uint64, n)
			for i := range ones {
				ones[i] = 1
			}
			for r := range runs {
				lset := labels.FromStrings("run", strconv.Itoa(r))
				b := &sample.Batch{Series: []sample.Series{{Key: lset.String(), Labels: lset}}}
				lat := make([]int64, n)
				for i := range n {
					lat[i] = int64(2e6 * math.Exp(0.8*rng.NormFloat64())) // median 2 ms, σ 0.8
					var id [16]byte
					binary.LittleEndian.PutUint64(id[:8], rng.Uint64())
					binary.LittleEndian.PutUint64(id[8:], rng.Uint64())
					b.Samples = append(b.Samples, sample.Sample{Start: 1_800_000_000_000_000_000 + int64(i)*100_000, Duration: lat[i], TraceID: id})
					truths[r].sum += float64(lat[i])
				}
				for _, q := range quantiles {
					truths[r].quantiles = append(truths[r].quantiles, weightedQuantile(lat, ones, q))
				}
				for off := 0; off < n; off += 1000 {
					part := &sample.Batch{Series: b.Series, Samples: b.Samples[off : off+1000]}
					_, _, err := db.AppendSampled(part, level)
					require.NoError(t, err)
				}
			}

			countErr := make([]float64, runs)
			sumErr := make([]float64, runs)
			qErr := make([][]float64, len(quantiles))
			var d chunkenc.Decoder
			var s chunkenc.Samples
			res := db.Select(minTime, maxTime)
			require.Len(t, res, runs)
			for _, sr := range res {
				r, err := strconv.Atoi(sr.Labels.Get("run"))
				require.NoError(t, err)
				var lat []int64
				var w []uint64
				for _, c := range sr.Chunks {
					_, err := d.DecodeChunk(c, db.bounds, &s)
					require.NoError(t, err)
					lat = append(lat, s.Latency...)
					w = append(w, s.Weight...)
				}
				lat = append(lat, sr.Open.Latency...)
				w = append(w, sr.Open.Weight...)
				require.Len(t, w, len(lat), "every sample is weighted")
				var count, sum float64
				for i := range lat {
					require.Equal(t, uint64(1)<<level, w[i])
					count += float64(w[i])
					sum += float64(w[i]) * float64(lat[i])
				}
				countErr[r] = count - n
				sumErr[r] = sum/truths[r].sum - 1
				for j, q := range quantiles {
					qErr[j] = append(qErr[j], weightedQuantile(lat, w, q)/truths[r].quantiles[j]-1)
				}
			}

			// The weighted count: each span is kept with probability p
			// independently (random trace ids), so its standard deviation
			// is known.
			sd := math.Sqrt(n * (1 - p) / p)
			mean, empSD := meanSD(countErr)
			require.Less(t, math.Abs(mean), 4*sd/math.Sqrt(runs), "weighted count: mean error %.1f", mean)
			require.InDelta(t, 1, empSD/sd, 0.3, "weighted count: spread %.1f, expected %.1f", empSD, sd)
			unbiased := func(what string, errs []float64, maxRel float64) {
				t.Helper()
				mean, sd := meanSD(errs)
				se := sd / math.Sqrt(float64(len(errs)))
				t.Logf("%s: mean relative error %+.4f, standard error %.4f", what, mean, se)
				require.Positive(t, sd, what)
				require.Less(t, math.Abs(mean), 4*se, "%s: mean relative error %.4f against standard error %.4f", what, mean, se)
				require.Less(t, math.Abs(mean), maxRel, what)
			}
			unbiased("weighted sum", sumErr, 0.01)
			for j, q := range quantiles {
				unbiased(fmt.Sprintf("weighted p%g", 100*q), qErr[j], 0.02)
			}
		})
	}
}

func meanSD(xs []float64) (mean, sd float64) {
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	for _, x := range xs {
		sd += (x - mean) * (x - mean)
	}
	return mean, math.Sqrt(sd / float64(len(xs)-1))
}

// weightedQuantile is Prometheus's quantile_over_time (rank q·(N-1),
// interpolated between the two closest ranks) over the samples each
// repeated as many times as its weight.
func weightedQuantile(lat []int64, w []uint64, q float64) float64 {
	idx := make([]int, len(lat))
	for i := range idx {
		idx[i] = i
	}
	slices.SortFunc(idx, func(a, b int) int { return int(lat[a] - lat[b]) })
	var total uint64
	for _, x := range w {
		total += x
	}
	rank := q * float64(total-1)
	lo := uint64(math.Floor(rank))
	hi := min(lo+1, total-1)
	at := func(r uint64) float64 {
		var cum uint64
		for _, i := range idx {
			cum += w[i]
			if r < cum {
				return float64(lat[i])
			}
		}
		return float64(lat[idx[len(idx)-1]])
	}
	vlo, vhi := at(lo), at(hi)
	return vlo + (rank-float64(lo))*(vhi-vlo)
}
