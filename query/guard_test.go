package query

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSubqueryWithoutStep: x[2m:] is evaluated at the default step, as
// x[2m:1m] (it used to dereference nil in the engine).
func TestSubqueryWithoutStep(t *testing.T) {
	db, t0 := rawFixture(t, 3)
	_, srv, _ := limitedAPI(t, db, func(o *Options) { o.NoStepSubqueryInterval = time.Minute })
	at := fmt.Sprint(t0.Unix() + 300)
	for _, tc := range []struct {
		path   string
		params url.Values
	}{
		{"/api/v1/query", url.Values{"time": {at}}},
		{"/api/v1/query_range", url.Values{"start": {at}, "end": {fmt.Sprint(t0.Unix() + 600)}, "step": {"10"}}},
	} {
		tc.params.Set("query", `max_over_time(sum(hopwatch_latency_raw_seconds)[2m:])`)
		got := getJSON(t, srv.URL, tc.path, tc.params)
		tc.params.Set("query", `max_over_time(sum(hopwatch_latency_raw_seconds)[2m:1m])`)
		want := getJSON(t, srv.URL, tc.path, tc.params)
		require.NotEmpty(t, want["data"].(map[string]any)["result"])
		require.Equal(t, want, got)
	}
}

// TestSubqueryStepsAreBounded: a subquery evaluated at more steps than
// --query.max-subquery-steps, at any depth, is refused before it runs
// (sum_over_time(vector(1)[365d:1ms]) used to allocate until the process
// died).
func TestSubqueryStepsAreBounded(t *testing.T) {
	db, t0 := rawFixture(t, 4)
	at := fmt.Sprint(t0.Unix() + 300)
	refused := func(srv string, q string, limit int) {
		t.Helper()
		for _, path := range []string{
			"/api/v1/query?" + url.Values{"query": {q}, "time": {at}}.Encode(),
			"/api/v1/query_range?" + url.Values{"query": {q}, "start": {at}, "end": {at}, "step": {"10"}}.Encode(),
		} {
			body := getStatus(t, srv+path, http.StatusUnprocessableEntity)
			require.Contains(t, body, `"errorType":"execution"`)
			require.Contains(t, body, fmt.Sprintf("over the limit of %d (--query.max-subquery-steps)", limit))
		}
	}
	_, srv, reg := limitedAPI(t, db, func(*Options) {})
	refused(srv.URL, `sum_over_time(vector(1)[365d:1ms])`, 1_000_000)
	// The inner subquery runs over the outer one's range: (30d + 1d) / 1s steps.
	refused(srv.URL, `max_over_time(sum_over_time(vector(1)[1d:1s])[30d:1h])`, 1_000_000)
	require.Equal(t, 4.0, refusedCount(t, reg, reasonSubquerySteps))

	_, srv, _ = limitedAPI(t, db, func(o *Options) { o.MaxSubquerySteps = 1000 })
	refused(srv.URL, `sum_over_time(vector(1)[1h:1s])`, 1000)
	getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {`sum_over_time(vector(1)[1h:5s])`}, "time": {at}}.Encode(), http.StatusOK)
}

