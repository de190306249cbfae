package server_test

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/tenant"
)

// startServer runs a node on loopback ephemeral ports with its data in a
// temporary directory and stops it when the test ends.
func startServer(t *testing.T, mutate func(*server.Config)) (*server.Server, server.Addrs) {
	t.Helper()
	return startServerReg(t, nil, mutate)
}

// startServerReg is startServer with the node's metrics in reg.
func startServerReg(t *testing.T, reg *prometheus.Registry, mutate func(*server.Config)) (*server.Server, server.Addrs) {
	t.Helper()
	return startNodeReg(t, "n1", "", true, reg, func(cfg *server.Config) {
		cfg.FlushInterval = time.Second
		if mutate != nil {
			mutate(cfg)
		}
	})
}

// testCluster puts the node's cluster listeners on loopback ephemeral ports
// and shortens raft's timeouts, so that a node elects itself within a
// fraction of a second; writes may wait long on a loaded machine.
func testCluster(c *server.ClusterConfig) {
	c.NodeID = "n1"
	c.RaftAddress = "127.0.0.1:0"
	c.GRPCAddress = "127.0.0.1:0"
	c.ApplyTimeout = 10 * time.Second
	c.HeartbeatTimeout = 300 * time.Millisecond
	c.ElectionTimeout = 300 * time.Millisecond
	c.LeaderLeaseTimeout = 150 * time.Millisecond
	c.UnreachableAfter = time.Second
}

// waitFor polls cond until it holds; it waits for the system to converge
// and asserts nothing about how long that takes (the deadline only turns a
// hang into a failure).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tenantRoundTripper sets X-Scope-OrgID on every query.
type tenantRoundTripper struct{ tenant string }

func (rt tenantRoundTripper) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	if rt.tenant != "" {
		r.Header.Set(tenant.Header, rt.tenant)
	}
	return http.DefaultTransport.RoundTrip(r)
}

func promClient(t *testing.T, webAddr, tenantID string) promv1.API {
	t.Helper()
	c, err := api.NewClient(api.Config{Address: "http://" + webAddr, RoundTripper: tenantRoundTripper{tenantID}})
	require.NoError(t, err)
	return promv1.NewAPI(c)
}

// spanSet is a group of spans with one label set.
type spanSet struct {
	service, name string
	kind          trace.SpanKind
	isErr         bool
	durations     []time.Duration
	traceIDs      []string
}

func (s spanSet) selector() string {
	kind := map[trace.SpanKind]string{trace.SpanKindServer: "SPAN_KIND_SERVER", trace.SpanKindClient: "SPAN_KIND_CLIENT", trace.SpanKindInternal: "SPAN_KIND_INTERNAL"}[s.kind]
	code := "STATUS_CODE_UNSET"
	if s.isErr {
		code = "STATUS_CODE_ERROR"
	}
	return fmt.Sprintf(`{service=%q, span_name=%q, span_kind=%q, status_code=%q}`, s.service, s.name, kind, code)
}

func (s spanSet) sumSeconds() float64 {
	var ns int64
	for _, d := range s.durations {
		ns += d.Nanoseconds()
	}
	return float64(ns) / 1e9
}

// lognormalDurations returns n durations with the given median, rounded to
// microseconds as many SDKs report them, never zero.
func lognormalDurations(rng *rand.Rand, n int, median time.Duration, sigma float64) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		d := time.Duration(float64(median) * math.Exp(rng.NormFloat64()*sigma))
		out[i] = max(d.Round(time.Microsecond), time.Microsecond)
	}
	return out
}

// emit sends the spans of sets through a real OpenTelemetry SDK pipeline,
// starting a minute ago.
func emit(t *testing.T, exp sdktrace.SpanExporter, sets []*spanSet) {
	t.Helper()
	emitFrom(t, exp, time.Now().Add(-time.Minute), sets)
}

// emitFrom is emit with the spans starting at start.
func emitFrom(t *testing.T, exp sdktrace.SpanExporter, start time.Time, sets []*spanSet) {
	t.Helper()
	ctx := context.Background()
	byService := map[string]*sdktrace.TracerProvider{}
	for _, s := range sets {
		tp := byService[s.service]
		if tp == nil {
			tp = sdktrace.NewTracerProvider(
				sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", s.service), attribute.String("deployment.environment", "test"))),
				sdktrace.WithBatcher(exp, sdktrace.WithMaxExportBatchSize(64)),
			)
			byService[s.service] = tp
		}
		tr := tp.Tracer("e2e")
		for _, d := range s.durations {
			_, span := tr.Start(ctx, s.name, trace.WithSpanKind(s.kind), trace.WithTimestamp(start))
			if s.isErr {
				span.SetStatus(otelcodes.Error, "boom")
			}
			s.traceIDs = append(s.traceIDs, span.SpanContext().TraceID().String())
			span.End(trace.WithTimestamp(start.Add(d)))
		}
	}
	for _, tp := range byService {
		require.NoError(t, tp.ForceFlush(ctx))
	}
	// Shutting one provider down shuts the shared exporter down; do it last.
	for _, tp := range byService {
		_ = tp.Shutdown(ctx)
	}
}

func queryScalar(t *testing.T, c promv1.API, q string) (float64, bool) {
	t.Helper()
	v, _, _, err := c.Query(context.Background(), q, time.Now())
	require.NoError(t, err, q)
	vec := v.(model.Vector)
	require.LessOrEqual(t, len(vec), 1, "query %s returned %d series", q, len(vec))
	if len(vec) == 0 {
		return 0, false
	}
	return float64(vec[0].Value), true
}

