package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	promchunk "github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/query"
	"github.com/hopwatch/hopwatch/query/window"
	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

// The window quantile benchmark has two parts.
//
// Speed: D1 dealt over some series is put in hopwatch's raw tier and in
// Prometheus's storage, and quantile_over_time over the whole range is
// timed on both: Prometheus's engine on its own storage, hopwatch's HTTP API
// (the exact path) and query/window directly. Both stores hold the same
// samples at the same millisecond timestamps, so the answers must be equal
// to the bit; a difference fails the run.
//
// Sketch: each dataset is also aggregated as the aggregate tier does it,
// into cumulative native histograms per series written at every flush, and
// histogram_quantile(q, rate(h[window])) through Prometheus's engine is
// compared with the exact quantile of the samples those histograms hold.

// QuantileOptions configures the window quantile benchmark.
type QuantileOptions struct {
	// Duration is how much data each dataset holds.
	Duration time.Duration
	// Series lists the series counts of the speed part: D1 is dealt over
	// that many series (seeded, uniformly), one case per entry.
	Series []int
	// Runs is the number of timing repetitions; medians are reported.
	Runs int
	Seed uint64
	// Step and Window are the queries' step and range.
	Step, Window time.Duration
	Quantiles    []float64
	// FlushInterval is the aggregate tier's flush interval, at which the
	// sketch part writes its histograms. It must divide Step.
	FlushInterval time.Duration
	// SketchSeries lists the series counts each sketch dataset is dealt
	// over: with many, a window holds few samples per series, as in
	// production; with one, it holds so many that the error left is the
	// histogram's resolution.
	SketchSeries []int
	// Schemas are the native histogram schemas the sketch part measures.
	Schemas []int32
	// Speed and Sketch select the parts that run.
	Speed, Sketch bool
	// Dir is where the stores' temporary directory is made; "" is the
	// system's temporary directory.
	Dir string
	// CPUProfile, when set, receives a CPU profile of each speed case's
	// timed queries, in CPUProfile.<series>; samples carry a "side" label
	// (prometheus, hopwatch-api, hopwatch-window) for pprof -tagfocus.
	CPUProfile string
}

// DefaultQuantileOptions measure an hour of data at step 10 s and window
// 1 m, with the histograms flushed at the server's default interval.
func DefaultQuantileOptions() QuantileOptions {
	return QuantileOptions{
		Duration:      time.Hour,
		Series:        []int{100, 1},
		Runs:          3,
		Seed:          1,
		Step:          10 * time.Second,
		Window:        time.Minute,
		Quantiles:     []float64{0.5, 0.9, 0.99},
		FlushInterval: server.DefaultConfig().FlushInterval,
		SketchSeries:  []int{100, 1},
		Schemas:       []int32{3, 4, 5, 6, 7, 8},
		Speed:         true,
		Sketch:        true,
	}
}

// Validate reports every problem with the options, naming the field.
func (o QuantileOptions) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	ms := func(name string, d time.Duration) {
		if d <= 0 || d%time.Millisecond != 0 {
			add("%s %s must be a positive whole number of milliseconds", name, d)
		}
	}
	ms("Step", o.Step)
	ms("Window", o.Window)
	ms("FlushInterval", o.FlushInterval)
	if o.Duration < o.Window+o.Step {
		add("Duration %s must be at least Window + Step (%s)", o.Duration, o.Window+o.Step)
	}
	if o.Runs < 1 {
		add("Runs %d must be positive", o.Runs)
	}
	if o.Speed && len(o.Series) == 0 {
		add("Series must list at least one series count")
	}
	for _, n := range o.Series {
		if n < 1 || n > 1<<20 {
			add("Series: %d outside [1, %d]", n, 1<<20)
		}
	}
	if len(o.Quantiles) == 0 {
		add("Quantiles must not be empty")
	}
	for _, q := range o.Quantiles {
		if !(q >= 0 && q <= 1) {
			add("Quantiles: %g outside [0, 1]", q)
		}
	}
	if o.Sketch {
		if o.FlushInterval > 0 && o.Step%o.FlushInterval != 0 {
			add("Step %s must be a multiple of FlushInterval %s, so that steps fall on flushes", o.Step, o.FlushInterval)
		}
		if o.Window <= o.FlushInterval {
			add("Window %s must be longer than FlushInterval %s: rate needs two flushes in it", o.Window, o.FlushInterval)
		}
		if len(o.SketchSeries) == 0 {
			add("SketchSeries must list at least one series count")
		}
		for _, n := range o.SketchSeries {
			if n < 1 || n > 1<<20 {
				add("SketchSeries: %d outside [1, %d]", n, 1<<20)
			}
		}
		if len(o.Schemas) == 0 {
			add("Schemas must not be empty")
		}
		for _, s := range o.Schemas {
			if s < nativehist.MinSchema || s > nativehist.MaxSchema {
				add("Schemas: %d outside [%d, %d]", s, nativehist.MinSchema, nativehist.MaxSchema)
			}
		}
	}
	return errors.Join(errs...)
}

// Timing is the median of one measured query over the runs.
type Timing struct {
	Seconds float64
	// PeakHeap is the highest heap (live and not yet collected objects)
	// seen during the query above the heap just before it, after a GC.
	PeakHeap uint64
	// Allocated is the bytes the query allocated on the heap.
	Allocated uint64
}

// QuantileSpeed is one case of the speed part.
type QuantileSpeed struct {
	Series  int
	Samples int
	// Bumped counts the samples moved to the next free millisecond of
	// their series so that a TSDB can hold them.
	Bumped int
	// Dropped counts the samples left out of both stores because
	// Prometheus's engine would not read them (several samples at a
	// step's millisecond); Samples does not include them.
	Dropped int
	// PromStore says what Prometheus's engine read: "tsdb" (one block) or
	// "memory" (a storage.Queryable over decoded samples, for series with
	// several samples per millisecond).
	PromStore string
	// RawBlockSamples and RawHeadSamples say where the raw tier held the
	// samples when queried.
	RawBlockSamples, RawHeadSamples int
	RawBlocks                       int
	// Per quantile: Prometheus's engine, hopwatch's HTTP API (exact path)
	// and query/window directly; WindowAll computes every quantile in one
	// pass.
	Prom, API, Window []Timing
	WindowAll         Timing
}

