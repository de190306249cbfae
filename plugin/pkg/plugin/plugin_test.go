package plugin_test

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"flag"
	"math"
	mrand "math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/data"
	"github.com/grafana/grafana-plugin-sdk-go/experimental"
	"github.com/grafana/grafana-plugin-sdk-go/experimental/datasourcetest"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/plugin/pkg/plugin"
	"github.com/hopwatch/hopwatch/plugin/pkg/plugintest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// startServer runs a hopwatch node for a test, its raw chunks cut small
// so that they (and their exemplars) are cut within the test's data.
func startServer(t *testing.T, mutate func(*server.Config)) server.Addrs {
	return plugintest.StartHopwatch(t, func(c *server.Config) {
		c.Raw.ChunkSize = 64
		if mutate != nil {
			mutate(c)
		}
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// testPlugin is the datasource served over the plugin gRPC protocol on a
// loopback port, as Grafana runs it, with a client making Grafana's calls.
var testPlugin *datasourcetest.TestPluginClient

func TestMain(m *testing.M) {
	flag.Parse()
	plugintest.Main(m, &testPlugin)
}

func startPlugin(*testing.T) *datasourcetest.TestPluginClient { return testPlugin }

func pluginContext(webAddr, tenant, token string) backend.PluginContext {
	jd, _ := json.Marshal(map[string]string{"tenant": tenant, "traceLinkUrl": "http://traces.example/trace/${__value.raw}", "tracesDatasourceUid": "tempo"})
	secure := map[string]string{}
	if token != "" {
		secure["token"] = token
	}
	return backend.PluginContext{
		PluginID: plugin.ID, Namespace: "default",
		DataSourceInstanceSettings: &backend.DataSourceInstanceSettings{
			UID: "hopwatch-" + webAddr + "-" + tenant + "-" + token, Name: "hopwatch", URL: "http://" + webAddr,
			JSONData: jd, DecryptedSecureJSONData: secure, Updated: time.Unix(1, 0),
		},
	}
}

// seqIDs makes trace and span ids from a seeded generator, so the spans a
// test sends are the same every run.
type seqIDs struct {
	mu  sync.Mutex
	rng *mrand.Rand
}

func (g *seqIDs) NewIDs(context.Context) (trace.TraceID, trace.SpanID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	var tid trace.TraceID
	var sid trace.SpanID
	binary.BigEndian.PutUint64(tid[:8], g.rng.Uint64())
	binary.BigEndian.PutUint64(tid[8:], g.rng.Uint64())
	binary.BigEndian.PutUint64(sid[:], g.rng.Uint64()|1)
	return tid, sid
}

func (g *seqIDs) NewSpanID(context.Context, trace.TraceID) trace.SpanID {
	g.mu.Lock()
	defer g.mu.Unlock()
	var sid trace.SpanID
	binary.BigEndian.PutUint64(sid[:], g.rng.Uint64()|1)
	return sid
}

// workload is what sendWorkload sent.
type workload struct {
	base     time.Time
	traceIDs map[string]bool
}

// sendWorkload sends n requests through the OpenTelemetry SDK's OTLP/gRPC
// exporter, from base on, one every 200 ms: web-frontend (client) calls
// api-gateway (server, with stage events), which produces to a queue that
// log-processor consumes. Durations are lognormal from a fixed seed.
func sendWorkload(t *testing.T, grpcAddr, tenant string, base time.Time, n int) workload {
	t.Helper()
	ctx := context.Background()
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(grpcAddr), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithHeaders(map[string]string{"x-scope-orgid": tenant}))
	require.NoError(t, err)
	ids := &seqIDs{rng: mrand.New(mrand.NewPCG(7, 7))}
	provider := func(service, instance, host string) *sdktrace.TracerProvider {
		return sdktrace.NewTracerProvider(
			sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", service),
				attribute.String("service.instance.id", instance), attribute.String("host.name", host))),
			sdktrace.WithSyncer(exp), sdktrace.WithIDGenerator(ids))
	}
	// The gateway and the processor share a host, hence a clock: their
	// queue hop is recorded without a clock offset between them.
	web, gw, proc := provider("web-frontend", "web-1", "host-1"), provider("api-gateway", "gw-1", "host-2"), provider("log-processor", "proc-1", "host-2")
	rng := mrand.New(mrand.NewPCG(42, 42))
	lognormal := func(median time.Duration, sigma float64) time.Duration {
		return time.Duration(float64(median) * math.Exp(rng.NormFloat64()*sigma)).Round(time.Microsecond)
	}
	w := workload{base: base, traceIDs: map[string]bool{}}
	for i := range n {
		start := base.Add(time.Duration(i) * 200 * time.Millisecond)
		server := lognormal(20*time.Millisecond, 0.6)
		network := lognormal(2*time.Millisecond, 0.3)
		cctx, client := web.Tracer("t").Start(ctx, "GET /api/logs", trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(start))
		w.traceIDs[client.SpanContext().TraceID().String()] = true
		sstart := start.Add(network / 2)
		sctx, srv := gw.Tracer("t").Start(cctx, "GET /api/logs", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(sstart))
		srv.AddEvent("arrive", trace.WithTimestamp(sstart))
		srv.AddEvent("dequeue", trace.WithTimestamp(sstart.Add(server/4)))
		srv.AddEvent("done", trace.WithTimestamp(sstart.Add(server)))
		_, prod := gw.Tracer("t").Start(sctx, "publish logs", trace.WithSpanKind(trace.SpanKindProducer), trace.WithTimestamp(sstart.Add(server/2)))
		pend := sstart.Add(server/2 + time.Millisecond)
		prod.End(trace.WithTimestamp(pend))
		cstart := pend.Add(lognormal(5*time.Millisecond, 0.5))
		_, cons := proc.Tracer("t").Start(trace.ContextWithSpan(sctx, prod), "process logs", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithTimestamp(cstart))
		cons.End(trace.WithTimestamp(cstart.Add(lognormal(3*time.Millisecond, 0.4))))
		srv.End(trace.WithTimestamp(sstart.Add(server)))
		client.End(trace.WithTimestamp(start.Add(server + network)))
	}
	for _, tp := range []*sdktrace.TracerProvider{web, gw, proc} {
		require.NoError(t, tp.ForceFlush(ctx))
	}
	require.NoError(t, exp.Shutdown(ctx))
	return w
}

