package query

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/query/window"
	"github.com/hopwatch/hopwatch/storage/raw"
	rawenc "github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// The exact path for quantile_over_time over the raw tier.
//
// A query is parsed before Prometheus's API sees it. Every call
// quantile_over_time(<number>, hopwatch_latency_raw_seconds{...}[<range>])
// that the engine would evaluate at the query's own steps (not inside a
// subquery, no @ modifier) is computed here with the window package, and the
// call is replaced in the query by a selector {__hopwatch_ref__="<n>"} whose
// series are the computed ones: a sample at every step, a staleness marker
// where the window is empty. The engine then evaluates the rest of the
// expression (aggregations, arithmetic, comparisons) as usual.

// refLabel names a precomputed result in a rewritten query.
const refLabel = "__hopwatch_ref__"

type precomputedKey struct{}

// precomputed holds the results of one rewritten query, by ref.
type precomputed map[string][]storage.Series

func withPrecomputed(ctx context.Context, p precomputed) context.Context {
	return context.WithValue(ctx, precomputedKey{}, p)
}

// precomputedSelect answers a selector of a rewritten query; ok is false
// for any other selector.
func precomputedSelect(ctx context.Context, ms []*labels.Matcher) (storage.SeriesSet, bool) {
	p, _ := ctx.Value(precomputedKey{}).(precomputed)
	if p == nil {
		return nil, false
	}
	for _, m := range ms {
		if m.Name != refLabel || m.Type != labels.MatchEqual {
			continue
		}
		if series, ok := p[m.Value]; ok {
			return &listSeriesSet{series: series}, true
		}
	}
	return nil, false
}

// evalGrid is the engine's evaluation times in ms.
type evalGrid struct {
	start, end, step int64
}

// rawQuantileCall is one quantile_over_time, count_over_time,
// min_over_time or max_over_time over the raw tier.
type rawQuantileCall struct {
	call   *parser.Call
	count  bool // count_over_time: the window's (weighted) sample count
	q      float64
	vs     *parser.VectorSelector
	window time.Duration
	// grid is where the engine evaluates the call: the query's steps,
	// an enclosing subquery's, or the @ time.
	grid evalGrid
}

// rewrite finds the calls the exact path can answer and replaces each in
// expr by a reference selector. It returns the calls by ref. g is the
// query's grid, noStep the step of a subquery without one (ms).
//
// The engine keeps one sample of a series per millisecond at the end of
// a window (its iterators assume distinct timestamps), while the raw tier
// can hold several spans in one millisecond: every call the exact path can
// answer is taken, inside subqueries and with @ too, so that all of them
// count.
func rewrite(expr parser.Expr, g evalGrid, noStep int64) (parser.Expr, map[string]*rawQuantileCall) {
	calls := map[string]*rawQuantileCall{}
	refs := map[parser.Expr]bool{}
	isRef := func(e parser.Expr) bool {
		for {
			p, ok := e.(*parser.ParenExpr)
			if !ok {
				return refs[e]
			}
			e = p.Expr
		}
	}
	var walk func(e parser.Expr, g evalGrid) parser.Expr
	walk = func(e parser.Expr, g evalGrid) parser.Expr {
		switch n := e.(type) {
		case *parser.AggregateExpr:
			n.Expr = walk(n.Expr, g)
			if n.Param != nil {
				n.Param = walk(n.Param, g)
			}
		case *parser.BinaryExpr:
			n.LHS, n.RHS = walk(n.LHS, g), walk(n.RHS, g)
		case *parser.ParenExpr:
			n.Expr = walk(n.Expr, g)
		case *parser.UnaryExpr:
			n.Expr = walk(n.Expr, g)
		case *parser.SubqueryExpr:
			n.Expr = walk(n.Expr, subqueryGrid(g, n, noStep))
		case *parser.Call:
			if c := asRawQuantile(n); c != nil {
				ref := strconv.Itoa(len(calls))
				c.grid = g
				vs := &parser.VectorSelector{
					LabelMatchers: []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, refLabel, ref)},
					PosRange:      n.PosRange,
				}
				if c.vs.Timestamp != nil {
					// Evaluated at the @ time whatever the step; the
					// reference reads its one point there.
					at := *c.vs.Timestamp
					c.grid = evalGrid{start: at, end: at, step: 1}
					vs.Timestamp = &at
				}
				calls[ref] = c
				refs[vs] = true
				return vs
			}
			for i := range n.Args {
				n.Args[i] = walk(n.Args[i], g)
			}
			if n.Func != nil && n.Func.Name == "absent" && len(n.Args) == 1 && isRef(n.Args[0]) {
				// absent() labels its answer with the equality matchers
				// of a selector argument, and with none for a call.
				// abs() keeps the argument a call, empty when it is
				// (absent reads nothing else), so the reference's
				// matcher is never an answer's label.
				n.Args[0] = &parser.Call{Func: parser.Functions["abs"], Args: parser.Expressions{n.Args[0]}, PosRange: n.Args[0].PositionRange()}
			}
		}
		return e
	}
	return walk(expr, g), calls
}

