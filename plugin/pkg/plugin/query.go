package plugin

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/prometheus/common/model"
)

// Mode is what a query asks hopwatch for.
type Mode string

const (
	// ModeExact: exact window quantiles of raw-tier series.
	ModeExact Mode = "exact"
	// ModeSketch: quantiles of the native histograms (histogram_quantile).
	ModeSketch Mode = "sketch"
	// ModeHops: the hops of one service: its stages, queue and network hops.
	ModeHops Mode = "hops"
	// ModeGraph: the service graph, one edge per client/server pair, with
	// per-edge quantiles, and the clock offsets between nodes.
	ModeGraph Mode = "graph"
	// ModeWatermarks: the tenant's writers, their positions and lag.
	ModeWatermarks Mode = "watermarks"
)

// Exact paths: the latency endpoint (every quantile in one call, samples of
// a group merged) or quantile_over_time over hopwatch_latency_raw_seconds.
const (
	PathLatency = "latency"
	PathPromQL  = "promql"
)

// Query is a panel query's JSON, as the query editor writes it.
type Query struct {
	Mode Mode `json:"mode"`
	// Selector is a series selector, e.g. {service="checkout"}; the metric
	// name may be left out.
	Selector string `json:"selector"`
	// Quantiles in [0, 1]; default 0.5, 0.9, 0.99.
	Quantiles []float64 `json:"quantiles"`
	// Window is the sliding window (Prometheus duration); default 1m.
	Window string `json:"window"`
	// By lists labels whose series are merged (exact: the samples of a
	// group; sketch: the histograms of a group).
	By []string `json:"by"`
	// Path chooses the exact path: "latency" (default) or "promql".
	Path string `json:"path"`
	// Service is the service of the hops and graph views.
	Service string `json:"service"`
	// Exemplars adds the trace ids of slow points, linked to their traces.
	Exemplars bool `json:"exemplars"`
}

var defaultQuantiles = []float64{0.5, 0.9, 0.99}

// parsedQuery is a Query checked, with Grafana's time range and step.
type parsedQuery struct {
	Query
	refID    string
	window   time.Duration
	from, to time.Time
	step     time.Duration
}

// maxPoints bounds the points per series, as Prometheus's 11,000.
const maxPoints = 11000

func parseQuery(dq backend.DataQuery) (parsedQuery, error) {
	var q Query
	if len(dq.JSON) > 0 {
		if err := json.Unmarshal(dq.JSON, &q); err != nil {
			return parsedQuery{}, fmt.Errorf("query JSON: %w", err)
		}
	}
	if q.Mode == "" {
		q.Mode = ModeExact
	}
	switch q.Mode {
	case ModeExact, ModeSketch, ModeHops, ModeGraph, ModeWatermarks:
	default:
		return parsedQuery{}, fmt.Errorf("unknown mode %q (want exact, sketch, hops, graph or watermarks)", q.Mode)
	}
	if len(q.Quantiles) == 0 {
		q.Quantiles = defaultQuantiles
	}
	for _, v := range q.Quantiles {
		if !(v >= 0 && v <= 1) {
			return parsedQuery{}, fmt.Errorf("quantile %v is not in [0, 1]", v)
		}
	}
	if q.Window == "" {
		q.Window = "1m"
	}
	w, err := model.ParseDuration(q.Window)
	if err != nil || w <= 0 {
		return parsedQuery{}, fmt.Errorf("window %q: want a Prometheus duration such as 30s, 1m, 5m", q.Window)
	}
	switch q.Path {
	case "", PathLatency, PathPromQL:
	default:
		return parsedQuery{}, fmt.Errorf("unknown exact path %q (want latency or promql)", q.Path)
	}
	if q.Mode == ModeHops && q.Service == "" {
		return parsedQuery{}, fmt.Errorf("the hops view needs a service")
	}
	for _, l := range q.By {
		if !model.UTF8Validation.IsValidLabelName(l) {
			return parsedQuery{}, fmt.Errorf("by: %q is not a label name", l)
		}
	}
	pq := parsedQuery{Query: q, refID: dq.RefID, window: time.Duration(w), from: dq.TimeRange.From, to: dq.TimeRange.To}
	pq.step = max(dq.Interval, time.Second)
	if span := pq.to.Sub(pq.from); span > 0 && span/pq.step > maxPoints {
		pq.step = (span/maxPoints + time.Second - 1).Truncate(time.Second)
	}
	return pq, nil
}

// withMetric returns the selector sel for metric: {a="b"} becomes
// metric{a="b"}, and a selector that names another metric is renamed.
func withMetric(sel, metric string) string {
	sel = strings.TrimSpace(sel)
	if sel == "" {
		return metric
	}
	if i := strings.IndexByte(sel, '{'); i >= 0 {
		return metric + sel[i:]
	}
	return metric
}

// quantileName is how a quantile is shown: P50, P99, P99.9.
func quantileName(q float64) string {
	return "P" + strconv.FormatFloat(q*100, 'f', -1, 64)
}

// promDuration formats d as PromQL writes durations (1m, 90s, 1500ms).
func promDuration(d time.Duration) string {
	return model.Duration(d).String()
}
