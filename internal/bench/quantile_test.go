package bench

import (
	"bytes"
	"context"
	"math"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

// TestQuantileBenchRuns runs the window quantile benchmark small, to keep
// the command working; figures come from `hopwatch bench quantile`. The
// run itself fails if the exact path and Prometheus's engine disagree.
func TestQuantileBenchRuns(t *testing.T) {
	o := DefaultQuantileOptions()
	o.Duration, o.Step, o.Window, o.FlushInterval = 20*time.Second, time.Second, 5*time.Second, time.Second
	o.Series = []int{20, 1} // 500/s per series goes to a TSDB, 10,000/s to memory
	o.SketchSeries = []int{3}
	o.Schemas = []int32{3, 8}
	o.Runs = 1
	o.Dir = t.TempDir()
	var out bytes.Buffer
	res, err := Quantile(context.Background(), &out, o, nil)
	require.NoError(t, err)

	require.Len(t, res.Speed, 2)
	require.Equal(t, "tsdb", res.Speed[0].PromStore)
	require.Positive(t, res.Speed[0].Bumped)
	require.Equal(t, "memory", res.Speed[1].PromStore)
	require.Positive(t, res.Speed[1].Dropped)
	for _, sc := range res.Speed {
		require.Len(t, sc.Prom, 3)
		require.Len(t, sc.API, 3)
		require.Equal(t, sc.Samples, sc.RawBlockSamples+sc.RawHeadSamples)
	}

	require.Len(t, res.Sketch, 3*2*3) // datasets × schemas × quantiles
	for _, r := range res.Sketch {
		require.Positive(t, r.Points, "%+v", r)
		require.False(t, math.IsNaN(r.Max), "%+v", r)
		require.LessOrEqual(t, r.Median, r.P99, "%+v", r)
		require.LessOrEqual(t, r.P99, r.Max, "%+v", r)
	}
	require.Len(t, res.Smallest, 3*3) // datasets × quantiles
	require.Contains(t, out.String(), "20 series, ")
	require.Contains(t, out.String(), "| Pareto1.5 | 3 | 8 |")
	require.Contains(t, out.String(), "| all 3 in one pass (query/window) |")
}

// TestEngineDuplicateTimestamps pins what the speed part works around:
// of several samples at one millisecond, Prometheus's engine puts only the
// first in a window ending at that millisecond, and no later window gets
// the others. Samples elsewhere at one millisecond are all counted.
func TestEngineDuplicateTimestamps(t *testing.T) {
	ms := []int64{500, 500, 1000, 1000, 1000}
	ds := make([]dataset.Sample, len(ms))
	for i := range ds {
		ds[i] = dataset.Sample{T: ms[i] * 1e6, Latency: int64(i+1) * 1e6}
	}
	q := newMemQueryable(ds, make([]uint32, len(ds)), ms, []labels.Labels{labels.FromStrings("service", "a")})
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1000, Timeout: time.Minute})
	got, err := promRange(context.Background(), engine, q, "count_over_time("+rawMetric+"[1500ms])", grid{startMs: 1000, endMs: 2000, stepMs: 1000})
	require.NoError(t, err)
	require.Equal(t, points{`{service="a"}`: {
		{t: 1000, f: 3}, // of 5: the two at 500, the first at 1000
		{t: 2000, f: 1}, // of 3: the first at 1000
	}}, got)
}