// QuantileSketch is the sketch path's relative error for one dataset,
// schema and quantile, over every series and step.
type QuantileSketch struct {
	Dataset string
	Series  int
	Schema  int32
	Q       float64
	// Buckets is the mean number of populated buckets of a series'
	// cumulative histogram at the end of the data.
	Buckets float64
	// Median, P99 and Max relative error against the exact quantile of
	// the samples the rate covers (the flush-aligned window).
	Median, P99, Max float64
	// NominalMedian and NominalP99 are against the exact quantile of the
	// full window (t−Window, t] instead.
	NominalMedian, NominalP99 float64
	Points                    int
}

// QuantileResult is what one run of the benchmark measured.
type QuantileResult struct {
	Speed  []QuantileSpeed
	Sketch []QuantileSketch
	// Smallest holds, per dataset, series count and quantile of the
	// sketch part, the smallest schemas meeting 1%.
	Smallest []QuantileSchemaPick
}

// QuantileSchemaPick is the smallest measured schema whose p99 (max)
// relative error is at most 1% for one dataset, series count and quantile;
// MaxSchema+1 where none is.
type QuantileSchemaPick struct {
	Dataset      string
	Series       int
	Q            float64
	ByP99, ByMax int32
}

// epoch is where storage/raw/dataset's datasets start.
const epoch = int64(1_790_000_000) * int64(time.Second)

// rawMetric is the name under which PromQL sees the raw tier, and the
// name the Prometheus side stores the same samples under.
const rawMetric = query.MetricRaw

// sketchMetric names the native histograms of the sketch part.
const sketchMetric = "hopwatch_latency_seconds"