// trueQuantile is the order statistic a histogram's quantile estimate must
// bracket: histogram_quantile finds the bucket holding rank q·n.
func trueQuantile(ds []time.Duration, q float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(i, 0)].Seconds()
}

func TestEndToEndSpanMetricsOverOTLP(t *testing.T) {
	_, addrs := startServer(t, func(c *server.Config) { c.MultitenancyEnabled = true })
	rng := rand.New(rand.NewPCG(42, 42))

	grpcSets := []*spanSet{
		{service: "checkout", name: "GET /cart", kind: trace.SpanKindServer, durations: lognormalDurations(rng, 400, 20*time.Millisecond, 0.8)},
		{service: "checkout", name: "GET /cart", kind: trace.SpanKindServer, isErr: true, durations: lognormalDurations(rng, 17, 300*time.Millisecond, 0.5)},
		{service: "checkout", name: "SELECT carts", kind: trace.SpanKindClient, durations: lognormalDurations(rng, 250, 3*time.Millisecond, 0.6)},
	}
	httpSets := []*spanSet{
		{service: "payments", name: "Charge", kind: trace.SpanKindServer, durations: lognormalDurations(rng, 333, 80*time.Millisecond, 1.0)},
		{service: "payments", name: "fraud-check", kind: trace.SpanKindInternal, durations: lognormalDurations(rng, 50, 5*time.Millisecond, 0.3)},
	}

	ctx := context.Background()
	gexp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addrs.OTLPGRPC), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithHeaders(map[string]string{tenant.Header: "team-a"}))
	require.NoError(t, err)
	emit(t, gexp, grpcSets)
	hexp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
		otlptracehttp.WithCompression(otlptracehttp.GzipCompression),
		otlptracehttp.WithHeaders(map[string]string{tenant.Header: "team-a"}))
	require.NoError(t, err)
	emit(t, hexp, httpSets)

	c := promClient(t, addrs.Web, "team-a")
	all := append(slices.Clone(grpcSets), httpSets...)
	var total int
	for _, s := range all {
		total += len(s.durations)
	}
	waitFor(t, "all spans counted", func() bool {
		v, ok := queryScalar(t, c, "sum(traces_spanmetrics_calls_total)")
		return ok && int(v) == total
	})

	for _, s := range all {
		t.Run(s.selector(), func(t *testing.T) {
			calls, ok := queryScalar(t, c, "traces_spanmetrics_calls_total"+s.selector())
			require.True(t, ok)
			require.Equal(t, float64(len(s.durations)), calls)
			count, ok := queryScalar(t, c, "traces_spanmetrics_latency_count"+s.selector())
			require.True(t, ok)
			require.Equal(t, float64(len(s.durations)), count)
			sum, ok := queryScalar(t, c, "traces_spanmetrics_latency_sum"+s.selector())
			require.True(t, ok)
			require.Equal(t, s.sumSeconds(), sum, "the sum is kept exactly, in integer nanoseconds")

			for _, q := range []float64{0.5, 0.9, 0.99} {
				want := trueQuantile(s.durations, q)
				// Native histogram at schema 5: estimate and truth share a
				// bucket, whose bounds differ by a factor 2^(1/32).
				native, ok := queryScalar(t, c, fmt.Sprintf("histogram_quantile(%g, traces_spanmetrics_latency%s)", q, s.selector()))
				require.True(t, ok)
				require.InEpsilon(t, want, native, math.Exp2(1.0/32)-1, "native q%g", q)
				// Classic: estimate and truth fall in the same le bucket.
				classic, ok := queryScalar(t, c, fmt.Sprintf("histogram_quantile(%g, traces_spanmetrics_latency_bucket%s)", q, strings.Replace(s.selector(), "}", "", 1)+"}"))
				require.True(t, ok)
				lo, hi := classicBucket(want)
				require.True(t, classic >= lo && classic <= hi, "classic q%g = %g, true %g in bucket (%g, %g]", q, classic, want, lo, hi)
			}
		})
	}

	// Exemplars name traces that were sent, with their span's duration.
	sent := map[string]float64{}
	for _, s := range all {
		for i, id := range s.traceIDs {
			sent[id] = s.durations[i].Seconds()
		}
	}
	exs, err := c.QueryExemplars(ctx, `traces_spanmetrics_latency{service="checkout"}`, time.Now().Add(-time.Hour), time.Now().Add(time.Minute))
	require.NoError(t, err)
	require.NotEmpty(t, exs)
	var n int
	for _, r := range exs {
		for _, e := range r.Exemplars {
			id := string(e.Labels["trace_id"])
			d, ok := sent[id]
			require.True(t, ok, "exemplar trace id %q was never sent", id)
			require.Equal(t, d, float64(e.Value))
			n++
		}
	}
	require.Positive(t, n)

	// Another tenant sees none of it; a request without a tenant is refused.
	other := promClient(t, addrs.Web, "team-b")
	_, ok := queryScalar(t, other, "sum(traces_spanmetrics_calls_total)")
	require.False(t, ok, "tenant team-b must not see team-a's series")
	resp, err := http.Get("http://" + addrs.Web + "/api/v1/query?query=up")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}

// classicBucket returns the default classic bucket (lower, upper] holding v.
func classicBucket(v float64) (float64, float64) {
	bounds := []float64{0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384}
	i := sort.SearchFloat64s(bounds, v)
	lo := 0.0
	if i > 0 {
		lo = bounds[i-1]
	}
	if i == len(bounds) {
		return lo, math.Inf(1)
	}
	return lo, bounds[i]
}
