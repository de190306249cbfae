package query

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"

	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/query/window"
	"github.com/hopwatch/hopwatch/storage/raw"
	rawenc "github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// DefaultQuantiles are the latency endpoint's quantiles when none is given.
var defaultQuantiles = []float64{0.5, 0.9, 0.99}

// maxLatencyQuantiles bounds the quantiles of one latency request: the
// answer holds one value per quantile, step and group.
const maxLatencyQuantiles = 100

// latencyResult is one series (or group) of /api/v1/latency.
type latencyResult struct {
	Metric map[string]string `json:"metric"`
	// Values: [unix seconds, [quantile values as strings], sample count as string].
	Values [][3]any `json:"values"`
}

type latencyData struct {
	Window    float64         `json:"window"`
	Quantiles []float64       `json:"quantiles"`
	Result    []latencyResult `json:"result"`
}

// latency serves /api/v1/latency: the exact quantiles of raw-tier series
// over a sliding window, every quantile in one pass.
//
// Parameters: match[] (series selectors; the metric name may be omitted or
// be hopwatch_latency_raw_seconds), quantile (repeatable; default 0.5, 0.9,
// 0.99), window (default 1m), start/end/step for a range or time for one
// evaluation (default now), and by or without (comma-separated label names)
// to merge the samples of several series into one group. The windows are
// those of quantile_over_time(q, hopwatch_latency_raw_seconds[window]) at
// the same times, so both give the same numbers.
func (a *API) latency(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		writeError(w, http.StatusMethodNotAllowed, "bad_data", "use GET or POST")
		return
	}
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "bad_data", fmt.Sprintf("invalid form: %v", err))
		return
	}
	req, err := a.parseLatency(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad_data", err.Error())
		return
	}
	release, err := a.limits.acquire(r.Context())
	if err != nil {
		a.writeLimitError(w, err)
		return
	}
	defer release()
	if err := a.limits.checkRange(req.grid); err != nil {
		a.writeLimitError(w, err)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), a.opts.Timeout)
	defer cancel()
	id, _ := tenant.From(ctx)
	var db RawQueryable
	if a.raw != nil {
		db = a.raw.RawTenant(id)
	}
	data, err := a.evalLatency(ctx, db, req, a.limits.forQuery())
	if err != nil {
		a.writeLimitError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, envelope{Status: "success", Data: data})
}

type latencyRequest struct {
	selectors [][]*labels.Matcher
	quantiles []float64
	window    time.Duration
	grid      evalGrid
	by        bool
	grouping  []string
	grouped   bool
}

func (a *API) parseLatency(r *http.Request) (*latencyRequest, error) {
	req := &latencyRequest{window: time.Minute}
	matches := r.Form["match[]"]
	if len(matches) == 0 {
		return nil, fmt.Errorf("no match[] parameter: give a series selector such as %s{service=\"api\"}", MetricRaw)
	}
	for _, m := range matches {
		ms, err := a.parser.ParseMetricSelector(m)
		if err != nil {
			return nil, fmt.Errorf("invalid match[] %q: %v", m, err)
		}
		if ok, _ := rawMatchers(ms); !ok {
			return nil, fmt.Errorf("match[] %q selects no raw-tier series: the metric name must be omitted or be %s", m, MetricRaw)
		}
		req.selectors = append(req.selectors, ms)
	}
	for _, s := range r.Form["quantile"] {
		for _, part := range strings.Split(s, ",") {
			q, err := strconv.ParseFloat(strings.TrimSpace(part), 64)
			if err != nil || math.IsNaN(q) || q < 0 || q > 1 {
				return nil, fmt.Errorf("invalid quantile %q: want a number in [0, 1]", part)
			}
			req.quantiles = append(req.quantiles, q)
		}
	}
	if len(req.quantiles) == 0 {
		req.quantiles = slices.Clone(defaultQuantiles)
	}
	if len(req.quantiles) > maxLatencyQuantiles {
		return nil, fmt.Errorf("%d quantiles asked, over the limit of %d per request", len(req.quantiles), maxLatencyQuantiles)
	}
	if s := r.Form.Get("window"); s != "" {
		d, err := parseDuration(s)
		if err != nil || d < time.Millisecond {
			return nil, fmt.Errorf("invalid window %q: want a duration of at least 1ms such as 1m or 30s", s)
		}
		req.window = d
	}
	by, without := r.Form.Get("by"), r.Form.Get("without")
	switch {
	case by != "" && without != "":
		return nil, fmt.Errorf("give by or without, not both")
	case r.Form.Has("by"):
		req.grouped, req.by, req.grouping = true, true, splitNames(by)
	case r.Form.Has("without"):
		req.grouped, req.grouping = true, splitNames(without)
	}
	if r.Form.Get("start") != "" || r.Form.Get("end") != "" || r.Form.Get("step") != "" {
		start, err := parseTime(r.Form.Get("start"))
		if err != nil {
			return nil, fmt.Errorf("invalid start: %v", err)
		}
		end, err := parseTime(r.Form.Get("end"))
		if err != nil {
			return nil, fmt.Errorf("invalid end: %v", err)
		}
		step, err := parseDuration(r.Form.Get("step"))
		if err != nil || step < time.Millisecond {
			return nil, fmt.Errorf("invalid step %q: want a positive duration of at least 1ms", r.Form.Get("step"))
		}
		if end.Before(start) {
			return nil, fmt.Errorf("end timestamp must not be before start time")
		}
		if end.Sub(start)/step > 11000 {
			return nil, fmt.Errorf("exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)")
		}
		req.grid = evalGrid{start: timestamp.FromTime(start), end: timestamp.FromTime(end), step: step.Milliseconds()}
		return req, nil
	}
	ts := time.Now()
	if s := r.Form.Get("time"); s != "" {
		var err error
		if ts, err = parseTime(s); err != nil {
			return nil, fmt.Errorf("invalid time: %v", err)
		}
	}
	t := timestamp.FromTime(ts)
	req.grid = evalGrid{start: t, end: t, step: 1}
	return req, nil
}