// Quantile runs the benchmark and writes Markdown tables to w; progress
// goes to logger.
func Quantile(ctx context.Context, w io.Writer, o QuantileOptions, logger *slog.Logger) (QuantileResult, error) {
	var res QuantileResult
	if err := o.Validate(); err != nil {
		return res, fmt.Errorf("bench quantile: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	dir, err := os.MkdirTemp(o.Dir, "hopwatch-bench-quantile-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	if o.Speed {
		for _, n := range o.Series {
			logger.Info("speed case", "series", n)
			sc, err := quantileSpeed(ctx, o, n, filepath.Join(dir, fmt.Sprintf("speed-%d", n)), logger)
			if err != nil {
				return res, fmt.Errorf("bench quantile: %d series: %w", n, err)
			}
			res.Speed = append(res.Speed, sc)
		}
	}
	if o.Sketch {
		for _, name := range []string{string(dataset.D1), string(dataset.D3), paretoName} {
			ds, err := generate(dataset.Name(name), o.Duration, o.Seed)
			if err != nil {
				return res, err
			}
			for _, n := range o.SketchSeries {
				logger.Info("sketch dataset", "dataset", name, "series", n, "samples", len(ds))
				rows, err := quantileSketch(ctx, o, name, ds, n, filepath.Join(dir, fmt.Sprintf("sketch-%s-%d", name, n)))
				if err != nil {
					return res, fmt.Errorf("bench quantile: sketch %s over %d series: %w", name, n, err)
				}
				res.Sketch = append(res.Sketch, rows...)
			}
		}
		res.Smallest = smallestSchemas(o.Schemas, res.Sketch)
	}
	printQuantile(w, o, res)
	return res, nil
}

// paretoName is the heavy-tailed dataset: Poisson arrivals at 10,000/s,
// Pareto latencies with α = 1.5 from 1 ms (median 1.59 ms, p99 21.5 ms,
// infinite variance).
const paretoName = "Pareto1.5"

// generate returns the dataset's samples in [epoch, epoch+d].
func generate(name dataset.Name, d time.Duration, seed uint64) ([]dataset.Sample, error) {
	end := epoch + d.Nanoseconds()
	perSecond := 10_000.0
	if name == dataset.D3 {
		perSecond = 4_160 // 200 ms at 20,000/s, 800 ms at 200/s
	}
	n := int(perSecond*d.Seconds()*1.05) + 1024
	for {
		var ds []dataset.Sample
		var err error
		if name == paretoName {
			ds = pareto(n, seed)
		} else if ds, err = dataset.Generate(name, n, seed); err != nil {
			return nil, err
		}
		if ds[0].T < epoch || ds[0].T > epoch+int64(time.Second) {
			return nil, fmt.Errorf("dataset %s starts at %d, not just after %d", name, ds[0].T, epoch)
		}
		if ds[len(ds)-1].T > end {
			i := sort.Search(len(ds), func(i int) bool { return ds[i].T > end })
			return slices.Clip(ds[:i]), nil
		}
		n *= 2
	}
}

// pareto generates the heavy-tailed dataset.
func pareto(n int, seed uint64) []dataset.Sample {
	rng := rand.New(rand.NewPCG(seed, 0x9a7e70))
	out := make([]dataset.Sample, n)
	t := epoch
	for i := range out {
		t += int64(rng.ExpFloat64() * 1e5)
		u := 1 - rng.Float64() // (0, 1]
		out[i] = dataset.Sample{T: t, Latency: int64(math.Round(1e6 * math.Pow(u, -1/1.5)))}
	}
	return out
}

// deal assigns each sample a series, uniformly at random: each series is
// then a Poisson stream at 1/n of the rate.
func deal(n, series int, seed uint64) []uint32 {
	rng := rand.New(rand.NewPCG(seed, uint64(series)))
	out := make([]uint32, n)
	if series > 1 {
		for i := range out {
			out[i] = uint32(rng.IntN(series))
		}
	}
	return out
}

// serviceLabels returns the label sets {service="svc-NN"} of n series.
func serviceLabels(n int) []labels.Labels {
	width := len(strconv.Itoa(max(n-1, 9)))
	out := make([]labels.Labels, n)
	for i := range out {
		out[i] = labels.FromStrings("service", fmt.Sprintf("svc-%0*d", width, i))
	}
	return out
}

func withName(l labels.Labels, name string) labels.Labels {
	b := labels.NewBuilder(l)
	b.Set(model.MetricNameLabel, name)
	return b.Labels()
}

// maxTSDBRate is the per-series rate (samples/s) up to which the speed part
// stores a series in a TSDB, moving samples that share a millisecond to the
// next free one. Above it so many share one that moving them would shift
// the data in time, so Prometheus's engine reads them from memory instead.
const maxTSDBRate = 1000

// quantileSpeed runs one case of the speed part.
func quantileSpeed(ctx context.Context, o QuantileOptions, n int, dir string, logger *slog.Logger) (QuantileSpeed, error) {
	sc := QuantileSpeed{Series: n, PromStore: "tsdb"}
	ds, err := generate(dataset.D1, o.Duration, o.Seed)
	if err != nil {
		return sc, err
	}
	useTSDB := float64(len(ds))/o.Duration.Seconds()/float64(n) <= maxTSDBRate
	if !useTSDB {
		sc.PromStore = "memory"
	}
	g := grid{
		startMs: epoch / 1e6,
		endMs:   (epoch + o.Duration.Nanoseconds()) / 1e6,
		stepMs:  o.Step.Milliseconds(),
	}
	// The samples Prometheus gets: millisecond timestamps (the span start
	// truncated, as PromQL sees the raw tier), moved forward per series
	// where a TSDB needs it.
	series := deal(len(ds), n, o.Seed)
	ms := make([]int64, len(ds))
	last := make([]int64, n)
	for i := range last {
		last[i] = math.MinInt64
	}
	var drop []bool
	if !useTSDB {
		drop = make([]bool, len(ds))
	}
	for i, s := range ds {
		k, t := series[i], s.T/1e6
		switch {
		case useTSDB && t <= last[k]:
			t = last[k] + 1
			sc.Bumped++
		case !useTSDB && t == last[k] && (t-g.startMs)%g.stepMs == 0:
			// Prometheus's engine (v0.316.0, matrixIterSlice) takes
			// only the first of the samples at a step's millisecond
			// into the step's window, and no later window takes the
			// others: they are left out of both stores.
			drop[i] = true
			sc.Dropped++
		}
		last[k] = max(last[k], t)
		ms[i] = t
	}
	if sc.Dropped > 0 {
		kept := make([]dataset.Sample, 0, len(ds)-sc.Dropped)
		keptSeries := make([]uint32, 0, len(ds)-sc.Dropped)
		keptMs := make([]int64, 0, len(ds)-sc.Dropped)
		for i := range ds {
			if !drop[i] {
				kept, keptSeries, keptMs = append(kept, ds[i]), append(keptSeries, series[i]), append(keptMs, ms[i])
			}
		}
		ds, series, ms = kept, keptSeries, keptMs
	}
	lsets := serviceLabels(n)

	var promQ storage.Queryable
	if useTSDB {
		db, err := promTSDB(ctx, filepath.Join(dir, "prometheus"), ds, series, ms, lsets)
		if err != nil {
			return sc, err
		}
		defer db.Close()
		promQ = db
	} else {
		promQ = newMemQueryable(ds, series, ms, lsets)
	}
	sc.Samples = len(ds)
	logger.Info("prometheus store ready", "store", sc.PromStore, "bumped", sc.Bumped, "dropped", sc.Dropped)

	// The raw tier gets the same samples: at the same milliseconds where a
	// TSDB holds them, else at their nanoseconds (their milliseconds are
	// what PromQL sees, so the windows hold the same samples). The raw
	// tier cannot hold equal timestamps at a chunk boundary in a block:
	// Prometheus's index writer, which its blocks use, refuses chunks that
	// touch.
	at := func(i int) int64 { return ds[i].T }
	if useTSDB {
		at = func(i int) int64 { return ms[i] * 1e6 }
	}
	rdb, err := rawDB(filepath.Join(dir, "raw"), ds, series, at, lsets)
	if err != nil {
		return sc, err
	}
	defer rdb.Close()
	for _, m := range rdb.Blocks() {
		sc.RawBlockSamples += int(m.Stats.Samples)
		sc.RawBlocks++
	}
	sc.RawHeadSamples = len(ds) - sc.RawBlockSamples
	// What follows measures the heap: the stores keep their own copies,
	// so the harness lets its copy of the data go.
	ds, series, ms, at = nil, nil, nil, nil
	logger.Info("raw tier ready", "blocks", sc.RawBlocks, "block_samples", sc.RawBlockSamples, "head_samples", sc.RawHeadSamples)

	qopts := query.DefaultOptions()
	qopts.Timeout = time.Hour
	api, err := query.New(qopts,
		query.StorageFunc(func(string) query.Queryable { return nil }),
		query.RawStorageFunc(func(string) query.RawQueryable { return rdb }),
		func() bool { return true }, nil, nil)
	if err != nil {
		return sc, err
	}
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:    qopts.MaxSamples, // Prometheus's default, as hopwatch's
		Timeout:       time.Hour,
		LookbackDelta: qopts.LookbackDelta,
		// Unset, a subquery without a step dereferences nil.
		NoStepSubqueryIntervalFn: func(int64) int64 { return qopts.NoStepSubqueryInterval.Milliseconds() },
	})

	// The exact path's range for these ms steps: each t is the last ns of
	// its millisecond, so (t−window, t] holds the samples whose millisecond
	// is in the engine's (t−window, t].
	r := window.Range{
		Start:  g.startMs*1e6 + 999_999,
		End:    g.endMs*1e6 + 999_999,
		Step:   o.Step.Nanoseconds(),
		Window: o.Window.Nanoseconds(),
	}
	qstrs := make([]string, len(o.Quantiles))
	for i, q := range o.Quantiles {
		qstrs[i] = fmt.Sprintf("quantile_over_time(%s, %s[%s])", strconv.FormatFloat(q, 'g', -1, 64), rawMetric, model.Duration(o.Window))
	}

	if o.CPUProfile != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", o.CPUProfile, n))
		if err != nil {
			return sc, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return sc, err
		}
		defer pprof.StopCPUProfile()
	}

	nq := len(o.Quantiles)
	prom, apiT, win := make([][]Timing, nq), make([][]Timing, nq), make([][]Timing, nq)
	var winAll []Timing
	var c window.Computer
	c.MaxSamples = qopts.MaxSamples
	for run := range o.Runs {
		check := run == 0 // answers are compared on the first run
		wants := make([]points, len(qstrs))
		for i, qs := range qstrs {
			var want, got points
			t, err := measureQuery(ctx, "prometheus", func(ctx context.Context) error {
				var err error
				want, err = promRange(ctx, engine, promQ, qs, g)
				return err
			})
			if err != nil {
				return sc, fmt.Errorf("prometheus %s: %w", qs, err)
			}
			prom[i] = append(prom[i], t)

			var body []byte
			t, err = measureQuery(ctx, "hopwatch-api", func(ctx context.Context) error {
				var err error
				body, err = apiRange(ctx, api.Handler(), qs, g)
				return err
			})
			if err != nil {
				return sc, fmt.Errorf("hopwatch API %s: %w", qs, err)
			}
			apiT[i] = append(apiT[i], t)

			var direct []points
			t, err = measureQuery(ctx, "hopwatch-window", func(ctx context.Context) error {
				var err error
				direct, err = windowRange(ctx, &c, rdb, r, o.Quantiles[i:i+1], g)
				return err
			})
			if err != nil {
				return sc, fmt.Errorf("window %s: %w", qs, err)
			}
			win[i] = append(win[i], t)
			logger.Info("timed", "run", run, "query", qs, "prometheus_s", prom[i][run].Seconds, "api_s", apiT[i][run].Seconds, "window_s", t.Seconds)

			if check {
				wants[i] = want
				if got, err = parseMatrix(body); err != nil {
					return sc, fmt.Errorf("hopwatch API %s: %w", qs, err)
				}
				if err := comparePoints(want, got); err != nil {
					return sc, fmt.Errorf("%s, step %s: the exact path through the API differs from Prometheus: %w", qs, o.Step, err)
				}
				if err := comparePoints(want, direct[0]); err != nil {
					return sc, fmt.Errorf("%s, step %s: query/window differs from Prometheus: %w", qs, o.Step, err)
				}
			}
		}
		var all []points
		t, err := measureQuery(ctx, "hopwatch-window", func(ctx context.Context) error {
			var err error
			all, err = windowRange(ctx, &c, rdb, r, o.Quantiles, g)
			return err
		})
		if err != nil {
			return sc, fmt.Errorf("window, all quantiles: %w", err)
		}
		winAll = append(winAll, t)
		if check {
			for i, qs := range qstrs {
				if err := comparePoints(wants[i], all[i]); err != nil {
					return sc, fmt.Errorf("%s, step %s: query/window (all quantiles at once) differs from Prometheus: %w", qs, o.Step, err)
				}
			}
		}
	}
	for i := range nq {
		sc.Prom = append(sc.Prom, medianTiming(prom[i]))
		sc.API = append(sc.API, medianTiming(apiT[i]))
		sc.Window = append(sc.Window, medianTiming(win[i]))
	}
	sc.WindowAll = medianTiming(winAll)
	return sc, nil
}

