package query

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/query/window"
	"github.com/hopwatch/hopwatch/storage/raw"
	rawenc "github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// MetricRaw is the name under which PromQL sees the raw tier: one sample
// per span, its duration in seconds, at the span's start (truncated to the
// millisecond), with the span metrics' labels.
const MetricRaw = "hopwatch_latency_raw_seconds"

// RawQueryable is the raw tier of one tenant (a *raw.DB satisfies it).
type RawQueryable interface {
	// SelectPinned returns the series matching ms with samples in
	// [mint, maxt] (ns); their chunks stay valid until release is called.
	SelectPinned(mint, maxt int64, ms ...*labels.Matcher) (series []raw.Series, release func())
	// LabelSets returns the label sets of those series without their data.
	LabelSets(mint, maxt int64, ms ...*labels.Matcher) []labels.Labels
	// Bounds is the histogram schema the chunks were written with.
	Bounds() *nativehist.Bounds
}

// RawStorage gives the raw tier of a tenant.
type RawStorage interface {
	// RawTenant returns the tenant's raw tier, or nil when it has none.
	RawTenant(id string) RawQueryable
}

// RawStorageFunc adapts a function to RawStorage.
type RawStorageFunc func(id string) RawQueryable

// RawTenant calls f.
func (f RawStorageFunc) RawTenant(id string) RawQueryable { return f(id) }

var _ RawQueryable = (*raw.DB)(nil)

// rawMatchers splits ms into whether they can select MetricRaw and the
// matchers on the other labels.
func rawMatchers(ms []*labels.Matcher) (bool, []*labels.Matcher) {
	rest := make([]*labels.Matcher, 0, len(ms))
	for _, m := range ms {
		if m.Name == model.MetricNameLabel {
			if !m.Matches(MetricRaw) {
				return false, nil
			}
			continue
		}
		rest = append(rest, m)
	}
	return true, rest
}

// msToNs converts a millisecond query bound to the first (mint) or last
// (maxt) nanosecond it covers, saturating.
func msToNs(ms int64, last bool) int64 {
	switch {
	case ms >= math.MaxInt64/1_000_000:
		return math.MaxInt64
	case ms <= math.MinInt64/1_000_000:
		return math.MinInt64
	case last:
		return ms*1e6 + 999_999
	}
	return ms * 1e6
}

// rawQuerier shows the raw tier to PromQL as MetricRaw.
type rawQuerier struct {
	db         RawQueryable
	mint, maxt int64 // ns
	maxSamples int   // bound on the samples one Select decodes (0: none)
	refused    *prometheus.CounterVec
}

func (q *rawQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	ok, rest := rawMatchers(ms)
	if !ok {
		return storage.EmptySeriesSet()
	}
	mint, maxt := q.mint, q.maxt
	if hints != nil {
		mint, maxt = max(mint, msToNs(hints.Start, false)), min(maxt, msToNs(hints.End, true))
	}
	if hints != nil && hints.Func == "series" {
		// /api/v1/series wants labels only.
		lsets := q.db.LabelSets(mint, maxt, rest...)
		out := make([]storage.Series, 0, len(lsets))
		for _, l := range lsets {
			out = append(out, &floatSeries{lset: withRawName(l)})
		}
		return &listSeriesSet{series: out}
	}
	// Series are decoded here, not on iteration, so that a corrupt chunk
	// is an error of the select and the sample budget applies up front.
	sel, release := q.db.SelectPinned(mint, maxt, rest...)
	defer release()
	out := make([]storage.Series, 0, len(sel))
	var d rawenc.Decoder
	var buf rawenc.Samples
	var runs []window.Run
	loaded := 0
	for i := range sel {
		if err := ctx.Err(); err != nil {
			return storage.ErrSeriesSet(err)
		}
		runs = AppendRuns(runs[:0], &sel[i], q.db.Bounds(), &d)
		var pts fpoints
		for _, r := range runs {
			buf.Reset()
			if err := r.Load(&buf); err != nil {
				return storage.ErrSeriesSet(fmt.Errorf("hopwatch/query: raw series %s: %w", sel[i].Labels, err))
			}
			for k, t := range buf.T {
				if t >= mint && t <= maxt {
					pts = append(pts, fpoint{t: t, f: float64(buf.Latency[k]) / 1e9})
				}
			}
		}
		loaded += len(pts)
		if q.maxSamples > 0 && loaded > q.maxSamples {
			q.refused.WithLabelValues(reasonSamples).Inc()
			return storage.ErrSeriesSet(fmt.Errorf("%w (raw tier, limit --query.max-samples=%d)", window.ErrTooManySamples, q.maxSamples))
		}
		// Every Select of a query counts against the same budget.
		if err := queryLimitsFrom(ctx).addSamples(len(pts)); err != nil {
			return storage.ErrSeriesSet(err)
		}
		// Chunks of a series may overlap in time; PromQL wants time order.
		// The order is by ns; the timestamps PromQL sees are the span
		// start truncated to the millisecond, so several may be equal.
		slices.SortStableFunc(pts, func(a, b fpoint) int { return cmp.Compare(a.t, b.t) })
		for k := range pts {
			pts[k].t = floorMs(pts[k].t)
		}
		out = append(out, &floatSeries{lset: withRawName(sel[i].Labels), pts: pts})
	}
	return &listSeriesSet{series: out, ctx: ctx}
}