func query(refID string, q map[string]any, from, to time.Time, interval time.Duration) backend.DataQuery {
	b, _ := json.Marshal(q)
	return backend.DataQuery{RefID: refID, JSON: b, Interval: interval, MaxDataPoints: 1000, TimeRange: backend.TimeRange{From: from, To: to}}
}

// rebase moves the frames' times so that base becomes a fixed instant:
// golden files hold times relative to when the workload started.
func rebase(dr backend.DataResponse, base time.Time) backend.DataResponse {
	fixed := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range dr.Frames {
		for _, fld := range f.Fields {
			if fld.Type() != data.FieldTypeTime {
				continue
			}
			for i := range fld.Len() {
				fld.Set(i, fixed.Add(fld.At(i).(time.Time).Sub(base)))
			}
		}
	}
	return dr
}

func TestPluginAgainstHopwatch(t *testing.T) {
	const tenant = "team-a"
	addrs := startServer(t, func(c *server.Config) { c.MultitenancyEnabled = true })
	base := time.Now().Add(-2 * time.Minute).Truncate(10 * time.Second)
	wl := sendWorkload(t, addrs.OTLPGRPC, tenant, base, 500) // 100 s of requests
	client := startPlugin(t)
	pctx := pluginContext(addrs.Web, tenant, "")
	ctx := context.Background()
	from, to := base.Add(30*time.Second), base.Add(100*time.Second)
	run := func(q backend.DataQuery) backend.DataResponse {
		t.Helper()
		resp, err := client.QueryData(ctx, &backend.QueryDataRequest{PluginContext: pctx, Queries: []backend.DataQuery{q}})
		require.NoError(t, err)
		dr := resp.Responses[q.RefID]
		require.NoError(t, dr.Error, q.RefID)
		return dr
	}
	// The raw tier has every span once the node has acknowledged them.
	waitFor(t, "raw samples", func() bool {
		dr := run(query("A", map[string]any{"mode": "exact", "selector": `{service="api-gateway"}`, "window": "30s"}, from, to, 10*time.Second))
		return len(dr.Frames) > 0 && dr.Frames[0].Rows() == 8
	})

	t.Run("exact via the latency endpoint", func(t *testing.T) {
		dr := run(query("A", map[string]any{"mode": "exact", "selector": `{service="api-gateway", span_kind="SPAN_KIND_SERVER"}`, "window": "30s", "by": []string{"service"}}, from, to, 10*time.Second))
		require.Len(t, dr.Frames, 1)
		f := dr.Frames[0]
		require.Equal(t, []string{"Time", "P50", "P90", "P99", "samples"}, fieldNames(f))
		require.Equal(t, "s", f.Fields[1].Config.Unit)
		require.Equal(t, "P99 api-gateway", f.Fields[3].Config.DisplayNameFromDS)
		experimental.CheckGoldenJSONResponse(t, "testdata", "exact", ptr(rebase(dr, base)), *update)
	})

	t.Run("exact via PromQL equals the latency endpoint", func(t *testing.T) {
		sel := `{service="api-gateway", span_kind="SPAN_KIND_SERVER"}`
		a := run(query("A", map[string]any{"mode": "exact", "selector": sel, "window": "30s"}, from, to, 10*time.Second))
		b := run(query("B", map[string]any{"mode": "exact", "path": "promql", "selector": sel, "window": "30s"}, from, to, 10*time.Second))
		require.Len(t, a.Frames, 1)
		require.Len(t, b.Frames, 1)
		for i, name := range []string{"Time", "P50", "P90", "P99"} {
			require.Equal(t, name, b.Frames[0].Fields[i].Name)
			require.Equal(t, a.Frames[0].Fields[i].Len(), b.Frames[0].Fields[i].Len())
			for r := range a.Frames[0].Fields[i].Len() {
				require.Equal(t, a.Frames[0].Fields[i].At(r), b.Frames[0].Fields[i].At(r), "%s row %d", name, r)
			}
		}
	})

	t.Run("exemplars link slow points to their traces", func(t *testing.T) {
		dr := run(query("A", map[string]any{"mode": "exact", "selector": `{service="api-gateway"}`, "window": "30s", "exemplars": true}, base, to, 10*time.Second))
		ex := dr.Frames[len(dr.Frames)-1]
		require.Equal(t, "exemplar", ex.Name)
		require.Equal(t, data.DataTopicAnnotations, ex.Meta.DataTopic)
		require.Positive(t, ex.Rows())
		ids := ex.Fields[2]
		require.Equal(t, "trace_id", ids.Name)
		for i := range ids.Len() {
			require.True(t, wl.traceIDs[ids.At(i).(string)], "exemplar trace id %s was never sent", ids.At(i))
		}
		require.Len(t, ids.Config.Links, 2)
		require.Equal(t, "tempo", ids.Config.Links[0].Internal.DatasourceUID)
		require.Equal(t, "http://traces.example/trace/${__value.raw}", ids.Config.Links[1].URL)
	})

	// The aggregate tier (histograms, service graph) is written at flush
	// time: ask about the last minutes of wall clock.
	now := time.Now()
	aggFrom, aggTo := now.Add(-time.Minute), now.Add(2*time.Minute)

	t.Run("sketch", func(t *testing.T) {
		var dr backend.DataResponse
		waitFor(t, "sketch points", func() bool {
			dr = run(query("A", map[string]any{"mode": "sketch", "selector": `{service="api-gateway", span_kind="SPAN_KIND_SERVER"}`, "window": "5m", "by": []string{"service"}}, aggFrom, time.Now(), 5*time.Second))
			return len(dr.Frames) == 1 && dr.Frames[0].Rows() > 0
		})
		f := dr.Frames[0]
		require.Equal(t, []string{"Time", "P50", "P90", "P99"}, fieldNames(f))
		p50, _ := f.Fields[1].ConcreteAt(f.Rows() - 1)
		require.InDelta(t, 0.020, p50.(float64), 0.005, "P50 of lognormal(20ms)")
	})

	t.Run("hops of a service", func(t *testing.T) {
		var dr backend.DataResponse
		waitFor(t, "hop series", func() bool {
			dr = run(query("A", map[string]any{"mode": "hops", "service": "api-gateway", "window": "5m"}, aggFrom, time.Now(), 5*time.Second))
			return len(dr.Frames) >= 4
		})
		var names []string
		for _, f := range dr.Frames {
			names = append(names, f.Name)
			require.Equal(t, "s", f.Fields[1].Config.Unit)
		}
		require.Contains(t, names, "stage arrive → dequeue GET /api/logs")
		require.Contains(t, names, "stage dequeue → done GET /api/logs")
		require.Contains(t, names, "network web-frontend → api-gateway")
		require.Contains(t, names, "queue api-gateway → log-processor")
	})

	t.Run("service graph", func(t *testing.T) {
		var dr backend.DataResponse
		waitFor(t, "service graph edges", func() bool {
			dr = run(query("A", map[string]any{"mode": "graph", "window": "5m"}, aggFrom, aggTo, time.Minute))
			return len(dr.Frames) == 3 && dr.Frames[1].Rows() >= 2
		})
		nodes, edges, clocks := dr.Frames[0], dr.Frames[1], dr.Frames[2]
		require.Equal(t, data.VisTypeNodeGraph, string(edges.Meta.PreferredVisualization))
		require.Equal(t, []string{"id", "title", "mainstat"}, fieldNames(nodes))
		require.Equal(t, []string{"id", "source", "target", "mainstat", "secondarystat", "detail__p50", "detail__p90", "detail__p99", "detail__rate", "detail__error_ratio"}, fieldNames(edges))
		ids := fieldStrings(edges.Fields[0])
		require.Contains(t, ids, "web-frontend→api-gateway")
		require.Contains(t, ids, "api-gateway→log-processor")
		require.Equal(t, []string{"client_node", "server_node", "offset"}, fieldNames(clocks))
		waitFor(t, "clock offsets", func() bool {
			dr = run(query("A", map[string]any{"mode": "graph", "window": "5m"}, aggFrom, aggTo, time.Minute))
			return dr.Frames[2].Rows() > 0
		})
		require.Equal(t, []string{"host-1"}, fieldStrings(dr.Frames[2].Fields[0]), "clocks are per host")
		require.Equal(t, []string{"host-2"}, fieldStrings(dr.Frames[2].Fields[1]))
	})

	t.Run("writer watermarks", func(t *testing.T) {
		dr := run(query("A", map[string]any{"mode": "watermarks"}, aggFrom, aggTo, time.Minute))
		require.Len(t, dr.Frames, 2)
		writers := dr.Frames[0]
		require.Equal(t, []string{"writer", "state", "position", "last write", "lag"}, fieldNames(writers))
		require.Equal(t, []string{"gw-1", "proc-1", "web-1"}, fieldStrings(writers.Fields[0]))
		require.Equal(t, "s", writers.Fields[4].Config.Unit)
		require.Equal(t, []string{"Time", "watermark", "watermark lag"}, fieldNames(dr.Frames[1]))
	})

	t.Run("a bad query fails alone", func(t *testing.T) {
		resp, err := client.QueryData(ctx, &backend.QueryDataRequest{PluginContext: pctx, Queries: []backend.DataQuery{
			query("A", map[string]any{"mode": "exact", "quantiles": []float64{1.5}}, from, to, time.Second),
			query("B", map[string]any{"mode": "exact", "selector": `{service=`}, from, to, time.Second),
			query("C", map[string]any{"mode": "exact", "selector": `{service="api-gateway"}`, "window": "30s"}, from, to, 10*time.Second),
		}})
		require.NoError(t, err)
		require.ErrorContains(t, resp.Responses["A"].Error, "quantile 1.5 is not in [0, 1]")
		require.Equal(t, backend.StatusBadRequest, resp.Responses["A"].Status)
		require.Error(t, resp.Responses["B"].Error)
		require.NoError(t, resp.Responses["C"].Error)
	})

	t.Run("CheckHealth", func(t *testing.T) {
		res, err := client.CheckHealth(ctx, &backend.CheckHealthRequest{PluginContext: pctx})
		require.NoError(t, err)
		require.Equal(t, backend.HealthStatusOk, res.Status, res.Message)
		require.Contains(t, res.Message, "tenant: team-a")
		require.Contains(t, res.Message, "hopwatch ")

		bad := pluginContext("127.0.0.1:1", tenant, "")
		res, err = client.CheckHealth(ctx, &backend.CheckHealthRequest{PluginContext: bad})
		require.NoError(t, err)
		require.Equal(t, backend.HealthStatusError, res.Status)
	})

	t.Run("CallResource", func(t *testing.T) {
		status, body := callResource(t, client, pctx, "labels", "labels")
		require.Equal(t, http.StatusOK, status)
		var labels struct{ Data []string }
		require.NoError(t, json.Unmarshal(body, &labels))
		require.Contains(t, labels.Data, "service")

		status, body = callResource(t, client, pctx, "label/service/values", "label/service/values?match[]=hopwatch_latency_raw_seconds")
		require.Equal(t, http.StatusOK, status)
		var values struct{ Data []string }
		require.NoError(t, json.Unmarshal(body, &values))
		require.Equal(t, []string{"api-gateway", "log-processor", "web-frontend"}, values.Data)

		status, body = callResource(t, client, pctx, "series", `series?match[]={service="log-processor"}`)
		require.Equal(t, http.StatusOK, status)
		var series struct{ Data []map[string]string }
		require.NoError(t, json.Unmarshal(body, &series))
		require.NotEmpty(t, series.Data)
		for _, s := range series.Data {
			require.Equal(t, "log-processor", s["service"])
		}

		// Another tenant sees none of team-a's data through the same calls.
		status, body = callResource(t, client, pluginContext(addrs.Web, "team-b", ""), "label/service/values", "label/service/values")
		require.Equal(t, http.StatusOK, status)
		values.Data = nil
		require.NoError(t, json.Unmarshal(body, &values))
		require.Empty(t, values.Data)

		status, _ = callResource(t, client, pctx, "query", "query?query=up")
		require.Equal(t, http.StatusNotFound, status)
	})
}