// promTSDB writes the samples to a Prometheus TSDB in dir and compacts its
// head into one block.
func promTSDB(ctx context.Context, dir string, ds []dataset.Sample, series []uint32, ms []int64, lsets []labels.Labels) (*tsdb.DB, error) {
	opts := tsdb.DefaultOptions()
	opts.WALSegmentSize = -1 // no WAL: the data is written once and compacted
	db, err := tsdb.Open(dir, nil, nil, opts, nil)
	if err != nil {
		return nil, err
	}
	named := make([]labels.Labels, len(lsets))
	for i, l := range lsets {
		named[i] = withName(l, rawMetric)
	}
	refs := make([]storage.SeriesRef, len(lsets))
	app := db.AppenderV2(ctx)
	for i, s := range ds {
		k := series[i]
		ref, err := app.Append(refs[k], named[k], 0, ms[i], float64(s.Latency)/1e9, nil, nil, storage.AppendV2Options{})
		if err != nil {
			_ = app.Rollback()
			_ = db.Close()
			return nil, fmt.Errorf("TSDB append of sample %d (series %d, t %d): %w", i, k, ms[i], err)
		}
		refs[k] = ref
		if (i+1)%10_000 == 0 {
			if err := app.Commit(); err != nil {
				_ = db.Close()
				return nil, err
			}
			app = db.AppenderV2(ctx)
		}
	}
	if err := app.Commit(); err != nil {
		_ = db.Close()
		return nil, err
	}
	h := db.Head()
	if err := db.CompactHead(tsdb.NewRangeHead(h, h.MinTime(), h.MaxTime())); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// rawDB writes the samples, sample i at at(i) ns, to a raw tier in dir and
// compacts it, with
// blocks of a minute (merged up to two hours) so that all but the newest
// data leaves the head.
func rawDB(dir string, ds []dataset.Sample, series []uint32, at func(int) int64, lsets []labels.Labels) (*raw.DB, error) {
	opts := raw.DefaultOptions()
	opts.Dir = dir
	opts.OutOfOrderWindow = 0
	opts.BlockDuration = time.Minute
	opts.MaxBlockDuration = 2 * time.Hour
	opts.Retention = 0
	db, err := raw.Open(opts, nil, nil)
	if err != nil {
		return nil, err
	}
	b := &sample.Batch{}
	for i, l := range lsets {
		b.Series = append(b.Series, sample.Series{Family: sample.FamilySpan, Key: strconv.Itoa(i), Labels: l})
	}
	for off := 0; off < len(ds); off += 1000 {
		b.Samples = b.Samples[:0]
		for i := off; i < min(off+1000, len(ds)); i++ {
			b.Samples = append(b.Samples, sample.Sample{Series: series[i], Start: at(i), Duration: ds[i].Latency})
		}
		tooOld, err := db.Append(b)
		if err == nil && tooOld > 0 {
			err = fmt.Errorf("%d samples refused as too old", tooOld)
		}
		if err != nil {
			_ = db.Close()
			return nil, err
		}
	}
	// The data's own clock: compaction as it would run just after the
	// newest sample.
	if err := db.Compact(time.Unix(0, at(len(ds)-1))); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// grid is a range query's evaluation times in ms.
type grid struct{ startMs, endMs, stepMs int64 }

func (g grid) steps() int { return int((g.endMs-g.startMs)/g.stepMs) + 1 }

// point is one sample of a query result.
type point struct {
	t int64 // ms
	f float64
}

// points is a range query's result by series (labels without the name).
type points map[string][]point

// promRange runs a range query on Prometheus's engine.
func promRange(ctx context.Context, engine *promql.Engine, q storage.Queryable, qs string, g grid) (points, error) {
	qry, err := engine.NewRangeQuery(ctx, q, nil, qs, time.UnixMilli(g.startMs), time.UnixMilli(g.endMs), time.Duration(g.stepMs)*time.Millisecond)
	if err != nil {
		return nil, err
	}
	defer qry.Close()
	res := qry.Exec(ctx)
	if res.Err != nil {
		return nil, res.Err
	}
	m, err := res.Matrix()
	if err != nil {
		return nil, err
	}
	out := points{}
	for _, s := range m {
		if len(s.Histograms) > 0 {
			return nil, fmt.Errorf("series %s: histogram results", s.Metric)
		}
		pts := make([]point, len(s.Floats))
		for i, p := range s.Floats {
			pts[i] = point{p.T, p.F}
		}
		out[s.Metric.String()] = pts
	}
	return out, nil
}

// apiRange runs a range query through hopwatch's HTTP API in process and
// returns the response body.
func apiRange(ctx context.Context, h http.Handler, qs string, g grid) ([]byte, error) {
	sec := func(ms int64) string { return strconv.FormatFloat(float64(ms)/1e3, 'f', 3, 64) }
	params := url.Values{
		"query": {qs},
		"start": {sec(g.startMs)},
		"end":   {sec(g.endMs)},
		"step":  {sec(g.stepMs)},
	}
	req := httptest.NewRequestWithContext(ctx, http.MethodGet, "/api/v1/query_range?"+params.Encode(), nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusOK {
		return nil, fmt.Errorf("status %d: %s", rec.Code, rec.Body.String())
	}
	return rec.Body.Bytes(), nil
}

// parseMatrix reads a query_range response. Prometheus writes floats in
// their shortest exact form, so the values come back bit for bit.
func parseMatrix(body []byte) (points, error) {
	var env struct {
		Status string `json:"status"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Metric map[string]string    `json:"metric"`
				Values [][2]json.RawMessage `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, err
	}
	if env.Status != "success" || env.Data.ResultType != "matrix" {
		return nil, fmt.Errorf("unexpected response: status %q, result type %q", env.Status, env.Data.ResultType)
	}
	out := points{}
	for _, s := range env.Data.Result {
		pts := make([]point, len(s.Values))
		for i, v := range s.Values {
			ts, err := strconv.ParseFloat(string(v[0]), 64)
			if err != nil {
				return nil, err
			}
			var fs string
			if err := json.Unmarshal(v[1], &fs); err != nil {
				return nil, err
			}
			f, err := strconv.ParseFloat(fs, 64)
			if err != nil {
				return nil, err
			}
			pts[i] = point{int64(math.Round(ts * 1e3)), f}
		}
		out[labels.FromMap(s.Metric).String()] = pts
	}
	return out, nil
}

// comparePoints returns the first difference between two results.
func comparePoints(want, got points) error {
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(got) != len(want) {
		return fmt.Errorf("%d series, Prometheus has %d", len(got), len(want))
	}
	for _, k := range keys {
		w, g := want[k], got[k]
		if g == nil {
			return fmt.Errorf("series %s missing", k)
		}
		for i := range min(len(w), len(g)) {
			if w[i].t != g[i].t || math.Float64bits(w[i].f) != math.Float64bits(g[i].f) {
				return fmt.Errorf("series %s, point %d: Prometheus %g at %s, hopwatch %g at %s",
					k, i, w[i].f, time.UnixMilli(w[i].t).UTC().Format(time.RFC3339Nano), g[i].f, time.UnixMilli(g[i].t).UTC().Format(time.RFC3339Nano))
			}
		}
		if len(w) != len(g) {
			return fmt.Errorf("series %s: %d points, Prometheus has %d", k, len(g), len(w))
		}
	}
	return nil
}

// windowRange computes the quantiles of every raw series with
// query/window, reading the raw tier as the exact path does.
func windowRange(ctx context.Context, c *window.Computer, db *raw.DB, r window.Range, qs []float64, g grid) ([]points, error) {
	sel, release := db.SelectPinned(r.Start-r.Window+1, r.End)
	defer release()
	out := make([]points, len(qs))
	for i := range out {
		out[i] = points{}
	}
	var (
		d      chunkenc.Decoder
		runs   []window.Run
		vals   []float64
		counts []uint64
	)
	for i := range sel {
		runs = query.AppendRuns(runs[:0], &sel[i], db.Bounds(), &d)
		var err error
		vals, counts, err = c.Quantiles(ctx, r, qs, runs, vals[:0], counts[:0])
		if err != nil {
			return nil, err
		}
		key := sel[i].Labels.String()
		for j := range qs {
			pts := make([]point, 0, len(counts))
			for k, n := range counts {
				if n > 0 {
					pts = append(pts, point{g.startMs + int64(k)*g.stepMs, vals[k*len(qs)+j]})
				}
			}
			out[j][key] = pts
		}
	}
	return out, nil
}

// sliceRun is a run over decoded columns, sorted by time.
func sliceRun(t, lat []int64) window.Run {
	return window.Run{MinT: t[0], MaxT: t[len(t)-1], Load: func(dst *chunkenc.Samples) error {
		dst.T = append(dst.T, t...)
		dst.Latency = append(dst.Latency, lat...)
		dst.Weight = nil
		return nil
	}}
}

// measureQuery times f and watches the heap while it runs: after a GC, a
// goroutine reads the bytes of heap objects (live and not yet swept) every
// millisecond; the peak above the starting value is f's high-water mark,
// within the polling interval. Samples of a CPU profile carry side.
func measureQuery(ctx context.Context, side string, f func(context.Context) error) (Timing, error) {
	runtime.GC()
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/allocs:bytes"}}
	metrics.Read(s)
	base, allocs := s[0].Value.Uint64(), s[1].Value.Uint64()
	peak := base
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				metrics.Read(s)
				peak = max(peak, s[0].Value.Uint64())
			}
		}
	})
	var err error
	start := time.Now()
	pprof.Do(ctx, pprof.Labels("side", side), func(ctx context.Context) { err = f(ctx) })
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	metrics.Read(s)
	return Timing{Seconds: elapsed.Seconds(), PeakHeap: peak - base, Allocated: s[1].Value.Uint64() - allocs}, err
}

