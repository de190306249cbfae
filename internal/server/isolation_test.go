package server_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/ingest"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/query"
)

// isoTenant is one tenant of TestTenantIsolation: what it sent, and the
// strings that mark its data, so that the other tenant's answers can be
// searched for them.
type isoTenant struct {
	id      string
	service string
	// ownLabel is a label name that only this tenant's series carry, and
	// ownFamily a metric family only this tenant writes: the two tenants
	// stream different hop kinds so that /labels and /label/__name__/values
	// differ between them.
	ownLabel, ownFamily string
	// writers are the writer ids only this tenant uses: its stream's, then
	// its OTLP/gRPC exporter's. Its OTLP/HTTP exporter writes as
	// sharedWriter, which the other tenant uses too.
	writers []string
	// counts is the spans sent per span_name, over all protocols. The two
	// tenants use the same span names with different counts, so that a
	// merge of both shows in the numbers even where no label differs.
	counts   map[string]int
	traceIDs map[string]bool
}

// sharedWriter is a writer id both tenants use: excluding it in one must
// leave the other's alone.
const sharedWriter = "shared"

// markers returns the strings of o's data found anywhere (keys and
// values) in an API answer.
func (o *isoTenant) markers(data any) []string {
	var found []string
	jsonStrings(data, func(s string) {
		if strings.Contains(s, o.service) || strings.Contains(s, o.ownFamily) ||
			s == o.ownLabel || o.traceIDs[s] || slices.Contains(o.writers, s) {
			found = append(found, s)
		}
	})
	return found
}

func (o *isoTenant) spanNames() map[string]bool {
	out := map[string]bool{}
	for n := range o.counts {
		out[n] = true
	}
	return out
}

func jsonStrings(v any, f func(string)) {
	switch v := v.(type) {
	case string:
		f(v)
	case []any:
		for _, e := range v {
			jsonStrings(e, f)
		}
	case map[string]any:
		for k, e := range v {
			f(k)
			jsonStrings(e, f)
		}
	}
}

// labelValues collects the value of label name from every JSON object of
// an answer that has it: result metrics, series, exemplar series labels.
func labelValues(v any, name string) map[string]bool {
	out := map[string]bool{}
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			if s, ok := v[name].(string); ok {
				out[s] = true
			}
			for _, e := range v {
				walk(e)
			}
		}
	}
	walk(v)
	return out
}

func set(vals ...string) map[string]bool {
	out := map[string]bool{}
	for _, v := range vals {
		out[v] = true
	}
	return out
}

// sumBy adds up the values of a vector or matrix answer (a matrix's last
// point per series) by the value of label, "" for series without it.
func sumBy(t *testing.T, data any, label string) map[string]int {
	t.Helper()
	d, ok := data.(map[string]any)
	require.True(t, ok, "%v", data)
	out := map[string]int{}
	for _, r := range d["result"].([]any) {
		r := r.(map[string]any)
		var point []any
		if v, ok := r["value"]; ok {
			point = v.([]any)
		} else {
			vs := r["values"].([]any)
			require.NotEmpty(t, vs)
			point = vs[len(vs)-1].([]any)
		}
		f, err := strconv.ParseFloat(point[1].(string), 64)
		require.NoError(t, err)
		v, _ := r["metric"].(map[string]any)[label].(string) // "" where the label is missing
		out[v] += int(f)
	}
	return out
}

// apiData calls an API endpoint as tenantID, requires success and returns
// the decoded data.
func apiData(t *testing.T, web, tenantID, method, path string, params url.Values) any {
	t.Helper()
	code, r := call(t, web, tenantID, method, path, params)
	require.Equal(t, http.StatusOK, code, "%s %s as %q: %+v", method, path, tenantID, r)
	require.Equal(t, "success", r.Status)
	var data any
	require.NoError(t, json.Unmarshal(r.Data, &data))
	return data
}

