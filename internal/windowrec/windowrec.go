// Package windowrec records the raw tier's sliding-window quantiles as
// series of the aggregate tier: hopwatch_window_latency_seconds{quantile,
// window} per raw series, exact, at every flush interval, for windows the
// tenant's watermark has declared complete. Dashboards and alert rules then
// read a cheap float series instead of re-reading raw samples.
package windowrec

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"

	"github.com/hopwatch/hopwatch/query"
	"github.com/hopwatch/hopwatch/query/window"
	rawenc "github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// Metric is the name of the recorded series.
const Metric = "hopwatch_window_latency_seconds"

// Options configures the recorder.
type Options struct {
	// Interval is the step between recorded points (the flush interval).
	Interval time.Duration
	// Windows are the window lengths recorded; each gets window="<d>".
	Windows []time.Duration
	// Quantiles are recorded as quantile="<q>".
	Quantiles []float64
	// MaxCatchUp bounds the history computed in one round after the
	// watermark stood still or the recorder was stopped: older steps are
	// skipped, not computed.
	MaxCatchUp time.Duration
}

// DefaultOptions records P50/P90/P99 over 1m every 5s.
func DefaultOptions() Options {
	return Options{
		Interval:   5 * time.Second,
		Windows:    []time.Duration{time.Minute},
		Quantiles:  []float64{0.5, 0.9, 0.99},
		MaxCatchUp: 10 * time.Minute,
	}
}

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	if o.Interval < time.Millisecond {
		errs = append(errs, fmt.Errorf("invalid Interval %s: must be at least 1ms", o.Interval))
	}
	for _, w := range o.Windows {
		if w < time.Millisecond {
			errs = append(errs, fmt.Errorf("invalid window %s: must be at least 1ms", w))
		}
	}
	for _, q := range o.Quantiles {
		if math.IsNaN(q) || q < 0 || q > 1 {
			errs = append(errs, fmt.Errorf("invalid quantile %v: must be in [0, 1]", q))
		}
	}
	if o.MaxCatchUp < o.Interval {
		errs = append(errs, fmt.Errorf("invalid MaxCatchUp %s: must be at least Interval (%s)", o.MaxCatchUp, o.Interval))
	}
	return errors.Join(errs...)
}

// Source is the raw tier, by tenant.
type Source interface {
	Tenants() []string
	RawTenant(id string) query.RawQueryable
}

// Sink gives the aggregate tier of a tenant to append to (nil: none yet).
type Sink func(tenant string) storage.Appendable

// WatermarkFunc returns a tenant's watermark at now (Unix ns); ok is false
// for a tenant that never wrote.
type WatermarkFunc func(tenant string, now int64) (mark int64, ok bool)

// Recorder computes and appends the window series, at each flush (Record)
// and before each rule evaluation of a tenant (RecordTenant); the two
// serialise on the recorder's lock.
type Recorder struct {
	opts    Options
	src     Source
	sink    Sink
	marks   WatermarkFunc
	logger  *slog.Logger
	metrics *metrics

	mtx     sync.Mutex
	tenants map[string]*tenantState
	comp    window.Computer
	dec     rawenc.Decoder
	runs    []window.Run
	vals    []float64
	counts  []uint64
}

type tenantState struct {
	last int64 // the last step recorded, ms; 0 before the first
	// live holds the series that had a value at the last step (by window
	// and labels), so that one whose window empties gets a staleness
	// marker.
	live map[string]labels.Labels
}

type metrics struct {
	duration prometheus.Histogram
	samples  prometheus.Counter
	failures prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_window_recorder_duration_seconds",
			Help:                        "Time to compute and append one round of window quantile series.",
			Buckets:                     prometheus.DefBuckets,
			NativeHistogramBucketFactor: 1.1,
		}),
		samples: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_window_recorder_samples_total",
			Help: "Samples (staleness markers included) appended to hopwatch_window_latency_seconds.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_window_recorder_failures_total",
			Help: "Tenant rounds of the window recorder that failed (see the log).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.duration, m.samples, m.failures)
	}
	return m
}

// New builds a recorder.
func New(opts Options, src Source, sink Sink, marks WatermarkFunc, reg prometheus.Registerer, logger *slog.Logger) (*Recorder, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/windowrec: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Recorder{
		opts: opts, src: src, sink: sink, marks: marks, logger: logger,
		metrics: newMetrics(reg), tenants: map[string]*tenantState{},
	}, nil
}

// Record computes, for every tenant, the steps since the last round up to
// min(now, watermark), aligned to the interval, and appends them.
func (r *Recorder) Record(ctx context.Context, now time.Time) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	began := time.Now()
	for _, id := range r.src.Tenants() {
		if err := r.recordTenant(ctx, id, now.UnixNano()); err != nil {
			r.metrics.failures.Inc()
			r.logger.Error("recording window quantiles failed", "tenant", id, "err", err)
		}
	}
	r.metrics.duration.Observe(time.Since(began).Seconds())
}

