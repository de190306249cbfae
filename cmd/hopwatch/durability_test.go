package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// exportAcked exports n spans of service svc, each lasting ms milliseconds,
// through the OpenTelemetry SDK's OTLP/gRPC exporter, and returns once the
// server has acknowledged them.
func exportAcked(t *testing.T, endpoint, svc string, n int, ms int) {
	t.Helper()
	ctx := context.Background()
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(endpoint), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}))
	require.NoError(t, err)
	defer exp.Shutdown(ctx)
	res := resource.NewSchemaless(attribute.String("service.name", svc))
	start := time.Now().Add(-time.Second)
	stubs := make(tracetest.SpanStubs, n)
	for i := range stubs {
		var tid trace.TraceID
		var sid trace.SpanID
		_, _ = rand.Read(tid[:])
		_, _ = rand.Read(sid[:])
		stubs[i] = tracetest.SpanStub{
			Name:                 "op",
			SpanKind:             trace.SpanKindServer,
			SpanContext:          trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid}),
			StartTime:            start,
			EndTime:              start.Add(time.Duration(ms) * time.Millisecond),
			Resource:             res,
			InstrumentationScope: instrumentation.Scope{Name: "durability"},
		}
	}
	require.NoError(t, exp.ExportSpans(ctx, stubs.Snapshots()))
}

func waitReady(t *testing.T, p *proc) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + p.addrs.web + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("hopwatch never became ready: %v", p.logLines())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitValue polls an instant query until it returns want.
func waitValue(t *testing.T, p *proc, q string, want float64) {
	t.Helper()
	c, err := api.NewClient(api.Config{Address: "http://" + p.addrs.web})
	require.NoError(t, err)
	deadline := time.Now().Add(60 * time.Second)
	var last model.Value
	for time.Now().Before(deadline) {
		v, _, _, err := promv1.NewAPI(c).Query(context.Background(), q, time.Now())
		require.NoError(t, err)
		last = v
		if vec := v.(model.Vector); len(vec) == 1 && float64(vec[0].Value) == want {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: want %g, last answer %v", q, want, last)
}

// TestAcknowledgedSpansSurviveSIGKILL kills hopwatch right after
// acknowledged exports, before any flush could write them to the TSDB, and
// checks that every span is counted after restart.
func TestAcknowledgedSpansSurviveSIGKILL(t *testing.T) {
	dir := t.TempDir()
	// An hour-long flush interval: nothing reaches the TSDB before the kill,
	// so the counts after restart can only come from the WAL. Raw-tier
	// sampling is off: under a loaded machine it could keep fewer samples,
	// and this test counts every one.
	p := startProc(t, "--storage.path="+dir, "--flush.interval=1h", "--storage.raw.sampling.enabled=false")
	waitReady(t, p)
	for range 3 {
		exportAcked(t, p.addrs.grpc, "checkout", 100, 7)
	}
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	require.Equal(t, -1, p.wait(t), "killed by a signal")

	p = startProc(t, "--storage.path="+dir, "--flush.interval=1h", "--storage.raw.sampling.enabled=false")
	waitReady(t, p)
	require.True(t, p.hasLog("WAL replay done"))
	exportAcked(t, p.addrs.grpc, "checkout", 50, 3)
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGKILL))
	p.wait(t)

	p = startProc(t, "--storage.path="+dir, "--flush.interval=1s", "--storage.raw.sampling.enabled=false")
	waitReady(t, p)
	// The raw tier kept every sample too.
	n, ok := p.logField("raw WAL replay done", "samples")
	require.True(t, ok)
	require.Equal(t, 350.0, n)
	sel := `{service="checkout", span_name="op", span_kind="SPAN_KIND_SERVER", status_code="STATUS_CODE_UNSET"}`
	waitValue(t, p, "traces_spanmetrics_calls_total"+sel, 350)
	waitValue(t, p, "traces_spanmetrics_latency_count"+sel, 350)
	waitValue(t, p, "traces_spanmetrics_latency_sum"+sel, float64(300*7_000_000+50*3_000_000)/1e9)

	// SIGTERM: drain, flush, checkpoint, exit 0; the next start has it all.
	require.NoError(t, p.cmd.Process.Signal(syscall.SIGTERM))
	require.Equal(t, 0, p.wait(t), fmt.Sprint(p.logLines()))
	require.True(t, p.hasLog("shutdown complete"))

	p = startProc(t, "--storage.path="+dir, "--flush.interval=1s", "--storage.raw.sampling.enabled=false")
	waitReady(t, p)
	require.True(t, p.hasLog("checkpoint loaded"))
	// The raw tier loads the checkpoint written at shutdown and replays
	// nothing from its WAL.
	require.True(t, p.hasLog("raw head checkpoint loaded"))
	n, ok = p.logField("raw WAL replay done", "samples")
	require.True(t, ok)
	require.Equal(t, 0.0, n)
	waitValue(t, p, "traces_spanmetrics_calls_total"+sel, 350)
}
