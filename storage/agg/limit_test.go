package agg

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

// TestMaxSeriesPerTenant: new series beyond the limit are taken out of the
// batch with their samples and counted; known series keep being accepted,
// and what was accepted is aggregated exactly, across a restart.
func TestMaxSeriesPerTenant(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.MaxSeriesPerTenant = 2
	s, _ := openStore(t, opts)

	first := genObs(1, 40, seriesA, seriesB)
	appendObs(t, s, first)

	// seriesC is a third series: refused; A and B go on.
	mixed := genObs(2, 60, seriesC, seriesA, seriesB)
	b := batchOf(mixed)
	for i := range b.Series {
		if labels.Equal(b.Series[i].Labels, seriesC) {
			b.Series[i].Family = sample.FamilyStage // refused samples of other families count too
		}
	}
	wantRefused := 0
	for _, o := range mixed {
		if labels.Equal(o.lset, seriesC) {
			wantRefused++
		}
	}
	require.NoError(t, s.Append(context.Background(), testTenant, b))
	require.Equal(t, sample.Refused{Samples: wantRefused, Spans: 0}, b.Refused)
	require.Len(t, b.Series, 2, "the refused series is taken out of the batch")
	require.Len(t, b.Samples, len(mixed)-wantRefused)
	for _, smp := range b.Samples {
		require.False(t, labels.Equal(b.Series[smp.Series].Labels, seriesC), "a sample of the refused series is left")
	}

	spanC := batchOf(genObs(3, 10, seriesC))
	require.NoError(t, s.Append(context.Background(), testTenant, spanC))
	require.Equal(t, sample.Refused{Samples: 10, Spans: 10}, spanC.Refused)
	require.Empty(t, spanC.Samples)

	// Another tenant has its own budget.
	other := batchOf(genObs(4, 10, seriesC))
	require.NoError(t, s.Append(context.Background(), "team-b", other))
	require.Zero(t, other.Refused.Samples)

	var accepted []obs
	accepted = append(accepted, first...)
	for _, o := range mixed {
		if !labels.Equal(o.lset, seriesC) {
			accepted = append(accepted, o)
		}
	}
	ts := base.UnixMilli()
	require.NoError(t, s.Flush(context.Background(), base))
	requireAggregates(t, s, testTenant, ts, accepted) // and no seriesC at all
}

// TestStreamSeqsSurviveRestart: a streamed batch's seq is logged with its
// samples, so a resend is refused as a duplicate after a crash (WAL replay)
// and after a checkpoint, and applied exactly once.
func TestStreamSeqsSurviveRestart(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, _ := openStore(t, opts)
	ctx := context.Background()
	batch := func(seed int64, seq uint64) *sample.Batch {
		b := batchOf(genObs(seed, 20, seriesA))
		b.Writer, b.Seq = "loader", seq
		return b
	}
	require.NoError(t, s.Append(ctx, testTenant, batch(1, 1)))
	require.NoError(t, s.Append(ctx, testTenant, batch(2, 2)))
	require.ErrorIs(t, s.Append(ctx, testTenant, batch(2, 2)), sample.ErrDuplicate)
	other := batch(3, 1)
	other.Writer = "another"
	require.NoError(t, s.Append(ctx, testTenant, other), "seqs are per writer")

	crash(t, s)
	s, _ = openStore(t, opts)
	require.ErrorIs(t, s.Append(ctx, testTenant, batch(2, 2)), sample.ErrDuplicate, "after WAL replay")
	require.NoError(t, s.Append(ctx, testTenant, batch(4, 3)))
	ts, err := s.tenant(testTenant)
	require.NoError(t, err)
	require.NoError(t, ts.checkpoint(base))
	require.NoError(t, s.Close())

	s, _ = openStore(t, opts)
	require.ErrorIs(t, s.Append(ctx, testTenant, batch(4, 3)), sample.ErrDuplicate, "after a checkpoint")
	require.ErrorIs(t, s.Append(ctx, testTenant, other), sample.ErrDuplicate)
	var want []obs
	for _, seed := range []int64{1, 2, 3, 4} {
		want = append(want, genObs(seed, 20, seriesA)...)
	}
	require.NoError(t, s.Flush(ctx, base))
	requireAggregates(t, s, testTenant, base.UnixMilli(), want)
}

// TestTenantLimitOverrides: SetTenantLimits replaces a tenant's series
// limit on its next batch, for tenants open and not yet open; lowering it
// refuses new series only; dropping the override restores the option.
func TestTenantLimitOverrides(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.MaxSeriesPerTenant = 3
	s, _ := openStore(t, opts)
	ctx := context.Background()
	refused := func(tenantID string, series ...labels.Labels) int {
		t.Helper()
		b := batchOf(genObs(5, 10*len(series), series...))
		require.NoError(t, s.Append(ctx, tenantID, b))
		return b.Refused.Samples
	}

	require.Zero(t, refused(testTenant, seriesA, seriesB))
	require.Equal(t, 3, s.MaxSeries(testTenant))
	require.Equal(t, 3.0, testutil.ToFloat64(s.metrics.seriesLimit.WithLabelValues(testTenant)))

	// Lowered below what the tenant has: its series go on, a new one is refused.
	require.NoError(t, s.SetTenantLimits(map[string]TenantLimits{testTenant: {MaxSeries: 1}, "team-b": {MaxSeries: 1}}))
	require.Equal(t, 1, s.MaxSeries(testTenant))
	require.Equal(t, 1.0, testutil.ToFloat64(s.metrics.seriesLimit.WithLabelValues(testTenant)))
	require.Zero(t, refused(testTenant, seriesA, seriesB))
	require.Equal(t, 10, refused(testTenant, seriesC))

	// A tenant opened after the override starts with it.
	require.Zero(t, refused("team-b", seriesA))
	require.Equal(t, 10, refused("team-b", seriesB))
	require.Equal(t, 1.0, testutil.ToFloat64(s.metrics.seriesLimit.WithLabelValues("team-b")))

	// Raised: the next batch takes the new series.
	require.NoError(t, s.SetTenantLimits(map[string]TenantLimits{testTenant: {MaxSeries: 10}}))
	require.Zero(t, refused(testTenant, seriesC))
	// team-b's override is gone: the option applies again.
	require.Equal(t, 3, s.MaxSeries("team-b"))
	require.Zero(t, refused("team-b", seriesB))

	// An invalid override is refused by name and leaves the option.
	err := s.SetTenantLimits(map[string]TenantLimits{"team-c": {MaxSeries: -1}, testTenant: {MaxSeries: 1}})
	require.ErrorContains(t, err, "team-c")
	require.Equal(t, 3, s.MaxSeries("team-c"))
	require.Equal(t, 1, s.MaxSeries(testTenant))

	// Overrides outlive a restart only through whoever sets them: a
	// reopened store starts from the options.
	require.NoError(t, s.Close())
	s, _ = openStore(t, opts)
	require.Equal(t, 3, s.MaxSeries(testTenant))
}

// TestTenantLimitsConcurrent: limits change while batches append (run with
// -race): the per-batch read is an atomic load, never torn.
func TestTenantLimitsConcurrent(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, _ := openStore(t, opts)
	ctx := context.Background()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 200 {
			_ = s.SetTenantLimits(map[string]TenantLimits{testTenant: {MaxSeries: 1 + i%3}})
		}
	}()
	for i := range 50 {
		require.NoError(t, s.Append(ctx, testTenant, batchOf(genObs(int64(i), 5, seriesA, seriesB, seriesC))))
	}
	<-done
}
