package alerting

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"
)

func TestAnomalyRuleFiresOnAStepAndOnlyThen(t *testing.T) {
	o := DefaultAnomalyOptions()
	o.Selector = `{service="checkout"}`
	g, err := anomalyGroup(o, 5*time.Second)
	require.NoError(t, err)
	// The generated group is a valid rule file.
	b, err := yaml.Marshal(rulefmt.RuleGroups{Groups: []rulefmt.RuleGroup{g}})
	require.NoError(t, err)
	_, errs := rulefmt.Parse(b, false, model.UTF8Validation, parser.NewParser(parser.Options{}), nil)
	require.Empty(t, errs)
	require.Equal(t, model.Duration(10*time.Second), g.Rules[0].For, "3 windows = the first + 2 more evaluations")

	db, err := tsdb.Open(t.TempDir(), nil, nil, tsdb.DefaultOptions(), nil)
	require.NoError(t, err)
	defer db.Close()
	rng := rand.New(rand.NewPCG(1, 2))
	t0 := time.Unix(1_700_000_000, 0)
	app := db.Appender(context.Background())
	series := func(svc string) labels.Labels {
		return labels.FromStrings("__name__", "hopwatch_window_latency_seconds", "quantile", "0.99", "window", "1m", "service", svc, "span_name", "op")
	}
	// 70 minutes of P99 around 5 ms every 5 s, then 50 ms for both
	// services; only checkout is opted in.
	var step time.Time
	for i := range 70*12 + 3 {
		ts := t0.Add(time.Duration(i) * 5 * time.Second)
		v := 0.005 + rng.NormFloat64()*0.0003
		if i >= 70*12 {
			v = 0.050
			if step.IsZero() {
				step = ts
			}
		}
		for _, svc := range []string{"checkout", "cart"} {
			_, err := app.Append(0, series(svc), ts.UnixMilli(), v)
			require.NoError(t, err)
		}
	}
	require.NoError(t, app.Commit())

	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1e7, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	eval := func(at time.Time) promql.Vector {
		q, err := engine.NewInstantQuery(context.Background(), db, nil, g.Rules[0].Expr, at)
		require.NoError(t, err)
		defer q.Close()
		res := q.Exec(context.Background())
		require.NoError(t, res.Err)
		v, err := res.Vector()
		require.NoError(t, err)
		return v
	}
	for at := step.Add(-30 * time.Minute); at.Before(step); at = at.Add(30 * time.Second) {
		require.Empty(t, eval(at), "no anomaly before the step (at %s)", at)
	}
	v := eval(step)
	require.Len(t, v, 1)
	require.Equal(t, "checkout", v[0].Metric.Get("service"))
	require.InDelta(t, 0.050, v[0].F, 1e-12)
}