// sendAs writes the tenant's spans over OTLP/HTTP, OTLP/gRPC and the
// streaming service, and over the stream two records of the hop series
// that hop registers.
func sendAs(t *testing.T, addrs server.Addrs, tn *isoTenant, hop func(c *client.Client) (client.SeriesRef, error)) {
	t.Helper()
	ctx := context.Background()
	httpOp := &spanSet{service: tn.service, name: "http-op", kind: trace.SpanKindServer, durations: spread(tn.counts["http-op"])}
	hexp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
		otlptracehttp.WithHeaders(map[string]string{tenant.Header: tn.id, ingest.WriterHeader: sharedWriter}))
	require.NoError(t, err)
	emit(t, hexp, []*spanSet{httpOp})

	grpcOp := &spanSet{service: tn.service, name: "grpc-op", kind: trace.SpanKindInternal, durations: spread(tn.counts["grpc-op"])}
	gexp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addrs.OTLPGRPC), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithHeaders(map[string]string{tenant.Header: tn.id, ingest.WriterHeader: tn.writers[1]}))
	require.NoError(t, err)
	emit(t, gexp, []*spanSet{grpcOp})
	for _, id := range append(httpOp.traceIDs, grpcOp.traceIDs...) {
		tn.traceIDs[id] = true
	}

	opts := client.DefaultOptions()
	opts.Target = addrs.OTLPGRPC
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	opts.Writer = tn.writers[0]
	opts.Tenant = tn.id
	c, err := client.New(opts, nil, nil)
	require.NoError(t, err)
	span, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", tn.service, "span_name", "stream-op")
	require.NoError(t, err)
	hopSeries, err := hop(c)
	require.NoError(t, err)
	start := time.Now().Add(-time.Minute)
	for i := range tn.counts["stream-op"] {
		h := client.Hop{Series: span, Start: start.Add(time.Duration(i) * time.Millisecond), Duration: time.Duration(i+1) * time.Millisecond}
		// Trace ids of their own per tenant: the first byte is the tenant id's.
		h.TraceID[0], h.TraceID[1], h.TraceID[15] = tn.id[0], 0x5e, byte(i+1)
		tn.traceIDs[hex.EncodeToString(h.TraceID[:])] = true
		require.NoError(t, c.Record(ctx, h))
	}
	for i := range 2 {
		h := client.Hop{Series: hopSeries, Start: start.Add(time.Duration(i) * time.Millisecond), Duration: time.Millisecond}
		h.TraceID[0], h.TraceID[1], h.TraceID[15] = tn.id[0], 0x40, byte(i+1)
		tn.traceIDs[hex.EncodeToString(h.TraceID[:])] = true
		require.NoError(t, c.Record(ctx, h))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.Close(cctx))
}

// spread returns n distinct durations, so that quantiles have something
// to choose from.
func spread(n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(i+1) * 2 * time.Millisecond
	}
	return out
}

// otlpTraces is one request of one span of service svc.
func otlpTraces(svc, name string, traceID byte) ptrace.Traces {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", svc)
	s := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	s.SetName(name)
	s.SetKind(ptrace.SpanKindInternal)
	s.SetTraceID(pcommon.TraceID{traceID, 0x1a, 0x7e})
	s.SetSpanID(pcommon.SpanID{1})
	start := time.Now().Add(-30 * time.Second)
	s.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
	s.SetEndTimestamp(pcommon.NewTimestampFromTime(start.Add(5 * time.Millisecond)))
	return td
}

// postOTLP sends td over OTLP/HTTP as tenantID ("" for no header) and
// returns the status code.
func postOTLP(t *testing.T, addr, tenantID string, td ptrace.Traces) int {
	t.Helper()
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)
	req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/traces", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-protobuf")
	if tenantID != "" {
		req.Header.Set(tenant.Header, tenantID)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp.StatusCode
}