// With --auth.enabled the datasource's token picks the tenant: the right
// token passes CheckHealth and reads labels, a wrong one is refused.
func TestPluginBearerToken(t *testing.T) {
	token, err := auth.NewToken(rand.Reader)
	require.NoError(t, err)
	addrs := startServer(t, func(c *server.Config) {
		c.Auth.Enabled = true
		c.Tokens = auth.TokenMap{auth.HashToken(token): "team-a"}
	})
	client := startPlugin(t)
	ctx := context.Background()

	res, err := client.CheckHealth(ctx, &backend.CheckHealthRequest{PluginContext: pluginContext(addrs.Web, "", token)})
	require.NoError(t, err)
	require.Equal(t, backend.HealthStatusOk, res.Status, res.Message)

	other, err := auth.NewToken(rand.Reader)
	require.NoError(t, err)
	res, err = client.CheckHealth(ctx, &backend.CheckHealthRequest{PluginContext: pluginContext(addrs.Web, "", other)})
	require.NoError(t, err)
	require.Equal(t, backend.HealthStatusError, res.Status)
	require.Contains(t, res.Message, "401")

	status, _ := callResource(t, client, pluginContext(addrs.Web, "", token), "labels", "labels")
	require.Equal(t, http.StatusOK, status)
	status, _ = callResource(t, client, pluginContext(addrs.Web, "", other), "labels", "labels")
	require.Equal(t, http.StatusUnauthorized, status)
}

func callResource(t *testing.T, c *datasourcetest.TestPluginClient, pctx backend.PluginContext, path, u string) (int, []byte) {
	t.Helper()
	var got *backend.CallResourceResponse
	err := c.CallResource(context.Background(), &backend.CallResourceRequest{PluginContext: pctx, Path: path, Method: http.MethodGet, URL: u},
		backend.CallResourceResponseSenderFunc(func(r *backend.CallResourceResponse) error {
			got = r
			return nil
		}))
	require.NoError(t, err)
	require.NotNil(t, got)
	return got.Status, got.Body
}

func fieldNames(f *data.Frame) []string {
	var out []string
	for _, fld := range f.Fields {
		out = append(out, fld.Name)
	}
	return out
}

func fieldStrings(f *data.Field) []string {
	var out []string
	for i := range f.Len() {
		out = append(out, f.At(i).(string))
	}
	slices.Sort(out)
	return out
}

func ptr[T any](v T) *T { return &v }
