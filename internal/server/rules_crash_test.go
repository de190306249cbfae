package server_test

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/server"
)

// groupHealth returns the health and last error of the rule of a group
// listed by /api/v1/rules, once it has been evaluated ("" before).
func groupHealth(t *testing.T, base, group string) (string, string) {
	t.Helper()
	var out struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				Rules []struct {
					Health         string    `json:"health"`
					LastError      string    `json:"lastError"`
					LastEvaluation time.Time `json:"lastEvaluation"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	getJSONInto(t, base+"/api/v1/rules", &out)
	for _, g := range out.Data.Groups {
		if g.Name == group && len(g.Rules) > 0 && !g.Rules[0].LastEvaluation.IsZero() {
			return g.Rules[0].Health, g.Rules[0].LastError
		}
	}
	return "", ""
}

func postRuleGroup(t *testing.T, base, ns, body string) (int, string) {
	t.Helper()
	resp, err := http.Post(base+"/api/v1/rules/"+ns, "application/yaml", strings.NewReader(body))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// TestRuleThatCannotBeEvaluatedNeverTakesTheNodeDown: a subquery without
// a step, posted as a rule through the ruler API, is evaluated at the
// default step (it used to dereference nil in the engine, in the rules
// manager's goroutine, and end the process at every start since the rule
// is stored); a rule the engine cannot evaluate is refused with 400; and a
// node whose rule files hold groups and rules that do not parse or cannot
// be evaluated starts, skips them, counts them and evaluates the rest.
func TestRuleThatCannotBeEvaluatedNeverTakesTheNodeDown(t *testing.T) {
	dir := t.TempDir()
	rulesFile := filepath.Join(t.TempDir(), "rules.yml")
	require.NoError(t, os.WriteFile(rulesFile, []byte(`groups:
  - name: good
    interval: 1s
    rules:
      - record: good:vector
        expr: vector(1)
  - name: unparseable
    interval: 1s
    rules:
      - record: bad:parse
        expr: sum(
  - name: mixed
    interval: 1s
    rules:
      - record: bad:steps
        expr: sum_over_time(vector(1)[365d:1ms])
      - record: good:nostep
        expr: max_over_time(vector(2)[2m:])
`), 0o644))
	start := func(reg *prometheus.Registry, paths []string) (*server.Server, string) {
		srv, addrs := startNodeReg(t, "n1", dir, true, reg, func(c *server.Config) {
			c.FlushInterval = time.Second
			c.Alerting.EvaluationInterval = time.Second
			c.Alerting.RulesPaths = paths
		})
		return srv, "http://" + addrs.Web
	}

	srv, base := start(prometheus.NewRegistry(), nil)
	status, body := postRuleGroup(t, base, "ns", `name: nostep
interval: 1s
rules:
  - record: nostep:max
    expr: max_over_time(sum(hopwatch_latency_raw_seconds)[2m:])
`)
	require.Equal(t, http.StatusAccepted, status, body)
	waitFor(t, "the step-less subquery rule to be evaluated", func() bool {
		h, _ := groupHealth(t, base, "nostep")
		return h != ""
	})
	h, lastErr := groupHealth(t, base, "nostep")
	require.Equal(t, "ok", h, lastErr)

	status, body = postRuleGroup(t, base, "ns", `name: huge
rules:
  - record: huge:sum
    expr: sum_over_time(vector(1)[365d:1ms])
`)
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "line 3")
	require.Contains(t, body, "--query.max-subquery-steps")
	resp, err := http.Get(base + "/api/v1/rules/ns/huge")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "a refused group is not stored")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))

	// The stored rule and the broken rule file are there at the restart.
	reg := prometheus.NewRegistry()
	_, base = start(reg, []string{rulesFile})
	for _, g := range []string{"nostep", "good", "mixed"} {
		waitFor(t, "group "+g+" to be evaluated", func() bool {
			h, _ := groupHealth(t, base, g)
			return h != ""
		})
		h, lastErr := groupHealth(t, base, g)
		require.Equal(t, "ok", h, "group %s: %s", g, lastErr)
	}
	var q struct {
		Data struct {
			Result []struct {
				Value []any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	getJSONInto(t, base+"/api/v1/query?"+url.Values{"query": {"vector(1+1)"}}.Encode(), &q)
	require.Equal(t, "2", q.Data.Result[0].Value[1])
	// The unparseable group and the rule with too many subquery steps, at
	// every load.
	require.GreaterOrEqual(t, gatheredCounter(t, reg, "hopwatch_ruler_skipped_total"), 2.0)
}

// gatheredCounter reads a counter without labels from reg.
func gatheredCounter(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}
