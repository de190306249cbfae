package agg

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/prometheus/prometheus/util/compression"
	"github.com/stretchr/testify/require"
)

// brokenWAL returns a closed WAL: every write to it fails.
func brokenWAL(t *testing.T) *wlog.WL {
	t.Helper()
	w, err := wlog.New(nil, nil, t.TempDir(), compression.None)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return w
}

// TestPrepareAbortCommitApply: a prepared batch is applied by Commit or
// Apply and by nothing else. Abort leaves no trace (not even its new
// series); a Commit whose WAL write fails applies nothing; an Apply whose
// WAL write fails applies the batch and makes the next flush checkpoint it,
// so that it survives a crash without its WAL record.
func TestPrepareAbortCommitApply(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, _ := openStore(t, opts)
	ctx := context.Background()
	first := genObs(1, 30, seriesA)
	appendObs(t, s, first)

	aborted := genObs(2, 20, seriesA, seriesB)
	p, err := s.Prepare(ctx, testTenant, batchOf(aborted))
	require.NoError(t, err)
	p.Abort()

	ts, err := s.tenant(testTenant)
	require.NoError(t, err)
	good := ts.wal
	ts.wal = brokenWAL(t)
	p, err = s.Prepare(ctx, testTenant, batchOf(aborted))
	require.NoError(t, err)
	require.Error(t, p.Commit(), "the WAL write fails")
	require.Equal(t, 1, ts.seriesCount(), "neither Abort nor a failed Commit adds a series")
	require.Equal(t, float64(1), testutil.ToFloat64(s.metrics.walFailures))
	ts.wal = good

	now := base
	require.NoError(t, s.Flush(ctx, now))
	requireAggregates(t, s, testTenant, now.UnixMilli(), first)
	require.Equal(t, float64(0), testutil.ToFloat64(s.metrics.checkpoints), "nothing applied without its record")

	// Another log holds the batch: Apply takes it despite the failed write.
	ts.wal = brokenWAL(t)
	held := genObs(3, 25, seriesB, seriesC)
	p, err = s.Prepare(ctx, testTenant, batchOf(held))
	require.NoError(t, err)
	require.Error(t, p.Apply())
	ts.wal = good
	now = now.Add(time.Second)
	require.NoError(t, s.Flush(ctx, now), "the flush checkpoints the tenant")
	requireAggregates(t, s, testTenant, now.UnixMilli(), append(first, held...))
	require.Equal(t, float64(1), testutil.ToFloat64(s.metrics.checkpoints), "long before CheckpointInterval")
	require.NoError(t, s.Flush(ctx, now.Add(time.Second)))
	require.Equal(t, float64(1), testutil.ToFloat64(s.metrics.checkpoints), "once")

	crash(t, s)
	s2, _ := openStore(t, opts)
	now = now.Add(time.Minute)
	require.NoError(t, s2.Flush(ctx, now))
	requireAggregates(t, s2, testTenant, now.UnixMilli(), append(first, held...))
}

// TestSeriesOfAFailedApplyAreLoggedLater: the new series of a batch
// applied without its WAL record are logged with the next record, so the
// batches after it on those series survive a crash before any checkpoint
// (the applied batch itself is durable from the next flush's checkpoint);
// and logged again after a checkpoint, they keep what it holds.
func TestSeriesOfAFailedApplyAreLoggedLater(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, _ := openStore(t, opts)
	ctx := context.Background()
	first := genObs(1, 30, seriesA)
	appendObs(t, s, first)
	ts, err := s.tenant(testTenant)
	require.NoError(t, err)
	good := ts.wal

	ts.wal = brokenWAL(t)
	held := genObs(3, 25, seriesB)
	p, err := s.Prepare(ctx, testTenant, batchOf(held))
	require.NoError(t, err)
	require.Error(t, p.Apply())
	ts.wal = good
	after := genObs(4, 20, seriesB)
	appendObs(t, s, after)

	crash(t, s)
	s2, _ := openStore(t, opts)
	now := base.Add(time.Minute)
	require.NoError(t, s2.Flush(ctx, now))
	requireAggregates(t, s2, testTenant, now.UnixMilli(), append(first, after...))

	// Again, with a checkpoint between the failed write and the next.
	ts2, err := s2.tenant(testTenant)
	require.NoError(t, err)
	good = ts2.wal
	ts2.wal = brokenWAL(t)
	held2 := genObs(5, 15, seriesC)
	p, err = s2.Prepare(ctx, testTenant, batchOf(held2))
	require.NoError(t, err)
	require.Error(t, p.Apply())
	ts2.wal = good
	now = now.Add(time.Second)
	require.NoError(t, s2.Flush(ctx, now), "the flush checkpoints the tenant")
	more := genObs(6, 10, seriesC)
	appendObs(t, s2, more)
	crash(t, s2)
	s3, _ := openStore(t, opts)
	now = now.Add(time.Minute)
	require.NoError(t, s3.Flush(ctx, now))
	requireAggregates(t, s3, testTenant, now.UnixMilli(), append(append(append(first, after...), held2...), more...))
}