// medianTiming is the median of each field.
func medianTiming(ts []Timing) Timing {
	secs := make([]float64, len(ts))
	peaks, allocs := make([]uint64, len(ts)), make([]uint64, len(ts))
	for i, t := range ts {
		secs[i], peaks[i], allocs[i] = t.Seconds, t.PeakHeap, t.Allocated
	}
	slices.Sort(secs)
	slices.Sort(peaks)
	slices.Sort(allocs)
	m := len(ts) / 2
	return Timing{Seconds: secs[m], PeakHeap: peaks[m], Allocated: allocs[m]}
}

// memQueryable is a storage.Queryable over decoded float samples, sorted
// by time, several possibly at one millisecond: what a TSDB cannot hold.
type memQueryable struct {
	series []memSeries // sorted by labels
}

type memSeries struct {
	lset    labels.Labels
	samples fsamples
}

var (
	_ storage.Queryable = (*memQueryable)(nil)
	_ storage.Querier   = (*memQueryable)(nil)
)

func newMemQueryable(ds []dataset.Sample, series []uint32, ms []int64, lsets []labels.Labels) *memQueryable {
	counts := make([]int, len(lsets))
	for _, k := range series {
		counts[k]++
	}
	q := &memQueryable{series: make([]memSeries, len(lsets))}
	for k, l := range lsets {
		q.series[k] = memSeries{lset: withName(l, rawMetric), samples: make(fsamples, 0, counts[k])}
	}
	for i, s := range ds {
		m := &q.series[series[i]]
		m.samples = append(m.samples, fsample{ms[i], float64(s.Latency) / 1e9})
	}
	slices.SortFunc(q.series, func(a, b memSeries) int { return labels.Compare(a.lset, b.lset) })
	return q
}

