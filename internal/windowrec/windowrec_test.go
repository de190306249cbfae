package windowrec

import (
	"context"
	"errors"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/hopwatch/hopwatch/query"
	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type oneTenant struct{ db *raw.DB }

func (o oneTenant) Tenants() []string                   { return []string{"t"} }
func (o oneTenant) RawTenant(string) query.RawQueryable { return o.db }

type fixture struct {
	raw  *raw.DB
	tsdb *tsdb.DB
	mark int64
	rec  *Recorder
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	ropts := raw.DefaultOptions()
	ropts.Dir = t.TempDir()
	rdb, err := raw.Open(ropts, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, rdb.Close()) })
	tdb, err := tsdb.Open(t.TempDir(), nil, nil, tsdb.DefaultOptions(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, tdb.Close()) })
	f := &fixture{raw: rdb, tsdb: tdb, mark: math.MaxInt64}
	f.rec, err = New(opts, oneTenant{rdb}, func(string) storage.Appendable { return tdb },
		func(string, int64) (int64, bool) { return f.mark, true }, nil, nil)
	require.NoError(t, err)
	return f
}

// appendSpans adds spans of service svc with the given start times (ns)
// and durations (ms).
func (f *fixture) appendSpans(t *testing.T, svc string, starts []int64, durMs []int64) {
	t.Helper()
	b := &sample.Batch{Series: []sample.Series{{Family: sample.FamilySpan, Key: svc, Labels: labels.FromStrings("service", svc)}}}
	for i, s := range starts {
		b.Samples = append(b.Samples, sample.Sample{Start: s, Duration: durMs[i] * 1e6})
	}
	_, err := f.raw.Append(b)
	require.NoError(t, err)
}

type point struct {
	t int64
	v float64
}

func (f *fixture) series(t *testing.T, ms ...*labels.Matcher) map[string][]point {
	t.Helper()
	q, err := f.tsdb.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer q.Close()
	out := map[string][]point{}
	ss := q.Select(context.Background(), true, nil, append(ms, labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, Metric))...)
	for ss.Next() {
		s := ss.At()
		it := s.Iterator(nil)
		for it.Next() == chunkenc.ValFloat {
			ts, v := it.At()
			out[s.Labels().String()] = append(out[s.Labels().String()], point{ts, v})
		}
	}
	require.NoError(t, ss.Err())
	return out
}

func TestRecordsExactQuantilesUpToTheWatermark(t *testing.T) {
	opts := DefaultOptions()
	opts.Interval = 10 * time.Second
	opts.Windows = []time.Duration{30 * time.Second}
	opts.Quantiles = []float64{0.5, 1}
	f := newFixture(t, opts)
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	sec := int64(time.Second)
	// One span a second for 60 s with durations 1..60 ms.
	var starts, durs []int64
	for i := range int64(60) {
		starts = append(starts, t0+i*sec+1) // 1 ns past the second
		durs = append(durs, i+1)
	}
	f.appendSpans(t, "api", starts, durs)

	// The watermark is at t0+35s: steps up to t0+30s are recorded, the
	// first round records only its last step.
	f.mark = t0 + 35*sec
	f.rec.Record(context.Background(), time.Unix(0, t0+100*sec))
	got := f.series(t, labels.MustNewMatcher(labels.MatchEqual, "quantile", "1"))
	require.Len(t, got, 1)
	// The window of t0+30s holds the spans whose start, truncated to the
	// ms, is in (t0, t0+30s]: seconds 1..30, durations 2..31 ms.
	require.Equal(t, []point{{t: (t0 + 30*sec) / 1e6, v: 0.031}}, got[`{__name__="hopwatch_window_latency_seconds", quantile="1", service="api", window="30s"}`])

	// The watermark moves: the next round records every step since.
	f.mark = t0 + 61*sec
	f.rec.Record(context.Background(), time.Unix(0, t0+100*sec))
	got = f.series(t, labels.MustNewMatcher(labels.MatchEqual, "quantile", "0.5"))
	pts := got[`{__name__="hopwatch_window_latency_seconds", quantile="0.5", service="api", window="30s"}`]
	require.Equal(t, []int64{(t0 + 30*sec) / 1e6, (t0 + 40*sec) / 1e6, (t0 + 50*sec) / 1e6, (t0 + 60*sec) / 1e6}, times(pts))
	// At t0+40s the window holds seconds 11..40: durations 12..41 ms, the
	// median between 26 and 27 ms.
	require.InDelta(t, 0.0265, pts[1].v, 1e-12)

	// The last span started at second 59: the window of t0+90s is the
	// first empty one and gets a staleness marker; later steps nothing.
	f.mark = t0 + 100*sec
	f.rec.Record(context.Background(), time.Unix(0, t0+100*sec))
	pts = f.series(t, labels.MustNewMatcher(labels.MatchEqual, "quantile", "0.5"))[`{__name__="hopwatch_window_latency_seconds", quantile="0.5", service="api", window="30s"}`]
	last := pts[len(pts)-1]
	require.True(t, value.IsStaleNaN(last.v), "last point %v", last)
	require.Equal(t, (t0+90*sec)/1e6, last.t)
	require.Equal(t, (t0+80*sec)/1e6, pts[len(pts)-2].t)
	require.False(t, value.IsStaleNaN(pts[len(pts)-2].v))
}

