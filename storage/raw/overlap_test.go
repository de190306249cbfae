package raw

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/index"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// overlapBase is aligned to every block range the tests use.
const overlapBase = int64(1_800_000_000_000_000_000)

// compactAt runs one compaction as the server's loop would at wall-clock
// time now.
func compactAt(t testing.TB, db *DB, now int64) {
	t.Helper()
	require.NoError(t, db.Compact(time.Unix(0, now)))
}

// dataNow is a wall clock that has just passed the newest sample, for
// tests whose data has no date of its own.
func dataNow(db *DB) time.Time { return time.Unix(0, db.headMaxT()) }

// overlapBatches builds the traffic that makes a series' head chunks
// overlap: "ooo" arrives shuffled within the out-of-order window, "ties"
// is stamped in ms by its SDK, 250 spans a timestamp (more than a chunk
// holds), a few of them exact duplicates. Both cross the block boundary at
// overlapBase+200ms.
func overlapBatches(from, to int64, seed uint64) []*sample.Batch {
	rng := rand.New(rand.NewPCG(seed, 7))
	series := []sample.Series{
		{Key: "ooo", Labels: labels.FromStrings("service", "svc", "span_name", "ooo")},
		{Key: "ties", Labels: labels.FromStrings("service", "svc", "span_name", "ties")},
	}
	var smps []sample.Sample
	var trace uint64
	id := func() [16]byte {
		trace++
		var b [16]byte
		for i := range 8 {
			b[8+i] = byte(trace >> (8 * i))
		}
		b[0] = 1
		return b
	}
	// ooo: one sample every 20 µs, shuffled in groups of 1000 (20 ms, inside
	// the 50 ms window).
	var group []sample.Sample
	for ts := from; ts < to; ts += 20_000 {
		group = append(group, sample.Sample{Series: 0, Start: ts, Duration: 1000 + rng.Int64N(1_000_000), TraceID: id()})
		if len(group) == 1000 {
			rng.Shuffle(len(group), func(i, j int) { group[i], group[j] = group[j], group[i] })
			smps = append(smps, group...)
			group = group[:0]
		}
	}
	smps = append(smps, group...)
	// ties: 250 samples per ms timestamp.
	var ties []sample.Sample
	for ts := from - from%int64(time.Millisecond); ts < to; ts += int64(time.Millisecond) {
		for i := range 250 {
			lat := 1000 + rng.Int64N(50)
			if i%50 == 0 {
				lat = 777 // exact duplicates: same time, same latency
			}
			ties = append(ties, sample.Sample{Series: 1, Start: ts, Duration: lat, TraceID: id()})
		}
	}
	// Interleave the two series as one stream of batches of 500.
	var out []*sample.Batch
	for len(smps) > 0 || len(ties) > 0 {
		b := &sample.Batch{Series: series}
		for range 250 {
			if len(smps) > 0 {
				b.Samples, smps = append(b.Samples, smps[0]), smps[1:]
			}
			if len(ties) > 0 {
				b.Samples, ties = append(b.Samples, ties[0]), ties[1:]
			}
		}
		out = append(out, b)
	}
	return out
}

func overlapOptions(dir string) Options {
	o := blockOptions(dir)
	o.ChunkSize = 100
	return o
}

func TestCompactionOfOverlappingAndTiedChunksKeepsEverySample(t *testing.T) {
	dir := t.TempDir()
	opts := overlapOptions(dir)
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	ms := int64(time.Millisecond)
	// 150 ms .. 650 ms: three block ranges, the first two closed at
	// compaction.
	batches := overlapBatches(overlapBase+150*ms, overlapBase+650*ms, 1)
	for _, b := range batches {
		tooOld, err := db.Append(b)
		require.NoError(t, err)
		require.Zero(t, tooOld)
	}
	compactAt(t, db, overlapBase+700*ms)
	require.NotEmpty(t, db.Blocks(), "closed ranges are written as blocks")
	require.Zero(t, testutil.ToFloat64(db.metrics.compactionFailures))
	requireDisjointChunks(t, db)
	require.Equal(t, expected(batches), readAll(t, db))

	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(batches), readAll(t, db))
}

// A series that stopped early takes late samples for a range already
// written as a block: a second level-1 block of the same range overlaps
// the first, and merging them must interleave their chunks.
func TestMergingOverlappingBlocksKeepsEverySample(t *testing.T) {
	dir := t.TempDir()
	opts := overlapOptions(dir)
	opts.MaxBlockDuration = 400 * time.Millisecond
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	ms := int64(time.Millisecond)
	// "early" stops at 195 ms; "ooo" and "ties" go on to 430 ms.
	early := overlapBatches(overlapBase+100*ms, overlapBase+195*ms, 2)
	for _, b := range early {
		b.Series = []sample.Series{
			{Key: "early-ooo", Labels: labels.FromStrings("service", "svc", "span_name", "early-ooo")},
			{Key: "early-ties", Labels: labels.FromStrings("service", "svc", "span_name", "early-ties")},
		}
	}
	main := overlapBatches(overlapBase+100*ms, overlapBase+430*ms, 3)
	all := append(append([]*sample.Batch{}, early...), main...)
	for _, b := range all {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	compactAt(t, db, overlapBase+430*ms)
	require.NotEmpty(t, db.Blocks())
	// Late samples of the early series, inside its own out-of-order window
	// and inside the range already written.
	late := overlapBatches(overlapBase+150*ms, overlapBase+200*ms, 4)
	for _, b := range late {
		b.Series = early[0].Series
		tooOld, err := db.Append(b)
		require.NoError(t, err)
		require.Zero(t, tooOld)
	}
	all = append(all, late...)
	compactAt(t, db, overlapBase+430*ms)
	require.Zero(t, testutil.ToFloat64(db.metrics.compactionFailures))
	require.Positive(t, testutil.ToFloat64(db.metrics.blocksCompacted), "the overlapping blocks were merged")
	requireDisjointChunks(t, db)
	require.Equal(t, expected(all), readAll(t, db))
	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(all), readAll(t, db))
}