// RecordTenant is Record for one tenant: the rule evaluation of a tenant
// calls it so that the steps up to its evaluation time are there, whatever
// the phase of the flush loop.
func (r *Recorder) RecordTenant(ctx context.Context, id string, now time.Time) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	began := time.Now()
	if err := r.recordTenant(ctx, id, now.UnixNano()); err != nil {
		r.metrics.failures.Inc()
		r.logger.Error("recording window quantiles failed", "tenant", id, "err", err)
	}
	r.metrics.duration.Observe(time.Since(began).Seconds())
}

// DeleteTenant forgets a tenant's state.
func (r *Recorder) DeleteTenant(id string) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	delete(r.tenants, id)
}

func (r *Recorder) recordTenant(ctx context.Context, id string, now int64) error {
	db := r.src.RawTenant(id)
	app := r.sink(id)
	if db == nil || app == nil {
		return nil
	}
	upTo := now
	if mark, ok := r.marks(id, now); ok {
		upTo = min(upTo, mark)
	}
	step := r.opts.Interval.Milliseconds()
	end := floorDiv(upTo/1e6, step) * step
	st := r.tenants[id]
	if st == nil {
		st = &tenantState{live: map[string]labels.Labels{}}
		r.tenants[id] = st
	}
	start := end
	if st.last != 0 {
		start = st.last + step
	}
	if oldest := end - floorDiv(r.opts.MaxCatchUp.Milliseconds(), step)*step; start < oldest {
		start = oldest
	}
	if start > end {
		return nil
	}

	a := app.Appender(ctx)
	appended := 0
	// The round changes which series are live as it writes their samples
	// and staleness markers: a round that is not committed must not, or
	// the next round, which writes the same steps again, would leave out
	// the markers of series this one took for ended.
	live := maps.Clone(st.live)
	for _, w := range r.opts.Windows {
		n, err := r.recordWindow(ctx, db, a, st, w, start, end)
		appended += n
		if err != nil {
			_ = a.Rollback()
			st.live = live
			return err
		}
	}
	if err := a.Commit(); err != nil {
		st.live = live
		return err
	}
	r.metrics.samples.Add(float64(appended))
	st.last = end
	return nil
}

// recordWindow appends one window's quantiles at the steps start..end (ms).
func (r *Recorder) recordWindow(ctx context.Context, db query.RawQueryable, a storage.Appender, st *tenantState, w time.Duration, start, end int64) (int, error) {
	step := r.opts.Interval.Milliseconds()
	// The windows of quantile_over_time at the same times: a sample is in
	// the window of t when its start, truncated to the ms, is in (t−w, t].
	rg := window.Range{
		Start:  start*1e6 + 999_999,
		End:    end*1e6 + 999_999,
		Step:   step * 1e6,
		Window: w.Milliseconds() * 1e6,
	}
	wlabel := model.Duration(w).String()
	nq := len(r.opts.Quantiles)
	appended := 0
	stale := math.Float64frombits(value.StaleNaN)
	seen := map[string]bool{}
	sel, release := db.SelectPinned(rg.Start-rg.Window+1, rg.End)
	defer release()
	for _, sr := range sel {
		r.runs = query.AppendRuns(r.runs[:0], &sr, db.Bounds(), &r.dec)
		var err error
		r.vals, r.counts, err = r.comp.Quantiles(ctx, rg, r.opts.Quantiles, r.runs, r.vals[:0], r.counts[:0])
		if err != nil {
			return appended, err
		}
		lsets := make([]labels.Labels, nq)
		b := labels.NewBuilder(sr.Labels)
		b.Set(model.MetricNameLabel, Metric)
		b.Set("window", wlabel)
		for j, q := range r.opts.Quantiles {
			b.Set("quantile", strconv.FormatFloat(q, 'f', -1, 64))
			lsets[j] = b.Labels()
		}
		key := wlabel + "\xff" + sr.Labels.String()
		seen[key] = true
		_, live := st.live[key]
		for k, n := range r.counts {
			t := start + int64(k)*step
			if n == 0 && !live {
				continue
			}
			for j := range nq {
				v := stale
				if n > 0 {
					v = r.vals[k*nq+j]
				}
				if _, err := a.Append(0, lsets[j], t, v); err != nil {
					return appended, fmt.Errorf("append %s at %d: %w", lsets[j], t, err)
				}
				appended++
			}
			live = n > 0
		}
		if live {
			st.live[key] = sr.Labels
		} else {
			delete(st.live, key)
		}
	}
	// Series with no sample left in range at all: mark them stale once.
	for key, lset := range st.live {
		if seen[key] || !strings.HasPrefix(key, wlabel+"\xff") {
			continue
		}
		delete(st.live, key)
		b := labels.NewBuilder(lset)
		b.Set(model.MetricNameLabel, Metric)
		b.Set("window", wlabel)
		for _, q := range r.opts.Quantiles {
			b.Set("quantile", strconv.FormatFloat(q, 'f', -1, 64))
			if _, err := a.Append(0, b.Labels(), start, stale); err != nil {
				return appended, err
			}
			appended++
		}
	}
	return appended, nil
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && (a < 0) != (b < 0) {
		q--
	}
	return q
}