func TestCatchUpIsBounded(t *testing.T) {
	opts := DefaultOptions()
	opts.Interval = time.Second
	opts.MaxCatchUp = 5 * time.Second
	f := newFixture(t, opts)
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	var starts, durs []int64
	for i := range int64(120) {
		starts = append(starts, t0+i*int64(time.Second)/2)
		durs = append(durs, 3)
	}
	f.appendSpans(t, "db", starts, durs)
	f.rec.Record(context.Background(), time.Unix(0, t0+10*int64(time.Second)))
	f.rec.Record(context.Background(), time.Unix(0, t0+50*int64(time.Second)))
	got := f.series(t, labels.MustNewMatcher(labels.MatchEqual, "quantile", "0.99"))
	require.Len(t, got, 1)
	for _, pts := range got {
		ts := times(pts)
		// The first round's step, then only the last 5 s of the 40 s gap.
		want := []int64{t0/1e6 + 10_000, t0/1e6 + 45_000, t0/1e6 + 46_000, t0/1e6 + 47_000, t0/1e6 + 48_000, t0/1e6 + 49_000, t0/1e6 + 50_000}
		require.Equal(t, want, ts)
	}
}

func TestOptionsValidate(t *testing.T) {
	o := DefaultOptions()
	o.Quantiles = []float64{1.5}
	o.Windows = []time.Duration{0}
	o.MaxCatchUp = time.Millisecond
	err := o.Validate()
	require.ErrorContains(t, err, "quantile 1.5")
	require.ErrorContains(t, err, "window 0s")
	require.ErrorContains(t, err, "MaxCatchUp")
}

func times(pts []point) []int64 {
	out := make([]int64, len(pts))
	for i, p := range pts {
		out[i] = p.t
	}
	return slices.Clip(out)
}

// TestRecordTenantBetweenFlushes: the ruler records a tenant's steps up to
// its evaluation time between two flushes; the flush that follows appends
// only the steps after them, so every step is there once.
func TestRecordTenantBetweenFlushes(t *testing.T) {
	opts := DefaultOptions()
	opts.Interval = time.Second
	f := newFixture(t, opts)
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	sec := int64(time.Second)
	var starts, durs []int64
	for i := range int64(20) {
		starts = append(starts, t0+i*sec/2)
		durs = append(durs, i+1)
	}
	f.appendSpans(t, "api", starts, durs)
	f.rec.Record(context.Background(), time.Unix(0, t0+2*sec+sec/2))
	f.rec.RecordTenant(context.Background(), "t", time.Unix(0, t0+4*sec+sec/3))
	f.rec.RecordTenant(context.Background(), "t", time.Unix(0, t0+4*sec+sec/2)) // nothing new
	f.rec.Record(context.Background(), time.Unix(0, t0+6*sec))
	pts := f.series(t, labels.MustNewMatcher(labels.MatchEqual, "quantile", "0.99"))[`{__name__="hopwatch_window_latency_seconds", quantile="0.99", service="api", window="1m"}`]
	ms := t0 / 1e6
	require.Equal(t, []int64{ms + 2000, ms + 3000, ms + 4000, ms + 5000, ms + 6000}, times(pts))
	// The window of t0+4s holds spans 0..8 (durations 1..9 ms).
	require.InDelta(t, 0.00892, pts[2].v, 1e-12)
}

// failingAppendable hands out appenders whose Commit fails (rolling back)
// while fail is set.
type failingAppendable struct {
	storage.Appendable
	fail *bool
}

func (f failingAppendable) Appender(ctx context.Context) storage.Appender {
	return failingAppender{f.Appendable.Appender(ctx), *f.fail}
}

type failingAppender struct {
	storage.Appender
	fail bool
}

func (a failingAppender) Commit() error {
	if a.fail {
		_ = a.Rollback()
		return errors.New("disk full")
	}
	return a.Appender.Commit()
}

// TestFailedCommitIsRecordedAgain: a round whose commit fails leaves no
// trace in the recorder's state, so the next round writes everything that
// round would have, the staleness marker of a series that ended included.
func TestFailedCommitIsRecordedAgain(t *testing.T) {
	opts := DefaultOptions()
	opts.Interval = 10 * time.Second
	opts.Windows = []time.Duration{30 * time.Second}
	opts.Quantiles = []float64{0.5}
	f := newFixture(t, opts)
	fail := false
	sink := failingAppendable{f.tsdb, &fail}
	var err error
	f.rec, err = New(opts, oneTenant{f.raw}, func(string) storage.Appendable { return sink },
		func(string, int64) (int64, bool) { return f.mark, true }, nil, nil)
	require.NoError(t, err)
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	sec := int64(time.Second)
	var starts, durs []int64
	for i := range int64(20) {
		starts = append(starts, t0+i*sec+1)
		durs = append(durs, i+1)
	}
	f.appendSpans(t, "api", starts, durs)
	now := time.Unix(0, t0+100*sec)
	for _, mark := range []int64{30, 40} {
		f.mark = t0 + mark*sec
		f.rec.Record(context.Background(), now)
	}

	// The series ends (its last span started at second 19): the window of
	// t0+50s is empty and takes a staleness marker, in a failing round.
	f.mark = t0 + 50*sec
	fail = true
	f.rec.Record(context.Background(), now)
	fail = false
	f.rec.Record(context.Background(), now)
	pts := f.series(t)[`{__name__="hopwatch_window_latency_seconds", quantile="0.5", service="api", window="30s"}`]
	require.Equal(t, []int64{(t0 + 30*sec) / 1e6, (t0 + 40*sec) / 1e6, (t0 + 50*sec) / 1e6}, times(pts))
	require.True(t, value.IsStaleNaN(pts[2].v), "the staleness marker is written by the next round")
}