// TestExpressionBounds: a PromQL text longer than
// --query.max-expression-size-bytes, or nested deeper than the parser can
// take in bounded time, is refused before parsing, on every endpoint that
// parses PromQL (100,000 nested parentheses used to parse for minutes,
// before --query.timeout applied).
func TestExpressionBounds(t *testing.T) {
	db, _ := rawFixture(t, 5)
	_, srv, reg := limitedAPI(t, db, func(*Options) {})
	deep := strings.Repeat("(", 100_000) + "1" + strings.Repeat(")", 100_000)
	for _, path := range []string{
		"/api/v1/query?" + url.Values{"query": {deep}}.Encode(),
		"/api/v1/query_range?" + url.Values{"query": {deep}, "start": {"0"}, "end": {"60"}, "step": {"10"}}.Encode(),
		"/api/v1/query_exemplars?" + url.Values{"query": {deep}, "start": {"0"}, "end": {"60"}}.Encode(),
		"/api/v1/format_query?" + url.Values{"query": {deep}}.Encode(),
		"/api/v1/parse_query?" + url.Values{"query": {deep}}.Encode(),
		"/api/v1/series?" + url.Values{"match[]": {`{service="` + strings.Repeat("x", 70_000) + `"}`}}.Encode(),
		"/api/v1/labels?" + url.Values{"match[]": strings.Split(strings.Repeat(`{service="api"},`, 5000), ",")}.Encode(),
		"/api/v1/latency?" + url.Values{"match[]": {`{service="` + strings.Repeat("x", 70_000) + `"}`}}.Encode(),
	} {
		body := getStatus(t, srv.URL+path, http.StatusBadRequest)
		require.Contains(t, body, "--query.max-expression-size-bytes", path)
	}
	require.Equal(t, 8.0, refusedCount(t, reg, reasonExpressionSize))

	nested := strings.Repeat("(", 2000) + "1" + strings.Repeat(")", 2000)
	body := getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {nested}}.Encode(), http.StatusBadRequest)
	require.Contains(t, body, "nests parentheses, brackets or braces 2000 levels deep, over the limit of 1000")
	// Within the bounds, brackets inside strings do not count.
	getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {`count({service="` + strings.Repeat("(", 5000) + `"})`}}.Encode(), http.StatusOK)
	getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {strings.Repeat("(", 500) + "1" + strings.Repeat(")", 500)}}.Encode(), http.StatusOK)

	// A chain of binary operators is as deep as it is long: 32,000 terms
	// took seconds to parse.
	for _, op := range []string{"+", " or ", " == ", "^", " unless ", " AND "} {
		chain := "1" + strings.Repeat(op+"1", 2*maxOperators)
		body := getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {chain}}.Encode(), http.StatusBadRequest)
		require.Contains(t, body, fmt.Sprintf("has %d binary operators, over the limit of %d", 2*maxOperators, maxOperators), op)
	}
	require.Equal(t, 6.0, refusedCount(t, reg, reasonOperators))
	// Matchers, strings, names and numbers are not operators.
	d, ops := shape(`sum by (le) (rate(x_bucket{a!="b",c=~"d+e",f!~"-"}[5m] offset 1m)) > 0.5 or vector(1e-3 * 2) # a + comment`)
	require.Equal(t, 3, d)
	require.Equal(t, 4, ops, "> or * and the exponent's minus")
	_, ops = shape(`up{job="a+b-c"} unless on(instance) sort_desc(order_total)`)
	require.Equal(t, 1, ops)
}

// TestTimeoutCoversParsing: a text within the bounds that takes longer to
// parse than --query.timeout is answered with a timeout when the timeout
// passes.
func TestTimeoutCoversParsing(t *testing.T) {
	db, _ := rawFixture(t, 5)
	_, srv, reg := limitedAPI(t, db, func(o *Options) { o.Timeout = time.Millisecond })
	// Within the bounds and still slow to parse: 999 chained additions
	// inside 999 parentheses, about 10 ms.
	long := strings.Repeat("(", maxNesting-1) + strings.Repeat("1+", maxOperators-1) + "1" + strings.Repeat(")", maxNesting-1)
	body := getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {long}}.Encode(), http.StatusServiceUnavailable)
	require.Contains(t, body, `"errorType":"timeout"`)
	require.Contains(t, body, "parsing the query")
	require.Equal(t, 1.0, refusedCount(t, reg, reasonTimeout))
}

