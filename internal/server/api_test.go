package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/tenant"
)

type apiResponse struct {
	Status    string          `json:"status"`
	Data      json.RawMessage `json:"data"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
}

// call requests path with params, as GET (query string) or POST (form
// body, as Grafana sends), with the tenant header, and decodes the envelope.
func call(t *testing.T, web, tenantID, method, path string, params url.Values) (int, apiResponse) {
	t.Helper()
	u := "http://" + web + path
	var req *http.Request
	var err error
	if method == http.MethodGet {
		req, err = http.NewRequest(method, u+"?"+params.Encode(), nil)
	} else {
		req, err = http.NewRequest(method, u, strings.NewReader(params.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	require.NoError(t, err)
	if tenantID != "" {
		req.Header.Set(tenant.Header, tenantID)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var r apiResponse
	require.NoError(t, json.Unmarshal(body, &r), "%s %s: %s", method, path, body)
	return resp.StatusCode, r
}

// TestPrometheusAPIEndpoints calls every endpoint Grafana's Prometheus
// datasource and promtool use, in both GET and POST form, for the tenant
// that owns the data and for one that owns none.
func TestPrometheusAPIEndpoints(t *testing.T) {
	_, addrs := startServer(t, func(c *server.Config) { c.MultitenancyEnabled = true })
	ctx := context.Background()
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
		otlptracehttp.WithHeaders(map[string]string{tenant.Header: "owner"}))
	require.NoError(t, err)
	emit(t, exp, []*spanSet{{service: "frontend", name: "GET /", kind: trace.SpanKindServer,
		durations: []time.Duration{time.Millisecond, 3 * time.Millisecond}}})
	c := promClient(t, addrs.Web, "owner")
	waitFor(t, "spans counted", func() bool {
		v, ok := queryScalar(t, c, "sum(traces_spanmetrics_calls_total)")
		return ok && v == 2
	})

	now := time.Now()
	start := strconv.FormatInt(now.Add(-5*time.Minute).Unix(), 10)
	end := strconv.FormatInt(now.Add(time.Minute).Unix(), 10)
	type result struct {
		Metric map[string]string `json:"metric"`
		Value  []any             `json:"value"`
		Values [][]any           `json:"values"`
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			f := func(tenantID, path string, params url.Values) apiResponse {
				t.Helper()
				code, r := call(t, addrs.Web, tenantID, method, path, params)
				require.Equal(t, http.StatusOK, code, "%s: %+v", path, r)
				require.Equal(t, "success", r.Status)
				return r
			}
			var q struct {
				ResultType string   `json:"resultType"`
				Result     []result `json:"result"`
			}
			r := f("owner", "/api/v1/query", url.Values{"query": {"sum(traces_spanmetrics_calls_total)"}, "time": {end}})
			require.NoError(t, json.Unmarshal(r.Data, &q))
			require.Equal(t, "vector", q.ResultType)
			require.Len(t, q.Result, 1)
			require.Equal(t, "2", q.Result[0].Value[1])

			r = f("owner", "/api/v1/query_range", url.Values{"query": {"sum(traces_spanmetrics_latency_count)"}, "start": {start}, "end": {end}, "step": {"5s"}})
			require.NoError(t, json.Unmarshal(r.Data, &q))
			require.Equal(t, "matrix", q.ResultType)
			require.Len(t, q.Result, 1)
			last := q.Result[0].Values[len(q.Result[0].Values)-1]
			require.Equal(t, "2", last[1])

			var series []map[string]string
			r = f("owner", "/api/v1/series", url.Values{"match[]": {"traces_spanmetrics_calls_total"}, "start": {start}, "end": {end}})
			require.NoError(t, json.Unmarshal(r.Data, &series))
			require.Equal(t, []map[string]string{{"__name__": "traces_spanmetrics_calls_total", "service": "frontend",
				"span_name": "GET /", "span_kind": "SPAN_KIND_SERVER", "status_code": "STATUS_CODE_UNSET"}}, series)

			var names []string
			r = f("owner", "/api/v1/labels", url.Values{"start": {start}, "end": {end}})
			require.NoError(t, json.Unmarshal(r.Data, &names))
			// The root server span also makes a service graph edge from the
			// virtual "user" node.
			require.Equal(t, []string{"__name__", "client", "connection_type", "le", "server", "service", "span_kind", "span_name", "status_code"}, names)

			var values []string
			var md map[string][]map[string]string
			var bi map[string]string
			var cfg map[string]string
			if method == http.MethodGet { // as in Prometheus, these are GET only
				r = f("owner", "/api/v1/label/__name__/values", url.Values{"start": {start}, "end": {end}})
				require.NoError(t, json.Unmarshal(r.Data, &values))
				// The raw tier shows as hopwatch_latency_raw_seconds.
				require.Equal(t, []string{"hopwatch_latency_raw_seconds",
					"traces_service_graph_request_failed_total", "traces_service_graph_request_server_seconds",
					"traces_service_graph_request_server_seconds_bucket", "traces_service_graph_request_server_seconds_count",
					"traces_service_graph_request_server_seconds_sum", "traces_service_graph_request_total",
					"traces_spanmetrics_calls_total", "traces_spanmetrics_latency",
					"traces_spanmetrics_latency_bucket", "traces_spanmetrics_latency_count", "traces_spanmetrics_latency_sum"}, values)

				r = f("owner", "/api/v1/metadata", url.Values{"metric": {"traces_spanmetrics_latency"}})
				require.NoError(t, json.Unmarshal(r.Data, &md))
				require.Equal(t, "histogram", md["traces_spanmetrics_latency"][0]["type"])
				require.Len(t, md, 1)

				r = f("owner", "/api/v1/status/buildinfo", nil)
				require.NoError(t, json.Unmarshal(r.Data, &bi))
				require.NotEmpty(t, bi["version"])
				require.NotEmpty(t, bi["goVersion"])

				r = f("owner", "/api/v1/status/config", nil)
				require.NoError(t, json.Unmarshal(r.Data, &cfg))
				require.Contains(t, cfg, "yaml")
			}

			var formatted string
			r = f("owner", "/api/v1/format_query", url.Values{"query": {"sum(rate(x[5m]))by(a)"}})
			require.NoError(t, json.Unmarshal(r.Data, &formatted))
			require.Equal(t, "sum by (a) (rate(x[5m]))", formatted)

			var exemplars []map[string]any
			r = f("owner", "/api/v1/query_exemplars", url.Values{"query": {"traces_spanmetrics_latency"}, "start": {start}, "end": {end}})
			require.NoError(t, json.Unmarshal(r.Data, &exemplars))
			require.Len(t, exemplars, 1)

			r = f("owner", "/api/v1/query", url.Values{"query": {`traces_service_graph_request_total{client="user", server="frontend", connection_type="virtual_node"}`}, "time": {end}})
			require.NoError(t, json.Unmarshal(r.Data, &q))
			require.Len(t, q.Result, 1)
			require.Equal(t, "2", q.Result[0].Value[1])

			// A tenant without data sees nothing anywhere.
			r = f("stranger", "/api/v1/query", url.Values{"query": {"traces_spanmetrics_calls_total"}})
			require.NoError(t, json.Unmarshal(r.Data, &q))
			require.Empty(t, q.Result)
			r = f("stranger", "/api/v1/series", url.Values{"match[]": {`{__name__=~".+"}`}})
			require.NoError(t, json.Unmarshal(r.Data, &series))
			require.Empty(t, series)
			r = f("stranger", "/api/v1/labels", nil)
			require.NoError(t, json.Unmarshal(r.Data, &names))
			require.Empty(t, names)
			if method == http.MethodGet {
				r = f("stranger", "/api/v1/label/service/values", nil)
				require.NoError(t, json.Unmarshal(r.Data, &values))
				require.Empty(t, values)
			}
			r = f("stranger", "/api/v1/query_exemplars", url.Values{"query": {"traces_spanmetrics_latency"}, "start": {start}, "end": {end}})
			require.NoError(t, json.Unmarshal(r.Data, &exemplars))
			require.Empty(t, exemplars)

			// Errors use Prometheus's envelope and types.
			code, er := call(t, addrs.Web, "owner", method, "/api/v1/query", url.Values{"query": {"sum("}})
			require.Equal(t, http.StatusBadRequest, code)
			require.Equal(t, "error", er.Status)
			require.Equal(t, "bad_data", er.ErrorType)
			require.Contains(t, er.Error, "parse error")
			code, er = call(t, addrs.Web, "", method, "/api/v1/labels", nil)
			require.Equal(t, http.StatusUnauthorized, code)
			require.Equal(t, "error", er.Status)
			require.Contains(t, er.Error, tenant.Header)
		})
	}
}

func TestHealthReadyMetricsPprof(t *testing.T) {
	_, addrs := startServer(t, nil)
	for path, want := range map[string]string{
		"/-/healthy":          "Healthy",
		"/-/ready":            "Ready",
		"/metrics":            "hopwatch_agg_flush_duration_seconds",
		"/debug/pprof/":       "goroutine",
		"/api/v1/status/tsdb": "not supported",
	} {
		resp, err := http.Get(fmt.Sprintf("http://%s%s", addrs.Web, path))
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Contains(t, string(body), want, path)
	}
}