// writerStates is GET /api/v1/writers as tenantID: the watermark and each
// writer's state.
func writerStates(t *testing.T, web, tenantID string) (float64, map[string]string) {
	t.Helper()
	code, r := call(t, web, tenantID, http.MethodGet, ingest.WritersPath, nil)
	require.Equal(t, http.StatusOK, code, "%+v", r)
	var ws struct {
		Watermark *float64
		Writers   []struct{ Writer, State string }
	}
	require.NoError(t, json.Unmarshal(r.Data, &ws))
	require.NotNil(t, ws.Watermark)
	states := map[string]string{}
	for _, w := range ws.Writers {
		states[w.Writer] = w.State
	}
	return *ws.Watermark, states
}

// TestTenantIsolation writes distinguishable data as two tenants over
// every ingest protocol, then asks every tenant-scoped endpoint as each:
// a tenant sees all of its own data and nothing of the other's, and a
// request without a tenant is refused.
func TestTenantIsolation(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		c.RawSamplingEnabled = false // the raw tier must hold every span for the counts
		// Raw-tier exemplars live in cut chunks: cut every two samples so
		// that every series has some.
		c.Raw.ChunkSize = 2
	})
	a := &isoTenant{id: "a", service: "svc-a", ownLabel: "producer", ownFamily: "hopwatch_hop_queue_seconds",
		writers: []string{"writer-a", "writer-a-grpc"}, counts: map[string]int{"http-op": 3, "grpc-op": 4, "stream-op": 5}, traceIDs: map[string]bool{}}
	b := &isoTenant{id: "b", service: "svc-b", ownLabel: "from_stage", ownFamily: "hopwatch_stage_duration_seconds",
		writers: []string{"writer-b", "writer-b-grpc"}, counts: map[string]int{"http-op": 6, "grpc-op": 7, "stream-op": 8}, traceIDs: map[string]bool{}}
	sendAs(t, addrs, a, func(c *client.Client) (client.SeriesRef, error) {
		return c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "producer", "svc-a", "consumer", "svc-a-worker")
	})
	sendAs(t, addrs, b, func(c *client.Client) (client.SeriesRef, error) {
		return c.Series(hopwatchv1.HopKind_HOP_KIND_STAGE, "service", "svc-b", "span_name", "stage-op", "from_stage", "enqueue", "to_stage", "dequeue")
	})

	web := addrs.Web
	get := http.MethodGet
	// Every write was acknowledged, and the raw tier appends before the
	// acknowledgement: only the aggregates wait for a flush. The raw tier
	// is left out of the wait so that a leak there fails a subtest that
	// names it, rather than the wait.
	for _, tn := range []*isoTenant{a, b} {
		waitFor(t, "tenant "+tn.id+"'s aggregates", func() bool {
			q := func(expr string) map[string]int {
				return sumBy(t, apiData(t, web, tn.id, get, "/api/v1/query", url.Values{"query": {expr}}), "span_name")
			}
			ex := apiData(t, web, tn.id, get, "/api/v1/query_exemplars", url.Values{"query": {"traces_spanmetrics_latency"}})
			return maps.Equal(q("sum by (span_name) (traces_spanmetrics_calls_total)"), tn.counts) &&
				len(q("sum by (span_name) ("+tn.ownFamily+"_count)")) > 0 && len(labelValues(ex, "trace_id")) > 0
		})
	}

	now := time.Now()
	sec := func(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1e3, 'f', 3, 64) }
	instant := func(q string) url.Values { return url.Values{"query": {q}, "time": {sec(now)}} }
	ranged := func(q string) url.Values {
		return url.Values{"query": {q}, "start": {sec(now.Add(-5 * time.Minute))}, "end": {sec(now)}, "step": {"15s"}}
	}
	window := func(v url.Values) url.Values {
		v.Set("start", sec(now.Add(-10*time.Minute)))
		v.Set("end", sec(now))
		return v
	}
	both := []string{http.MethodGet, http.MethodPost}
	// checkCounts: every span of the tenant, by span_name, and its service only.
	checkCounts := func(t *testing.T, own *isoTenant, data any) {
		require.Equal(t, set(own.service), labelValues(data, "service"))
		require.Equal(t, own.counts, sumBy(t, data, "span_name"))
	}
	checkEverything := func(t *testing.T, own *isoTenant, data any) {
		require.Equal(t, set(own.service), labelValues(data, "service"))
		names := labelValues(data, "__name__")
		for _, n := range []string{"traces_spanmetrics_calls_total", own.ownFamily + "_count", query.MetricRaw} {
			require.True(t, names[n], "%s missing from %v", n, names)
		}
	}
	endpoints := []struct {
		name    string
		path    string
		methods []string
		params  url.Values
		// other is a request for the other tenant's data by name, which
		// must answer empty; nil when the endpoint takes no selector.
		other func(o *isoTenant) url.Values
		check func(t *testing.T, own *isoTenant, data any)
		// exact: the query must take the raw tier's exact path.
		exact bool
	}{
		{name: "query aggregate", path: "/api/v1/query", methods: both,
			params: instant("traces_spanmetrics_calls_total"), check: checkCounts,
			other: func(o *isoTenant) url.Values {
				return url.Values{"query": {`traces_spanmetrics_calls_total{service="` + o.service + `"}`}, "time": {sec(now)}}
			}},
		{name: "query raw exact path", path: "/api/v1/query", methods: both, exact: true,
			params: instant("quantile_over_time(0.5, hopwatch_latency_raw_seconds[5m])"),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				require.Equal(t, own.spanNames(), labelValues(data, "span_name"))
			}},
		{name: "query raw through the engine", path: "/api/v1/query", methods: both,
			params: instant("count_over_time(hopwatch_latency_raw_seconds[5m])"), check: checkCounts,
			other: func(o *isoTenant) url.Values {
				return url.Values{"query": {`count_over_time(hopwatch_latency_raw_seconds{service="` + o.service + `"}[5m])`}, "time": {sec(now)}}
			}},
		{name: "query everything", path: "/api/v1/query", methods: both,
			params: instant(`{__name__=~".+"}`), check: checkEverything},
		{name: "query_range aggregate", path: "/api/v1/query_range", methods: both,
			params: ranged("traces_spanmetrics_calls_total"), check: checkCounts},
		{name: "query_range raw exact path", path: "/api/v1/query_range", methods: both, exact: true,
			params: ranged("quantile_over_time(0.5, hopwatch_latency_raw_seconds[5m])"),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				require.Equal(t, own.spanNames(), labelValues(data, "span_name"))
			}},
		{name: "query_range raw through the engine", path: "/api/v1/query_range", methods: both,
			params: ranged("count_over_time(hopwatch_latency_raw_seconds[5m])"), check: checkCounts},
		{name: "query_range everything", path: "/api/v1/query_range", methods: both,
			params: ranged(`{__name__=~".+"}`), check: checkEverything},
		{name: "series", path: "/api/v1/series", methods: both,
			params: window(url.Values{"match[]": {`{__name__=~".+"}`}}),
			check:  checkEverything,
			other: func(o *isoTenant) url.Values {
				return window(url.Values{"match[]": {`{service="` + o.service + `"}`, `{` + o.ownLabel + `=~".+"}`}})
			}},
		{name: "series raw", path: "/api/v1/series", methods: both,
			params: window(url.Values{"match[]": {query.MetricRaw}}),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				require.Equal(t, own.spanNames(), labelValues(data, "span_name"))
				require.Equal(t, set(query.MetricRaw), labelValues(data, "__name__"))
			}},
		{name: "labels", path: "/api/v1/labels", methods: both,
			params: window(url.Values{}),
			check: func(t *testing.T, own *isoTenant, data any) {
				var names []string
				jsonStrings(data, func(s string) { names = append(names, s) })
				require.Subset(t, names, []string{"service", "span_name", own.ownLabel})
			},
			other: func(o *isoTenant) url.Values {
				return window(url.Values{"match[]": {`{service="` + o.service + `"}`}})
			}},
		{name: "label service values", path: "/api/v1/label/service/values", methods: []string{http.MethodGet},
			params: window(url.Values{}),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, []any{own.service}, data)
			},
			other: func(o *isoTenant) url.Values {
				return window(url.Values{"match[]": {`{service="` + o.service + `"}`}})
			}},
		{name: "label __name__ values", path: "/api/v1/label/__name__/values", methods: []string{http.MethodGet},
			params: window(url.Values{}),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Subset(t, data, []any{"traces_spanmetrics_calls_total", own.ownFamily + "_count", query.MetricRaw})
			}},
		{name: "query_exemplars aggregate", path: "/api/v1/query_exemplars", methods: both,
			params: window(url.Values{"query": {"traces_spanmetrics_latency"}}),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				checkTraceIDs(t, own, data)
			},
			other: func(o *isoTenant) url.Values {
				return window(url.Values{"query": {`traces_spanmetrics_latency{service="` + o.service + `"}`}})
			}},
		{name: "query_exemplars raw", path: "/api/v1/query_exemplars", methods: both,
			params: window(url.Values{"query": {query.MetricRaw}}),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				require.Equal(t, own.spanNames(), labelValues(data, "span_name"))
				require.Equal(t, set(query.MetricRaw), labelValues(data, "__name__"))
				checkTraceIDs(t, own, data)
			},
			other: func(o *isoTenant) url.Values {
				return window(url.Values{"query": {query.MetricRaw + `{service="` + o.service + `"}`}})
			}},
		{name: "query_exemplars everything", path: "/api/v1/query_exemplars", methods: both,
			params: window(url.Values{"query": {`{__name__=~".+"}`}}),
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				names := labelValues(data, "__name__")
				require.True(t, names[query.MetricRaw] && names["traces_spanmetrics_latency"], "exemplars of both tiers: %v", names)
				checkTraceIDs(t, own, data)
			}},
		{name: "latency", path: "/api/v1/latency", methods: both,
			params: url.Values{"match[]": {"{}"}, "window": {"5m"}, "time": {sec(now)}},
			check: func(t *testing.T, own *isoTenant, data any) {
				require.Equal(t, set(own.service), labelValues(data, "service"))
				counts := map[string]int{}
				for _, r := range data.(map[string]any)["result"].([]any) {
					r := r.(map[string]any)
					for _, v := range r["values"].([]any) {
						n, err := strconv.Atoi(v.([]any)[2].(string))
						require.NoError(t, err)
						counts[r["metric"].(map[string]any)["span_name"].(string)] += n
					}
				}
				require.Equal(t, own.counts, counts)
			},
			other: func(o *isoTenant) url.Values {
				return url.Values{"match[]": {`{service="` + o.service + `"}`}, "window": {"5m"}, "time": {sec(now)}}
			}},
	}
	pairs := []struct{ own, other *isoTenant }{{a, b}, {b, a}}
	for _, e := range endpoints {
		for _, method := range e.methods {
			t.Run(e.name+"/"+method, func(t *testing.T) {
				for _, p := range pairs {
					before := counter(t, reg, "hopwatch_query_exact_path_total", nil)
					data := apiData(t, web, p.own.id, method, e.path, e.params)
					require.Empty(t, p.other.markers(data), "tenant %s sees tenant %s's data in %s %s: %v", p.own.id, p.other.id, method, e.path, data)
					e.check(t, p.own, data)
					if e.exact {
						require.Equal(t, before+1, counter(t, reg, "hopwatch_query_exact_path_total", nil), "not answered on the exact path")
					}
					if e.other != nil {
						data = apiData(t, web, p.own.id, method, e.path, e.other(p.other))
						require.Empty(t, p.other.markers(data), "tenant %s sees tenant %s's data in %s %s: %v", p.own.id, p.other.id, method, e.path, data)
						checkEmptyResult(t, data)
					}
				}
				code, r := call(t, web, "", method, e.path, e.params)
				require.Equal(t, http.StatusUnauthorized, code, "%s %s without a tenant: %+v", method, e.path, r)
				require.Equal(t, "error", r.Status)
				require.Contains(t, r.Error, tenant.Header)
			})
		}
	}

	t.Run("writers", func(t *testing.T) {
		for _, p := range pairs {
			own, other := p.own, p.other
			mark, states := writerStates(t, web, own.id)
			require.Equal(t, map[string]string{own.writers[0]: "active", own.writers[1]: "active", sharedWriter: "active"}, states)
			otherMark, otherStates := writerStates(t, web, other.id)

			// The other tenant's writers do not exist for this one.
			for _, w := range other.writers {
				for _, act := range []string{"exclude", "include"} {
					code, r := call(t, web, own.id, http.MethodPost, ingest.WritersPath+"/"+w+"/"+act, url.Values{})
					require.Equal(t, http.StatusNotFound, code, "tenant %s: POST %s %s of tenant %s's writer: %+v", own.id, act, w, other.id, r)
				}
			}
			// A writer id both use is this tenant's own: excluding it here
			// leaves the other tenant's.
			code, r := call(t, web, own.id, http.MethodPost, ingest.WritersPath+"/"+sharedWriter+"/exclude", url.Values{})
			require.Equal(t, http.StatusOK, code, "%+v", r)
			_, states = writerStates(t, web, own.id)
			require.Equal(t, "excluded", states[sharedWriter])
			m, s := writerStates(t, web, other.id)
			require.Equal(t, otherStates, s, "tenant %s's writers after tenant %s's exclusions", other.id, own.id)
			require.Equal(t, otherMark, m, "tenant %s's watermark after tenant %s's exclusions", other.id, own.id)
			code, r = call(t, web, own.id, http.MethodPost, ingest.WritersPath+"/"+sharedWriter+"/include", url.Values{})
			require.Equal(t, http.StatusOK, code, "%+v", r)
			m, states = writerStates(t, web, own.id)
			require.Equal(t, "active", states[sharedWriter])
			require.GreaterOrEqual(t, m, mark)

			// The same over gRPC.
			wc := hopwatchv1.NewWriterServiceClient(dialGRPC(t, addrs.OTLPGRPC))
			ctx := metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", own.id)
			list, err := wc.ListWriters(ctx, &hopwatchv1.ListWritersRequest{})
			require.NoError(t, err)
			var ids []string
			for _, w := range list.GetWriters() {
				ids = append(ids, w.GetWriter())
			}
			require.ElementsMatch(t, append(slices.Clone(own.writers), sharedWriter), ids)
			for _, w := range other.writers {
				_, err := wc.ExcludeWriter(ctx, &hopwatchv1.ExcludeWriterRequest{Writer: w})
				require.Equal(t, codes.NotFound, status.Code(err), "tenant %s: ExcludeWriter(%s) of tenant %s: %v", own.id, w, other.id, err)
				_, err = wc.IncludeWriter(ctx, &hopwatchv1.IncludeWriterRequest{Writer: w})
				require.Equal(t, codes.NotFound, status.Code(err), "tenant %s: IncludeWriter(%s) of tenant %s: %v", own.id, w, other.id, err)
			}
			m, s = writerStates(t, web, other.id)
			require.Equal(t, otherStates, s)
			require.Equal(t, otherMark, m)
		}

		// Without a tenant: refused, and nothing changes.
		_, beforeA := writerStates(t, web, a.id)
		_, beforeB := writerStates(t, web, b.id)
		code, r := call(t, web, "", http.MethodGet, ingest.WritersPath, nil)
		require.Equal(t, http.StatusUnauthorized, code, "%+v", r)
		code, r = call(t, web, "", http.MethodPost, ingest.WritersPath+"/"+sharedWriter+"/exclude", url.Values{})
		require.Equal(t, http.StatusUnauthorized, code, "%+v", r)
		_, afterA := writerStates(t, web, a.id)
		_, afterB := writerStates(t, web, b.id)
		require.Equal(t, beforeA, afterA)
		require.Equal(t, beforeB, afterB)
		wc := hopwatchv1.NewWriterServiceClient(dialGRPC(t, addrs.OTLPGRPC))
		_, err := wc.ListWriters(context.Background(), &hopwatchv1.ListWritersRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
		_, err = wc.ExcludeWriter(context.Background(), &hopwatchv1.ExcludeWriterRequest{Writer: sharedWriter})
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	})

	t.Run("ingest without a tenant", func(t *testing.T) {
		require.Equal(t, http.StatusUnauthorized, postOTLP(t, addrs.OTLPHTTP, "", otlpTraces("svc-none", "op", 0xee)))
		conn := dialGRPC(t, addrs.OTLPGRPC)
		_, err := ptraceotlp.NewGRPCClient(conn).Export(context.Background(), ptraceotlp.NewExportRequestFromTraces(otlpTraces("svc-none", "op", 0xee)))
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
		stream, err := hopwatchv1.NewIngestServiceClient(conn).Stream(metadata.AppendToOutgoingContext(context.Background(), "x-hopwatch-writer", "nobody"))
		require.NoError(t, err)
		_, err = stream.Recv()
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	})

	// A write with one tenant's header shows for that tenant, in both
	// tiers, and never for the other.
	t.Run("OTLP write lands in its tenant only", func(t *testing.T) {
		for _, p := range pairs {
			require.Equal(t, http.StatusOK, postOTLP(t, addrs.OTLPHTTP, p.own.id, otlpTraces(p.own.service, "late-"+p.own.id, p.own.id[0])))
		}
		for _, p := range pairs {
			late := `{span_name="late-` + p.own.id + `"}`
			q := func(tenantID, expr string) map[string]int {
				return sumBy(t, apiData(t, web, tenantID, get, "/api/v1/query", url.Values{"query": {expr}}), "service")
			}
			want := map[string]int{p.own.service: 1}
			waitFor(t, "the late span of tenant "+p.own.id, func() bool {
				return maps.Equal(q(p.own.id, "sum by (service) (traces_spanmetrics_calls_total"+late+")"), want) &&
					maps.Equal(q(p.own.id, "sum by (service) (count_over_time(hopwatch_latency_raw_seconds"+late+"[5m]))"), want)
			})
			require.Empty(t, q(p.other.id, "sum by (service) (count_over_time("+late+"[5m]))"), "tenant %s sees tenant %s's write", p.other.id, p.own.id)
			require.Empty(t, apiData(t, web, p.other.id, get, "/api/v1/series", url.Values{"match[]": {late}}))
		}
	})
}

// checkEmptyResult requires an answer to hold no series, names or values:
// an empty list, or a result or series list that is empty.
func checkEmptyResult(t *testing.T, data any) {
	t.Helper()
	switch d := data.(type) {
	case []any:
		require.Empty(t, d)
	case map[string]any:
		require.Empty(t, d["result"], "%v", d)
	default:
		require.Nil(t, d)
	}
}

// checkTraceIDs requires an exemplar answer to hold trace ids, all sent by
// own.
func checkTraceIDs(t *testing.T, own *isoTenant, data any) {
	t.Helper()
	ids := labelValues(data, "trace_id")
	require.NotEmpty(t, ids)
	for id := range ids {
		require.True(t, own.traceIDs[id], "exemplar trace id %s was not sent by tenant %s: %v", id, own.id, data)
	}
}