func (q *memQueryable) Querier(int64, int64) (storage.Querier, error) { return q, nil }

func (q *memQueryable) Select(_ context.Context, _ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	var out []storage.Series
	for i := range q.series {
		s := &q.series[i]
		ok := true
		for _, m := range ms {
			ok = ok && m.Matches(s.lset.Get(m.Name))
		}
		if ok {
			out = append(out, s)
		}
	}
	return &memSeriesSet{series: out}
}

func (q *memQueryable) LabelValues(context.Context, string, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}

func (q *memQueryable) LabelNames(context.Context, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}

func (*memQueryable) Close() error { return nil }

func (s *memSeries) Labels() labels.Labels { return s.lset }

func (s *memSeries) Iterator(promchunk.Iterator) promchunk.Iterator {
	return storage.NewListSeriesIterator(s.samples)
}

type memSeriesSet struct {
	series []storage.Series
	i      int
}

func (s *memSeriesSet) Next() bool                      { s.i++; return s.i <= len(s.series) }
func (s *memSeriesSet) At() storage.Series              { return s.series[s.i-1] }
func (*memSeriesSet) Err() error                        { return nil }
func (*memSeriesSet) Warnings() annotations.Annotations { return nil }

// fsample is a float sample; fsamples hands out pointers to its elements,
// so that iterating allocates nothing per sample.
type fsample struct {
	t int64
	f float64
}

func (s *fsample) T() int64                    { return s.t }
func (*fsample) ST() int64                     { return 0 }
func (s *fsample) F() float64                  { return s.f }
func (*fsample) H() *histogram.Histogram       { return nil }
func (*fsample) FH() *histogram.FloatHistogram { return nil }
func (*fsample) Type() promchunk.ValueType     { return promchunk.ValFloat }
func (s *fsample) Copy() chunks.Sample         { c := *s; return &c }

type fsamples []fsample

func (s fsamples) Get(i int) chunks.Sample { return &s[i] }
func (s fsamples) Len() int                { return len(s) }