// asRawQuantile recognises quantile_over_time(<number>, MetricRaw{...}[r])
// with a quantile in [0, 1] (the engine warns about others), and
// count_over_time, min_over_time and max_over_time of MetricRaw{...}[r];
// @ <time> is allowed, start() and end() are not.
func asRawQuantile(c *parser.Call) *rawQuantileCall {
	if c.Func != nil && len(c.Args) == 1 {
		// min_over_time and max_over_time are the quantiles 0 and 1: the
		// lowest and highest rank, no interpolation.
		var q float64
		switch c.Func.Name {
		case "count_over_time", "min_over_time":
		case "max_over_time":
			q = 1
		default:
			return nil
		}
		rc := asRawMatrix(c.Args[0])
		if rc != nil {
			rc.call, rc.count, rc.q = c, c.Func.Name == "count_over_time", q
		}
		return rc
	}
	if c.Func == nil || c.Func.Name != "quantile_over_time" || len(c.Args) != 2 {
		return nil
	}
	arg := c.Args[0]
	for {
		p, ok := arg.(*parser.ParenExpr)
		if !ok {
			break
		}
		arg = p.Expr
	}
	num, ok := arg.(*parser.NumberLiteral)
	if !ok || math.IsNaN(num.Val) || num.Val < 0 || num.Val > 1 {
		return nil
	}
	rc := asRawMatrix(c.Args[1])
	if rc != nil {
		rc.call, rc.q = c, num.Val
	}
	return rc
}

// asRawMatrix recognises MetricRaw{...}[r], with no start() or end().
func asRawMatrix(e parser.Expr) *rawQuantileCall {
	ms, ok := e.(*parser.MatrixSelector)
	if !ok {
		return nil
	}
	vs, ok := ms.VectorSelector.(*parser.VectorSelector)
	if !ok || vs.StartOrEnd != 0 || ms.Range <= 0 {
		return nil
	}
	named := vs.Name == MetricRaw
	for _, m := range vs.LabelMatchers {
		if m.Name == model.MetricNameLabel {
			named = m.Type == labels.MatchEqual && m.Value == MetricRaw
		}
	}
	if !named {
		return nil
	}
	return &rawQuantileCall{vs: vs, window: ms.Range}
}

// errFastPath wraps an error of the exact path with the Prometheus error
// type and status it answers with.
type errFastPath struct {
	status int
	typ    string
	err    error
}

func (e *errFastPath) Error() string { return e.err.Error() }
func (e *errFastPath) Unwrap() error { return e.err }

// preEvaluate computes the calls, each on its grid, and returns the
// results by ref.
func (a *API) preEvaluate(ctx context.Context, db RawQueryable, calls map[string]*rawQuantileCall, lim *queryLimits) (precomputed, error) {
	out := precomputed{}
	var c window.Computer
	c.MaxSamples = a.opts.MaxSamples
	var d rawenc.Decoder
	for ref, call := range calls {
		if db == nil {
			out[ref] = nil
			continue
		}
		g := call.grid
		offset := call.vs.OriginalOffset.Milliseconds()
		wms := call.window.Milliseconds()
		r := window.Range{
			Start:  msToNs(g.start-offset, true),
			End:    msToNs(g.end-offset, true),
			Step:   g.step * 1e6,
			Window: wms * 1e6,
		}
		_, ms := rawMatchers(call.vs.LabelMatchers)
		sel, release := db.SelectPinned(r.Start-r.Window+1, r.End, ms...)
		series, err := a.evalCall(ctx, &c, &d, db, sel, r, call, lim)
		release()
		if err != nil {
			return nil, err
		}
		out[ref] = series
	}
	return out, nil
}

// evalCall computes one call's quantile or count for every selected series.
func (a *API) evalCall(ctx context.Context, c *window.Computer, d *rawenc.Decoder, db RawQueryable, sel []raw.Series, r window.Range, call *rawQuantileCall, lim *queryLimits) ([]storage.Series, error) {
	if err := lim.addSeries(len(sel)); err != nil {
		return nil, err
	}
	var out []storage.Series
	g := call.grid
	qs := []float64{call.q}
	var runs []window.Run
	var vals []float64
	var counts []uint64
	for i := range sel {
		runs = AppendRuns(runs[:0], &sel[i], db.Bounds(), d)
		var err error
		vals, counts, err = c.Quantiles(ctx, r, qs, runs, vals[:0], counts[:0])
		if err != nil {
			return nil, fastPathError(err)
		}
		fs := &floatSeries{lset: sel[i].Labels, pts: make(fpoints, len(counts))}
		for k, n := range counts {
			f := vals[k]
			if call.count {
				f = float64(n)
			}
			if n == 0 {
				f = math.Float64frombits(value.StaleNaN)
			}
			fs.pts[k] = fpoint{t: g.start + int64(k)*g.step, f: f}
		}
		if err := lim.addSamples(len(fs.pts)); err != nil {
			return nil, err
		}
		out = append(out, fs)
	}
	return out, nil
}

