package raw

import (
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// walSegments returns how many WAL segments dir holds.
func walSegments(t testing.TB, dir string) int {
	first, last, err := wlog.Segments(filepath.Join(dir, "wal"))
	require.NoError(t, err)
	if last < first {
		return 0
	}
	return last - first + 1
}

// A clean shutdown checkpoints the head: the next start loads the
// checkpoint and replays nothing from the WAL, whose older segments are
// gone.
func TestRestartAfterCloseReplaysNothing(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions(dir) // 128 KiB segments
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	batches := testBatches(t, 4, 60_000, 500)
	for _, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.Greater(t, walSegments(t, dir), 5)
	require.NoError(t, db.Close())
	require.LessOrEqual(t, walSegments(t, dir), 1, "the WAL behind the checkpoint is deleted")

	reg := prometheus.NewRegistry()
	db, err = Open(opts, reg, nil)
	require.NoError(t, err)
	require.Zero(t, testutil.ToFloat64(db.metrics.replayed), "nothing is replayed from the WAL")
	require.Equal(t, expected(batches), readAll(t, db))
	// Appends after the restart go to the WAL past the checkpoint and
	// survive a crash.
	more := testBatches(t, 4, 2_000, 500)
	for _, b := range more {
		for i := range b.Samples {
			b.Samples[i].Start += 100 * int64(time.Second)
		}
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	crash(db)
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(append(batches, more...)), readAll(t, db))
}

// Compaction checkpoints once the WAL passes CheckpointWALSize, even when
// no block range closes, so the replay after a crash stays bounded.
func TestCompactCheckpointsALargeWAL(t *testing.T) {
	dir := t.TempDir()
	opts := testOptions(dir)
	opts.CheckpointWALSize = 512 << 10
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	batches := testBatches(t, 4, 60_000, 500) // about 6 s of data, within one 2 h range
	for _, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.Greater(t, walSegments(t, dir), 5)
	require.NoError(t, db.Compact(dataNow(db)))
	require.Empty(t, db.Blocks(), "no range is closed")
	require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.checkpoints))
	require.LessOrEqual(t, walSegments(t, dir), 1)
	// Below the size, no checkpoint.
	require.NoError(t, db.Compact(dataNow(db)))
	require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.checkpoints))

	crash(db)
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Zero(t, testutil.ToFloat64(db.metrics.replayed))
	require.Equal(t, expected(batches), readAll(t, db))
}

// Appends, queries, compactions and checkpoints run at once: nothing is
// lost or counted twice, live or after a restart (run with -race).
func TestCompactionAndCheckpointsDuringAppends(t *testing.T) {
	dir := t.TempDir()
	opts := childOptions(dir, true) // 1 s blocks, 256 KiB checkpoints
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	// Each appender has series of its own, appended in time order: the
	// appenders run at different speeds, and the out-of-order window is
	// 100 ms.
	var (
		wg      sync.WaitGroup
		done    = make(chan struct{})
		batches []*sample.Batch
		mine    [4][]*sample.Batch
	)
	for g := range 4 {
		for _, b := range testBatches(t, 2, 20_000, 200) {
			b.Series = slices.Clone(b.Series)
			for i := range b.Series {
				l := labels.NewBuilder(b.Series[i].Labels).Set("appender", strconv.Itoa(g)).Labels()
				b.Series[i] = sample.Series{Key: l.String(), Labels: l}
			}
			mine[g] = append(mine[g], b)
		}
		batches = append(batches, mine[g]...)
	}
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, b := range mine[g] {
				tooOld, err := db.Append(b)
				if err != nil || tooOld != 0 {
					t.Errorf("append: %d too old, %v", tooOld, err)
					return
				}
			}
		}()
	}
	compacted := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-done:
				compacted <- n
				return
			default:
			}
			if err := db.Compact(dataNow(db)); err != nil {
				t.Errorf("compact: %v", err)
			}
			db.Select(minTime, maxTime)
			n++
		}
	}()
	wg.Wait()
	close(done)
	require.Positive(t, <-compacted)
	require.NoError(t, db.Compact(dataNow(db)))
	require.NotEmpty(t, db.Blocks())
	requireSamePoints(t, expected(batches), readAll(t, db))
	crash(db)
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	requireSamePoints(t, expected(batches), readAll(t, db))
	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	requireSamePoints(t, expected(batches), readAll(t, db))
}

// A query running while compaction moves chunks from the head to blocks
// sees every sample exactly once: never in neither, never in both.
func TestQueriesDuringCompactionSeeEverySampleOnce(t *testing.T) {
	for round := range 5 {
		dir := t.TempDir()
		opts := childOptions(dir, true)
		opts.MaxBlockDuration = opts.BlockDuration // no merges: only the head hand-off
		db, err := Open(opts, nil, nil)
		require.NoError(t, err)
		batches := testBatches(t, 8, 60_000, 500)
		for _, b := range batches {
			_, err := db.Append(b)
			require.NoError(t, err)
		}
		total := 0
		for _, ps := range expected(batches) {
			total += len(ps)
		}
		done := make(chan error)
		go func() { done <- db.Compact(dataNow(db)) }()
		counts := 0
	loop:
		for {
			select {
			case err := <-done:
				require.NoError(t, err)
				break loop
			default:
			}
			n := 0
			for _, sr := range db.Select(minTime, maxTime) {
				n += len(sr.Open.T)
				for _, c := range sr.Chunks {
					_, _, cnt, err := chunkenc.ReadTimeRange(c)
					require.NoError(t, err)
					n += cnt
				}
			}
			require.Equal(t, total, n, "round %d, query %d", round, counts)
			counts++
		}
		require.NotEmpty(t, db.Blocks())
		require.NoError(t, db.Close())
	}
}
