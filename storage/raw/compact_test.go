package raw

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/stretchr/testify/require"
)

// blockOptions shrinks block ranges to the data's scale: D1 at 10,000
// samples/s spans a second per 10,000 samples.
func blockOptions(dir string) Options {
	o := testOptions(dir)
	o.BlockDuration = 200 * time.Millisecond
	o.MaxBlockDuration = 800 * time.Millisecond
	o.OutOfOrderWindow = 50 * time.Millisecond
	o.Retention = 0
	return o
}

func TestCompactCutsBlocksAndTruncatesTheWAL(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(blockOptions(dir), nil, nil)
	require.NoError(t, err)
	batches := testBatches(t, 3, 30_000, 500) // about 3 s of data
	for _, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	firstBefore, _, err := wlog.Segments(filepath.Join(dir, "wal"))
	require.NoError(t, err)
	require.NoError(t, db.Compact(dataNow(db)))
	require.NotEmpty(t, db.blocks)
	require.Positive(t, testutil.ToFloat64(db.metrics.blocksWritten))
	firstAfter, _, err := wlog.Segments(filepath.Join(dir, "wal"))
	require.NoError(t, err)
	require.Greater(t, firstAfter, firstBefore, "the WAL before the checkpoint is deleted")

	// Every sample is still there: in blocks, in the head, after reopening.
	require.Equal(t, expected(batches), readAll(t, db))
	for _, b := range db.blocks {
		require.LessOrEqual(t, b.meta.MaxTime-b.meta.MinTime, (800 * time.Millisecond).Nanoseconds())
	}
	require.NoError(t, db.Close())
	db, err = Open(blockOptions(dir), nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(batches), readAll(t, db))

	// Matchers work against the block index too.
	res := db.Select(minTime, maxTime, labels.MustNewMatcher(labels.MatchRegexp, "span_name", "op-[02]"))
	require.Len(t, res, 2)
}

func TestCompactionMergesSmallBlocks(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(blockOptions(dir), nil, nil)
	require.NoError(t, err)
	defer db.Close()
	batches := testBatches(t, 2, 40_000, 250)
	// Compact often, as a running node would: many level-1 blocks appear
	// and merge into 800 ms ones.
	for i, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
		if i%20 == 19 {
			require.NoError(t, db.Compact(dataNow(db)))
		}
	}
	require.NoError(t, db.Compact(dataNow(db)))
	require.Positive(t, testutil.ToFloat64(db.metrics.blocksCompacted))
	var merged bool
	for _, b := range db.blocks {
		merged = merged || b.meta.Level > 1
	}
	require.True(t, merged)
	require.Equal(t, expected(batches), readAll(t, db))
}

func TestRetention(t *testing.T) {
	dir := t.TempDir()
	opts := blockOptions(dir)
	opts.Retention = time.Second
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	batches := testBatches(t, 1, 40_000, 500) // about 4 s
	for _, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.NoError(t, db.Compact(dataNow(db)))
	require.Positive(t, testutil.ToFloat64(db.metrics.blocksDeleted))
	newest := db.headMaxT()
	for _, b := range db.blocks {
		require.GreaterOrEqual(t, b.meta.MaxTime, newest-time.Second.Nanoseconds())
	}
	entries, err := os.ReadDir(filepath.Join(dir, "blocks"))
	require.NoError(t, err)
	require.Len(t, entries, len(db.blocks), "deleted blocks leave no directory")

	// By size: keep at most one block's worth.
	db.opts.Retention = 0
	db.opts.RetentionBytes = 1
	require.NoError(t, db.applyRetention(db.headMaxT()))
	require.Empty(t, db.blocks)
}

func TestOpenCleansUpInterruptedWrites(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(blockOptions(dir), nil, nil)
	require.NoError(t, err)
	for _, b := range testBatches(t, 2, 20_000, 500) {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.NoError(t, db.Compact(dataNow(db)))
	want := readAll(t, db)
	require.NoError(t, db.Close())

	// A block write that died half-way, and a block superseded by a
	// compaction that died before deleting its sources.
	junk := filepath.Join(dir, "blocks", ulid.Make().String()+".tmp")
	require.NoError(t, os.MkdirAll(junk, 0o755))
	db, err = Open(blockOptions(dir), nil, nil)
	require.NoError(t, err)
	_, err = os.Stat(junk)
	require.True(t, os.IsNotExist(err))
	require.Equal(t, want, readAll(t, db))
	require.NoError(t, db.Close())
}

func TestPendingBlockIsInstalledAfterCrash(t *testing.T) {
	dir := t.TempDir()
	opts := blockOptions(dir)
	opts.MaxBlockDuration = opts.BlockDuration // no merging: every block is one the checkpoint names
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	batches := testBatches(t, 2, 20_000, 500)
	for _, b := range batches {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.NoError(t, db.Compact(dataNow(db)))
	crash(db)
	// Undo the install of every block, as if the process died between
	// writing the checkpoint and renaming the blocks.
	entries, err := os.ReadDir(filepath.Join(dir, "blocks"))
	require.NoError(t, err)
	require.NotEmpty(t, entries)
	for _, e := range entries {
		p := filepath.Join(dir, "blocks", e.Name())
		require.NoError(t, os.Rename(p, p+".tmp"))
	}
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Len(t, db.blocks, len(entries))
	require.Equal(t, expected(batches), readAll(t, db))
}