// quantileSketch measures the sketch path on one dataset at every schema.
//
// Flush k, at epoch + k·FlushInterval, writes each series' cumulative
// histogram of the samples up to it: a sample at t is in flush k when
// t ∈ (flush k−1, flush k], as a span counted before a flush is. Steps fall
// on flushes. rate(h[Window]) at step t reads the flushes in
// (t−Window, t], the oldest at t−Window+FlushInterval, so it holds the
// samples of (t−Window+FlushInterval, t]: that window, the union of the
// flush intervals the rate covers, is the exact answer compared with.
// rate's extrapolation scales every bucket alike, which moves no quantile.
func quantileSketch(ctx context.Context, o QuantileOptions, name string, ds []dataset.Sample, n int, dir string) ([]QuantileSketch, error) {
	series := deal(len(ds), n, o.Seed+1)
	counts := make([]int, n)
	for _, k := range series {
		counts[k]++
	}
	ts, lat := make([][]int64, n), make([][]int64, n)
	for k := range n {
		ts[k], lat[k] = make([]int64, 0, counts[k]), make([]int64, 0, counts[k])
	}
	for i, s := range ds {
		k := series[i]
		ts[k], lat[k] = append(ts[k], s.T), append(lat[k], s.Latency)
	}
	lsets := serviceLabels(n)

	flush := o.FlushInterval.Nanoseconds()
	covered := flush * ((o.Window.Nanoseconds()+flush-1)/flush - 1)
	start := epoch + o.Window.Nanoseconds()
	end := epoch + o.Duration.Nanoseconds()
	end -= (end - start) % o.Step.Nanoseconds()
	aligned := window.Range{Start: start, End: end, Step: o.Step.Nanoseconds(), Window: covered}
	nominal := aligned
	nominal.Window = o.Window.Nanoseconds()
	g := grid{startMs: start / 1e6, endMs: end / 1e6, stepMs: o.Step.Milliseconds()}

	// Exact answers, every quantile in one pass per series.
	exact := func(r window.Range) ([][]float64, error) {
		var c window.Computer
		out := make([][]float64, n)
		var runs []window.Run
		for k := range n {
			runs = runs[:0]
			for off := 0; off < len(ts[k]); off += 8192 {
				e := min(off+8192, len(ts[k]))
				runs = append(runs, sliceRun(ts[k][off:e], lat[k][off:e]))
			}
			vals, _, err := c.Quantiles(ctx, r, o.Quantiles, runs, nil, nil)
			if err != nil {
				return nil, err
			}
			out[k] = vals
		}
		return out, nil
	}
	exactAligned, err := exact(aligned)
	if err != nil {
		return nil, err
	}
	exactNominal, err := exact(nominal)
	if err != nil {
		return nil, err
	}

	// The histograms, as the aggregate tier writes them.
	opts := tsdb.DefaultOptions()
	opts.WALSegmentSize = -1
	db, err := tsdb.Open(dir, nil, nil, opts, nil)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	buckets := map[int32]float64{}
	for _, schema := range o.Schemas {
		bounds, err := nativehist.NewBounds(schema)
		if err != nil {
			return nil, err
		}
		for k := range n {
			l := labels.NewBuilder(lsets[k]).Set(model.MetricNameLabel, sketchMetric).Set("schema", strconv.Itoa(int(schema))).Labels()
			h := nativehist.New(bounds)
			app := db.AppenderV2(ctx)
			var ref storage.SeriesRef
			i := 0
			for f := epoch; f <= epoch+o.Duration.Nanoseconds(); f += flush {
				for ; i < len(ts[k]) && ts[k][i] <= f; i++ {
					h.Observe(float64(lat[k][i])/1e9, 1)
				}
				// A new Histogram each time: the TSDB head keeps the pointer.
				fh := &histogram.Histogram{}
				h.AppendTo(fh)
				if ref, err = app.Append(ref, l, 0, f/1e6, 0, fh, nil, storage.AppendV2Options{}); err != nil {
					_ = app.Rollback()
					return nil, fmt.Errorf("TSDB append: %w", err)
				}
			}
			if err := app.Commit(); err != nil {
				return nil, err
			}
			populated := 0
			h.Buckets(func(int32, uint64) { populated++ })
			buckets[schema] += float64(populated) / float64(n)
		}
	}

	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 50_000_000, Timeout: time.Hour, LookbackDelta: 5 * time.Minute,
		NoStepSubqueryIntervalFn: func(int64) int64 { return time.Minute.Milliseconds() }})
	nq := len(o.Quantiles)
	var rows []QuantileSketch
	for _, schema := range o.Schemas {
		index := map[string]int{}
		for k, l := range lsets {
			index[labels.NewBuilder(l).Set("schema", strconv.Itoa(int(schema))).Labels().String()] = k
		}
		for j, q := range o.Quantiles {
			qs := fmt.Sprintf("histogram_quantile(%s, rate(%s{schema=%q}[%s]))",
				strconv.FormatFloat(q, 'g', -1, 64), sketchMetric, strconv.Itoa(int(schema)), model.Duration(o.Window))
			res, err := promRange(ctx, engine, db, qs, g)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", qs, err)
			}
			if len(res) != n {
				return nil, fmt.Errorf("%s: %d series, want %d", qs, len(res), n)
			}
			var errAligned, errNominal []float64
			for key, pts := range res {
				k, ok := index[key]
				if !ok {
					return nil, fmt.Errorf("%s: unexpected series %s", qs, key)
				}
				if len(pts) != g.steps() {
					return nil, fmt.Errorf("%s: series %s has %d points, want %d", qs, key, len(pts), g.steps())
				}
				for step, p := range pts {
					if e := exactAligned[k][step*nq+j]; e > 0 {
						errAligned = append(errAligned, math.Abs(p.f-e)/e)
					}
					if e := exactNominal[k][step*nq+j]; e > 0 {
						errNominal = append(errNominal, math.Abs(p.f-e)/e)
					}
				}
			}
			slices.Sort(errAligned)
			slices.Sort(errNominal)
			rows = append(rows, QuantileSketch{
				Dataset: name, Series: n, Schema: schema, Q: q, Buckets: buckets[schema],
				Median: rank(errAligned, 0.5), P99: rank(errAligned, 0.99), Max: rank(errAligned, 1),
				NominalMedian: rank(errNominal, 0.5), NominalP99: rank(errNominal, 0.99),
				Points: len(errAligned),
			})
		}
	}
	return rows, nil
}