func fastPathError(err error) error {
	switch {
	case errors.Is(err, window.ErrTooManySamples):
		return &errFastPath{http.StatusUnprocessableEntity, "execution", err}
	case errors.Is(err, context.DeadlineExceeded):
		return &errFastPath{http.StatusServiceUnavailable, "timeout", fmt.Errorf("query timed out in exact raw-tier evaluation: %w", err)}
	case errors.Is(err, context.Canceled):
		return &errFastPath{http.StatusServiceUnavailable, "canceled", err}
	}
	return &errFastPath{http.StatusInternalServerError, "internal", err}
}

// fastPath wraps /api/v1/query and /api/v1/query_range: it applies the
// query limits and answers raw-tier quantiles on the exact path.
func (a *API) fastPath(instant bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "bad_data", fmt.Sprintf("invalid form: %v", err))
			return
		}
		release, err := a.limits.acquire(r.Context())
		if err != nil {
			a.writeLimitError(w, err)
			return
		}
		defer release()
		g, ok := a.grid(r, instant)
		if !ok {
			// Let Prometheus's API answer the malformed request.
			next.ServeHTTP(w, r)
			return
		}
		if !instant {
			if err := a.limits.checkRange(g); err != nil {
				a.writeLimitError(w, err)
				return
			}
		}
		ctx := r.Context()
		lim := queryLimitsFrom(ctx)
		expr, err := a.parse(ctx, r.Form.Get("query"))
		if err != nil {
			var fe *errFastPath
			if errors.As(err, &fe) {
				a.writeLimitError(w, err)
				return
			}
			// Let Prometheus's API answer the parse error.
			next.ServeHTTP(w, r)
			return
		}
		if err := a.limits.checkSubqueries(expr, g, a.opts.NoStepSubqueryInterval); err != nil {
			a.writeLimitError(w, err)
			return
		}
		if a.opts.DisableExactPath {
			next.ServeHTTP(w, r)
			return
		}
		expr, calls := rewrite(expr, g, a.opts.NoStepSubqueryInterval.Milliseconds())
		if len(calls) == 0 {
			next.ServeHTTP(w, r)
			return
		}
		id, _ := tenant.From(ctx)
		var db RawQueryable
		if a.raw != nil {
			db = a.raw.RawTenant(id)
		}
		pre, err := a.preEvaluate(ctx, db, calls, lim)
		if err != nil {
			a.writeLimitError(w, err)
			return
		}
		a.metrics.exactQueries.Inc()
		r.Form.Set("query", expr.String())
		next.ServeHTTP(w, r.WithContext(withPrecomputed(ctx, pre)))
	})
}

// grid reads the evaluation times as Prometheus's API does, pinning an
// instant query's default time so both paths use the same one.
func (a *API) grid(r *http.Request, instant bool) (evalGrid, bool) {
	if instant {
		ts := time.Now()
		if s := r.Form.Get("time"); s != "" {
			var err error
			if ts, err = parseTime(s); err != nil {
				return evalGrid{}, false
			}
		} else {
			r.Form.Set("time", strconv.FormatFloat(float64(ts.UnixMilli())/1e3, 'f', 3, 64))
			ts = time.UnixMilli(ts.UnixMilli())
		}
		t := timestamp.FromTime(ts)
		return evalGrid{start: t, end: t, step: 1}, true
	}
	start, err1 := parseTime(r.Form.Get("start"))
	end, err2 := parseTime(r.Form.Get("end"))
	step, err3 := parseDuration(r.Form.Get("step"))
	if err1 != nil || err2 != nil || err3 != nil || step <= 0 || end.Before(start) {
		return evalGrid{}, false
	}
	sms := step.Milliseconds()
	if sms <= 0 || (end.Sub(start)/step) > 11000 {
		return evalGrid{}, false
	}
	return evalGrid{start: timestamp.FromTime(start), end: timestamp.FromTime(end), step: sms}, true
}

// parseTime accepts what Prometheus's API accepts: Unix seconds with a
// fraction, or RFC 3339.
func parseTime(s string) (time.Time, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		sec, frac := math.Modf(f)
		frac = math.Round(frac*1000) / 1000
		return time.Unix(int64(sec), int64(frac*float64(time.Second))).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", s)
}

// parseDuration accepts seconds with a fraction or a Prometheus duration.
func parseDuration(s string) (time.Duration, error) {
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		ts := f * float64(time.Second)
		if ts > float64(math.MaxInt64) || ts < float64(math.MinInt64) {
			return 0, fmt.Errorf("cannot parse %q to a valid duration: overflow", s)
		}
		return time.Duration(ts), nil
	}
	d, err := model.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("cannot parse %q to a valid duration", s)
	}
	return time.Duration(d), nil
}

// floatSeries is a precomputed series: float samples at ms timestamps.
type floatSeries struct {
	lset labels.Labels
	pts  fpoints
}

func (s *floatSeries) Labels() labels.Labels { return s.lset }
func (s *floatSeries) Iterator(chunkenc.Iterator) chunkenc.Iterator {
	return storage.NewListSeriesIterator(s.pts)
}