func splitNames(s string) []string {
	var out []string
	for _, n := range strings.Split(s, ",") {
		if n = strings.TrimSpace(n); n != "" {
			out = append(out, n)
		}
	}
	return out
}

// groupLabels returns the labels a series contributes to its group.
func (req *latencyRequest) groupLabels(l labels.Labels) labels.Labels {
	if !req.grouped {
		return l
	}
	b := labels.NewBuilder(l)
	if req.by {
		b.Keep(req.grouping...)
	} else {
		b.Del(req.grouping...)
	}
	b.Del(model.MetricNameLabel)
	return b.Labels()
}

func (a *API) evalLatency(ctx context.Context, db RawQueryable, req *latencyRequest, lim *queryLimits) (*latencyData, error) {
	g := req.grid
	wms := req.window.Milliseconds()
	r := window.Range{Start: msToNs(g.start, true), End: msToNs(g.end, true), Step: g.step * 1e6, Window: wms * 1e6}
	data := &latencyData{Window: req.window.Seconds(), Quantiles: req.quantiles, Result: []latencyResult{}}
	if db == nil {
		return data, nil
	}
	// Series of all selectors, once each, in groups.
	type group struct {
		lset   labels.Labels
		series []*raw.Series
	}
	var groups []*group
	byKey := map[string]*group{}
	seen := map[string]bool{}
	for _, ms := range req.selectors {
		_, rest := rawMatchers(ms)
		sel, release := db.SelectPinned(r.Start-r.Window+1, r.End, rest...)
		defer release()
		for i := range sel {
			k := sel[i].Labels.String()
			if seen[k] {
				continue
			}
			seen[k] = true
			if err := lim.addSeries(1); err != nil {
				return nil, err
			}
			gl := req.groupLabels(sel[i].Labels)
			gk := gl.String()
			gr := byKey[gk]
			if gr == nil {
				gr = &group{lset: gl}
				byKey[gk] = gr
				groups = append(groups, gr)
			}
			gr.series = append(gr.series, &sel[i])
		}
	}
	slices.SortFunc(groups, func(x, y *group) int { return labels.Compare(x.lset, y.lset) })

	c := window.Computer{MaxSamples: a.opts.MaxSamples}
	var d rawenc.Decoder
	var runs []window.Run
	var vals []float64
	var counts []uint64
	nq := len(req.quantiles)
	for _, gr := range groups {
		runs = runs[:0]
		for _, sr := range gr.series {
			runs = AppendRuns(runs, sr, db.Bounds(), &d)
		}
		var err error
		vals, counts, err = c.Quantiles(ctx, r, req.quantiles, runs, vals[:0], counts[:0])
		if err != nil {
			return nil, fastPathError(err)
		}
		res := latencyResult{Metric: gr.lset.Map()}
		for k, n := range counts {
			if n == 0 {
				continue
			}
			qv := make([]string, nq)
			for j := range nq {
				qv[j] = strconv.FormatFloat(vals[k*nq+j], 'f', -1, 64)
			}
			ts := float64(g.start+int64(k)*g.step) / 1e3
			res.Values = append(res.Values, [3]any{ts, qv, strconv.FormatUint(n, 10)})
		}
		if len(res.Values) == 0 {
			continue
		}
		if err := lim.addSamples(len(res.Values) * nq); err != nil {
			return nil, err
		}
		data.Result = append(data.Result, res)
	}
	return data, nil
}