// requireDisjointChunks checks every block of db: per series, index
// entries in strictly increasing time, each entry one chunk whose range is
// the entry's, except for a timestamp shared by more samples than a chunk
// holds.
func requireDisjointChunks(t *testing.T, db *DB) {
	t.Helper()
	db.blocksMtx.RLock()
	defer db.blocksMtx.RUnlock()
	for _, b := range db.blocks {
		k, v := index.AllPostingsKey()
		p, err := b.index.Postings(context.Background(), k, v)
		require.NoError(t, err)
		var (
			sb   labels.ScratchBuilder
			chks []chunks.Meta
		)
		for p.Next() {
			require.NoError(t, b.index.Series(p.At(), &sb, &chks))
			prevMax := int64(minTime)
			for _, m := range chks {
				require.Greater(t, m.MinTime, prevMax, "series %s", sb.Labels())
				prevMax = m.MaxTime
				cs, err := b.appendChunks(nil, m.Ref)
				require.NoError(t, err)
				for _, c := range cs {
					minT, maxT, _, err := chunkenc.ReadTimeRange(c)
					require.NoError(t, err)
					if len(cs) == 1 {
						require.Equal(t, [2]int64{m.MinTime, m.MaxTime}, [2]int64{minT, maxT})
					} else {
						require.Equal(t, [2]int64{m.MinTime, m.MinTime}, [2]int64{minT, maxT}, "only one shared timestamp spans chunks")
						require.Equal(t, m.MinTime, m.MaxTime)
					}
				}
			}
		}
		require.NoError(t, p.Err())
	}
}

// A range whose block cannot be written (here a head chunk damaged in
// memory) is counted, logged and retried; the other ranges are written.
func TestFailedRangeDoesNotHoldUpTheOthers(t *testing.T) {
	dir := t.TempDir()
	opts := overlapOptions(dir)
	opts.MaxBlockDuration = opts.BlockDuration
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	ms := int64(time.Millisecond)
	batches := overlapBatches(overlapBase+100*ms, overlapBase+480*ms, 5)
	for _, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	// Damage a chunk of the first range that overlaps another, so that
	// re-cutting decodes it.
	var damaged []byte
	for _, s := range db.series {
		for i, c := range s.chunks {
			if damaged == nil && c.maxT < overlapBase+200*ms && i > 0 && c.minT <= s.chunks[i-1].maxT {
				damaged = c.data
			}
		}
	}
	require.NotNil(t, damaged)
	damaged[len(damaged)/2] ^= 0xff
	err = db.Compact(dataNow(db))
	require.ErrorIs(t, err, chunkenc.ErrCorrupt)
	require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.compactionFailures))
	blocks := db.Blocks()
	require.Len(t, blocks, 1, "the second range is written all the same")
	require.GreaterOrEqual(t, blocks[0].MinTime, overlapBase+200*ms)

	// Once the chunk is whole again, the next compaction writes its range.
	damaged[len(damaged)/2] ^= 0xff
	require.NoError(t, db.Compact(dataNow(db)))
	require.Len(t, db.Blocks(), 2)
	require.Equal(t, expected(batches), readAll(t, db))
}

// Two head series with one label set under different keys (a key format
// that changed between versions or configurations) are one series to
// queries and one series in a block; writing it twice would make the
// index refuse the block at every compaction.
func TestSeriesSharingLabelsUnderTwoKeys(t *testing.T) {
	dir := t.TempDir()
	opts := overlapOptions(dir)
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	l := labels.FromStrings("service", "svc", "span_name", "op")
	ms := int64(time.Millisecond)
	var all []*sample.Batch
	for i, key := range []string{"old-key", "new-key"} {
		b := &sample.Batch{Series: []sample.Series{{Key: key, Labels: l}}}
		for ts := overlapBase + int64(i)*ms/2; ts < overlapBase+500*ms; ts += ms {
			b.Samples = append(b.Samples, sample.Sample{Start: ts, Duration: int64(100 + i), TraceID: [16]byte{1}})
		}
		_, err := db.Append(b)
		require.NoError(t, err)
		all = append(all, b)
	}
	require.Len(t, db.Select(minTime, maxTime), 1)
	require.Len(t, db.LabelSets(minTime, maxTime), 1)
	require.Equal(t, expected(all), readAll(t, db))
	require.NoError(t, db.Compact(dataNow(db)))
	require.NotEmpty(t, db.Blocks())
	require.Zero(t, testutil.ToFloat64(db.metrics.compactionFailures))
	requireDisjointChunks(t, db)
	require.Len(t, db.Select(minTime, maxTime), 1)
	require.Equal(t, expected(all), readAll(t, db))
	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(all), readAll(t, db))
}