// rank returns the p-quantile of sorted xs by nearest rank.
func rank(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// smallestSchemas returns, for every dataset, series count and quantile
// of rows, the smallest schema from which on the p99 (max) error stays
// within 1%.
func smallestSchemas(schemas []int32, rows []QuantileSketch) []QuantileSchemaPick {
	type key struct {
		dataset string
		series  int
		q       float64
	}
	var order []key
	byKey := map[key]map[int32]QuantileSketch{}
	for _, r := range rows {
		k := key{r.Dataset, r.Series, r.Q}
		if byKey[k] == nil {
			byKey[k] = map[int32]QuantileSketch{}
			order = append(order, k)
		}
		byKey[k][r.Schema] = r
	}
	sorted := slices.Sorted(slices.Values(schemas))
	smallest := func(rs map[int32]QuantileSketch, metric func(QuantileSketch) float64) int32 {
		pick := int32(nativehist.MaxSchema + 1)
		for i := len(sorted) - 1; i >= 0; i-- {
			if !(metric(rs[sorted[i]]) <= 0.01) {
				break
			}
			pick = sorted[i]
		}
		return pick
	}
	var out []QuantileSchemaPick
	for _, k := range order {
		out = append(out, QuantileSchemaPick{
			Dataset: k.dataset, Series: k.series, Q: k.q,
			ByP99: smallest(byKey[k], func(r QuantileSketch) float64 { return r.P99 }),
			ByMax: smallest(byKey[k], func(r QuantileSketch) float64 { return r.Max }),
		})
	}
	return out
}

func printQuantile(w io.Writer, o QuantileOptions, res QuantileResult) {
	fmt.Fprintf(w, "window quantiles: %s of data per dataset, step %s, window %s, quantiles %v, %s/%s, GOMAXPROCS %d, median of %d runs\n\n",
		model.Duration(o.Duration), model.Duration(o.Step), model.Duration(o.Window), o.Quantiles, runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), o.Runs)
	// Figures are rounded against hopwatch: its times, memory and errors
	// up, Prometheus's down, ratios down.
	up := func(x, unit float64) float64 { return math.Ceil(x/unit) * unit }
	down := func(x, unit float64) float64 { return math.Floor(x/unit) * unit }
	secs := func(t float64, hopwatch bool) string {
		if hopwatch {
			return fmt.Sprintf("%.3f s", up(t, 1e-3))
		}
		return fmt.Sprintf("%.3f s", down(t, 1e-3))
	}
	mib := func(b uint64, hopwatch bool) string {
		if hopwatch {
			return fmt.Sprintf("%.1f MiB", up(float64(b)/(1<<20), 0.1))
		}
		return fmt.Sprintf("%.1f MiB", down(float64(b)/(1<<20), 0.1))
	}
	ratio := func(x float64) string { return fmt.Sprintf("%.2f", down(x, 0.01)) }
	for _, sc := range res.Speed {
		fmt.Fprintf(w, "%d series, %d samples of D1. Prometheus reads them from %s", sc.Series, sc.Samples, sc.PromStore)
		if sc.Bumped > 0 {
			fmt.Fprintf(w, " (%d moved to the next free millisecond of their series)", sc.Bumped)
		}
		if sc.Dropped > 0 {
			fmt.Fprintf(w, " (%d samples at a step's millisecond after the first left out of both stores)", sc.Dropped)
		}
		fmt.Fprintf(w, "; the raw tier holds %d in %d block(s) and %d in its head.\n\n", sc.RawBlockSamples, sc.RawBlocks, sc.RawHeadSamples)
		fmt.Fprintln(w, "| query | Prometheus | peak heap | allocated | hopwatch API (exact path) | peak heap | allocated | Prometheus ÷ API | query/window | peak heap | allocated |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
		var sum [3]Timing
		for i, q := range o.Quantiles {
			t := [3]Timing{sc.Prom[i], sc.API[i], sc.Window[i]}
			for j := range t {
				sum[j].Seconds += t[j].Seconds
				sum[j].PeakHeap = max(sum[j].PeakHeap, t[j].PeakHeap)
				sum[j].Allocated += t[j].Allocated
			}
			fmt.Fprintf(w, "| q=%g | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", q,
				secs(t[0].Seconds, false), mib(t[0].PeakHeap, false), mib(t[0].Allocated, false),
				secs(t[1].Seconds, true), mib(t[1].PeakHeap, true), mib(t[1].Allocated, true), ratio(t[0].Seconds/t[1].Seconds),
				secs(t[2].Seconds, true), mib(t[2].PeakHeap, true), mib(t[2].Allocated, true))
		}
		fmt.Fprintf(w, "| the %d (time and allocation summed, peak the highest) | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", len(o.Quantiles),
			secs(sum[0].Seconds, false), mib(sum[0].PeakHeap, false), mib(sum[0].Allocated, false),
			secs(sum[1].Seconds, true), mib(sum[1].PeakHeap, true), mib(sum[1].Allocated, true), ratio(sum[0].Seconds/sum[1].Seconds),
			secs(sum[2].Seconds, true), mib(sum[2].PeakHeap, true), mib(sum[2].Allocated, true))
		a := sc.WindowAll
		fmt.Fprintf(w, "| all %d in one pass (query/window) | | | | | | | %s (Prometheus's sum ÷ this) | %s | %s | %s |\n\n", len(o.Quantiles),
			ratio(sum[0].Seconds/a.Seconds), secs(a.Seconds, true), mib(a.PeakHeap, true), mib(a.Allocated, true))
	}
	if len(res.Sketch) > 0 {
		flush := o.FlushInterval.Nanoseconds()
		covered := time.Duration(flush * ((o.Window.Nanoseconds()+flush-1)/flush - 1))
		fmt.Fprintf(w, "sketch path: histogram_quantile(q, rate(h[%s])) over native histograms flushed every %s; relative error against the exact quantile of the samples the rate covers (%s) and of the full window (%s)\n\n",
			model.Duration(o.Window), model.Duration(o.FlushInterval), model.Duration(covered), model.Duration(o.Window))
		fmt.Fprintln(w, "| dataset | series | schema | buckets | q | points | median | p99 | max | median vs full window | p99 vs full window |")
		fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
		pct := func(x float64) string { return fmt.Sprintf("%.3f%%", up(100*x, 1e-3)) }
		for _, r := range res.Sketch {
			fmt.Fprintf(w, "| %s | %d | %d | %.0f | %g | %d | %s | %s | %s | %s | %s |\n",
				r.Dataset, r.Series, r.Schema, r.Buckets, r.Q, r.Points, pct(r.Median), pct(r.P99), pct(r.Max), pct(r.NominalMedian), pct(r.NominalP99))
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| dataset | series | q | smallest schema with p99 ≤ 1% | smallest schema with max ≤ 1% |")
		fmt.Fprintln(w, "|---|---|---|---|---|")
		schema := func(s int32) string {
			if s > nativehist.MaxSchema {
				return "none measured"
			}
			return strconv.Itoa(int(s))
		}
		for _, p := range res.Smallest {
			fmt.Fprintf(w, "| %s | %d | %g | %s | %s |\n", p.Dataset, p.Series, p.Q, schema(p.ByP99), schema(p.ByMax))
		}
	}
}