func withRawName(l labels.Labels) labels.Labels {
	b := labels.NewBuilder(l)
	b.Set(model.MetricNameLabel, MetricRaw)
	return b.Labels()
}

func (q *rawQuerier) LabelValues(_ context.Context, name string, _ *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	ok, rest := rawMatchers(ms)
	if !ok {
		return nil, nil, nil
	}
	if name == model.MetricNameLabel {
		if len(q.db.LabelSets(q.mint, q.maxt, rest...)) > 0 {
			return []string{MetricRaw}, nil, nil
		}
		return nil, nil, nil
	}
	var vals []string
	for _, l := range q.db.LabelSets(q.mint, q.maxt, rest...) {
		if v := l.Get(name); v != "" {
			vals = append(vals, v)
		}
	}
	slices.Sort(vals)
	return slices.Compact(vals), nil, nil
}

func (q *rawQuerier) LabelNames(_ context.Context, _ *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	ok, rest := rawMatchers(ms)
	if !ok {
		return nil, nil, nil
	}
	var names []string
	lsets := q.db.LabelSets(q.mint, q.maxt, rest...)
	for _, l := range lsets {
		l.Range(func(lb labels.Label) { names = append(names, lb.Name) })
	}
	if len(lsets) > 0 {
		names = append(names, model.MetricNameLabel)
	}
	slices.Sort(names)
	return slices.Compact(names), nil, nil
}

func (*rawQuerier) Close() error { return nil }

type listSeriesSet struct {
	ctx    context.Context
	series []storage.Series
	i      int
	err    error
}

func (s *listSeriesSet) Next() bool {
	if s.i >= len(s.series) || s.err != nil {
		return false
	}
	if s.ctx != nil {
		if s.err = s.ctx.Err(); s.err != nil {
			return false
		}
	}
	s.i++
	return true
}
func (s *listSeriesSet) At() storage.Series                { return s.series[s.i-1] }
func (s *listSeriesSet) Err() error                        { return s.err }
func (s *listSeriesSet) Warnings() annotations.Annotations { return nil }

// fpoint is a float sample; fpoints hands out pointers to its elements,
// so iterating allocates nothing per sample.
type fpoint struct {
	t int64
	f float64
}

func (p *fpoint) T() int64                    { return p.t }
func (*fpoint) ST() int64                     { return 0 }
func (p *fpoint) F() float64                  { return p.f }
func (*fpoint) H() *histogram.Histogram       { return nil }
func (*fpoint) FH() *histogram.FloatHistogram { return nil }
func (*fpoint) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (p *fpoint) Copy() chunks.Sample         { c := *p; return &c }

type fpoints []fpoint

func (s fpoints) Get(i int) chunks.Sample { return &s[i] }
func (s fpoints) Len() int                { return len(s) }

func floorMs(ns int64) int64 {
	ms := ns / 1e6
	if ns < 0 && ns%1e6 != 0 {
		ms--
	}
	return ms
}

// AppendRuns appends a raw series as window runs: its chunks, decoded on
// demand by d without their exemplar rows, and its open samples. The runs
// share d, so they must be loaded by one goroutine.
func AppendRuns(runs []window.Run, sr *raw.Series, bounds *nativehist.Bounds, d *rawenc.Decoder) []window.Run {
	for _, c := range sr.Chunks {
		minT, maxT, _, err := rawenc.ReadTimeRange(c)
		if err != nil {
			runs = append(runs, window.Run{MinT: math.MinInt64, MaxT: math.MaxInt64, Load: func(*rawenc.Samples) error { return err }})
			continue
		}
		runs = append(runs, window.Run{MinT: minT, MaxT: maxT, Load: func(dst *rawenc.Samples) error {
			_, err := d.DecodeValues(c, bounds, dst)
			return err
		}})
	}
	if open := sr.Open; len(open.T) > 0 {
		runs = append(runs, window.Run{MinT: open.T[0], MaxT: open.T[len(open.T)-1], Load: func(dst *rawenc.Samples) error {
			dst.T = append(dst.T, open.T...)
			dst.Latency = append(dst.Latency, open.Latency...)
			if open.Weight != nil {
				dst.Weight = append(dst.Weight, open.Weight...)
			} else {
				dst.Weight = nil
			}
			return nil
		}})
	}
	return runs
}