// TestNoInternalLabelInAnswers: the exact path's reference label never
// reaches an answer. absent() over a rewritten call answers as Prometheus's
// engine does ({} for a call's argument; it used to answer with
// {__hopwatch_ref__="0"}), and no endpoint lists the label.
func TestNoInternalLabelInAnswers(t *testing.T) {
	db, t0 := rawFixture(t, 8)
	fast, engine, _ := apiPair(t, db)
	at := fmt.Sprint(t0.Unix() + 300)
	for _, q := range []string{
		`absent(quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="x"}[1m]))`,
		`absent((quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="x"}[1m])))`,
		`absent(quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="api"}[1m]))`,
		`absent(quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="x"}[1m])) + absent(quantile_over_time(0.9, hopwatch_latency_raw_seconds{service="y"}[1m]))`,
		`count by (__hopwatch_ref__) (quantile_over_time(0.5, hopwatch_latency_raw_seconds[1m]))`,
		`label_replace(quantile_over_time(0.5, hopwatch_latency_raw_seconds[1m]), "x", "$1", "__hopwatch_ref__", "(.*)")`,
	} {
		for _, tc := range []struct {
			path   string
			params url.Values
		}{
			{"/api/v1/query", url.Values{"query": {q}, "time": {at}}},
			{"/api/v1/query_range", url.Values{"query": {q}, "start": {at}, "end": {fmt.Sprint(t0.Unix() + 600)}, "step": {"30"}}},
		} {
			want := getJSON(t, engine.URL, tc.path, tc.params)
			got := getJSON(t, fast.URL, tc.path, tc.params)
			require.Equal(t, want, got, q)
		}
	}
	for _, path := range []string{
		"/api/v1/query?" + url.Values{"query": {`absent(quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="x"}[1m]))`}, "time": {at}}.Encode(),
		"/api/v1/series?" + url.Values{"match[]": {`{__name__=~".+"}`, `{__hopwatch_ref__="0"}`}}.Encode(),
		"/api/v1/labels",
		"/api/v1/label/__name__/values",
		"/api/v1/label/__hopwatch_ref__/values",
		"/api/v1/query_exemplars?" + url.Values{"query": {`quantile_over_time(0.5, hopwatch_latency_raw_seconds[1m])`}, "start": {"0"}, "end": {at}}.Encode(),
	} {
		body := getStatus(t, fast.URL+path, http.StatusOK)
		require.NotContains(t, body, refLabel, path)
	}
}

// TestLimitsCoverEveryEndpointAndSelect: --query.max-samples bounds the
// raw samples a query loads over all its selectors (each used to have its
// own budget), and --query.max-series bounds /api/v1/series and
// exemplars as well as queries.
func TestLimitsCoverEveryEndpointAndSelect(t *testing.T) {
	db, t0 := rawFixture(t, 10)
	at := fmt.Sprint(t0.Unix() + 300)
	_, srv, reg := limitedAPI(t, db, func(o *Options) { o.MaxSamples = 1000 })
	one := `count(hopwatch_latency_raw_seconds{service="api"})`
	getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {one}, "time": {at}}.Encode(), http.StatusOK)
	body := getStatus(t, srv.URL+"/api/v1/query?"+url.Values{"query": {one + ` + ` + strings.ReplaceAll(one, "api", "db")}, "time": {at}}.Encode(), http.StatusUnprocessableEntity)
	require.Contains(t, body, "--query.max-samples=1000")
	require.Equal(t, 1.0, refusedCount(t, reg, reasonSamples))

	_, srv, reg = limitedAPI(t, db, func(o *Options) { o.MaxSeries = 2 })
	body = getStatus(t, srv.URL+"/api/v1/series?"+url.Values{"match[]": {`{__name__=~".+"}`}}.Encode(), http.StatusUnprocessableEntity)
	require.Contains(t, body, "--query.max-series")
	require.Equal(t, 1.0, refusedCount(t, reg, reasonSeries))
	getStatus(t, srv.URL+"/api/v1/series?"+url.Values{"match[]": {`{service="api"}`}}.Encode(), http.StatusOK)
}
