package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/server"
)

// blockRawTenant makes the raw tier unable to open a tenant's database
// (a file where its directory goes) until the returned function is called.
func blockRawTenant(t *testing.T, rawDir, tenantID string) (unblock func()) {
	t.Helper()
	path := filepath.Join(rawDir, tenantID)
	require.NoError(t, os.WriteFile(path, []byte("not a directory"), 0o644))
	return func() { require.NoError(t, os.Remove(path)) }
}

// internalSpans returns n internal spans of one series (no service graph
// edges), a minute old.
func internalSpans(n int) []sdktrace.ReadOnlySpan {
	start := time.Now().Add(-time.Minute)
	res := resource.NewSchemaless(attribute.String("service.name", "billing"))
	stubs := make(tracetest.SpanStubs, n)
	for i := range stubs {
		stubs[i] = tracetest.SpanStub{
			Name: "charge",
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{1, byte(i >> 8), byte(i)}, SpanID: trace.SpanID{2, byte(i >> 8), byte(i)}, TraceFlags: trace.FlagsSampled}),
			SpanKind:             trace.SpanKindInternal,
			StartTime:            start.Add(time.Duration(i) * time.Millisecond),
			EndTime:              start.Add(time.Duration(i)*time.Millisecond + 5*time.Millisecond),
			Resource:             res,
			InstrumentationScope: instrumentation.Scope{Name: "outcome"},
		}
	}
	return stubs.Snapshots()
}

// TestFailedRawAppendKeepsNothing: when the raw tier cannot keep a batch,
// the client is told nothing was kept and nothing of the batch reaches the
// aggregates either, so the OTLP exporter's retry after the fault clears
// is counted exactly once in both tiers.
func TestFailedRawAppendKeepsNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	var rawDir string
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		rawDir = c.RawDir()
	})
	ctx := context.Background()
	const n = 40
	exporters := map[string]func(tenantID string) (sdktrace.SpanExporter, error){
		"http": func(tenantID string) (sdktrace.SpanExporter, error) {
			return otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
				otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}),
				otlptracehttp.WithHeaders(map[string]string{"X-Scope-OrgID": tenantID}))
		},
		"grpc": func(tenantID string) (sdktrace.SpanExporter, error) {
			return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addrs.OTLPGRPC), otlptracegrpc.WithInsecure(),
				otlptracegrpc.WithRetry(otlptracegrpc.RetryConfig{Enabled: false}),
				otlptracegrpc.WithHeaders(map[string]string{"X-Scope-OrgID": tenantID}))
		},
	}
	appended := 0.0
	for _, proto := range []string{"http", "grpc"} {
		t.Run(proto, func(t *testing.T) {
			tenantID := "outcome-" + proto
			exp, err := exporters[proto](tenantID)
			require.NoError(t, err)
			defer exp.Shutdown(ctx)
			spans := internalSpans(n)

			unblock := blockRawTenant(t, rawDir, tenantID)
			err = exp.ExportSpans(ctx, spans)
			require.Error(t, err, "the raw tier could not keep the batch: the client must hear it")
			require.Contains(t, err.Error(), "storage unavailable")
			require.Equal(t, appended, counter(t, reg, "hopwatch_agg_samples_appended_total", nil),
				"a batch the client was told was not kept reached the aggregates")
			require.Zero(t, counter(t, reg, "hopwatch_otlp_spans_accepted_total", map[string]string{"protocol": proto}))

			unblock()
			require.NoError(t, exp.ExportSpans(ctx, spans), "the retry after the fault clears")
			appended += n
			require.Equal(t, appended, counter(t, reg, "hopwatch_agg_samples_appended_total", nil), "the retry counts once")

			c := promClient(t, addrs.Web, tenantID)
			raw, ok := queryScalar(t, c, `sum(count_over_time(hopwatch_latency_raw_seconds{service="billing"}[10m]))`)
			require.True(t, ok)
			require.Equal(t, float64(n), raw, "the raw tier holds the batch once")
			waitFor(t, "the aggregates flushed", func() bool {
				_, ok := queryScalar(t, c, `sum(traces_spanmetrics_calls_total{service="billing"})`)
				return ok
			})
			calls, _ := queryScalar(t, c, `sum(traces_spanmetrics_calls_total{service="billing"})`)
			require.Equal(t, float64(n), calls, "the aggregates count the batch once")
		})
	}
}

// TestStreamResendAfterRawFailure: a streamed batch the raw tier could not
// keep is acknowledged UNAVAILABLE and its seq is not recorded, so its
// resend under the same seq is applied (once), not taken for a duplicate of
// a batch the raw tier never held.
func TestStreamResendAfterRawFailure(t *testing.T) {
	reg := prometheus.NewRegistry()
	var rawDir string
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		rawDir = c.RawDir()
	})
	const tenantID = "outcome-stream"
	client := hopwatchv1.NewIngestServiceClient(dialGRPC(t, addrs.OTLPGRPC))
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", tenantID, "x-hopwatch-writer", "loader-1")
	stream, err := client.Stream(ctx)
	require.NoError(t, err)
	_, err = stream.Recv() // the initial credit
	require.NoError(t, err)

	const n = 25
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	batch := &hopwatchv1.HopBatch{Seq: 1, Series: []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_SPAN, Labels: []*hopwatchv1.Label{
		{Name: "service", Value: "ledger"}, {Name: "span_name", Value: "post"}}}}}
	prev := int64(0)
	for i := range n {
		ts := start.Add(time.Duration(i) * time.Millisecond).UnixNano()
		batch.SeriesIndex = append(batch.SeriesIndex, 0)
		batch.StartTimeDeltaUnixNano = append(batch.StartTimeDeltaUnixNano, ts-prev)
		batch.DurationNano = append(batch.DurationNano, uint64(2*time.Millisecond))
		prev = ts
	}
	send := func() *hopwatchv1.StreamResponse {
		t.Helper()
		require.NoError(t, stream.Send(&hopwatchv1.StreamRequest{Batch: batch}))
		ack, err := stream.Recv()
		require.NoError(t, err)
		require.Equal(t, uint64(1), ack.GetSeq())
		return ack
	}

	unblock := blockRawTenant(t, rawDir, tenantID)
	ack := send()
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, ack.GetStatus(), ack.GetErrorMessage())
	require.Zero(t, counter(t, reg, "hopwatch_agg_samples_appended_total", nil))

	unblock()
	ack = send()
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, ack.GetStatus(), "the resend is applied: %s", ack.GetErrorMessage())
	require.Equal(t, uint32(n), ack.GetAcceptedRecords())
	require.Equal(t, float64(n), counter(t, reg, "hopwatch_agg_samples_appended_total", nil))
	ack = send()
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE, ack.GetStatus(), "a second resend is a duplicate")

	raw, ok := queryScalar(t, promClient(t, addrs.Web, tenantID), `sum(count_over_time(hopwatch_latency_raw_seconds{service="ledger"}[10m]))`)
	require.True(t, ok, "the raw tier holds the batch")
	require.Equal(t, float64(n), raw, fmt.Sprintf("the raw tier holds the batch once, not %v times", raw/n))
}

// nodeStub is a span of service on node (service.instance.id) in trace
// trace.
func nodeStub(service, node string, kind trace.SpanKind, trace0 byte, span, parent byte, start, end time.Time) tracetest.SpanStub {
	sc := func(id byte) trace.SpanContext {
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{trace0}, SpanID: trace.SpanID{id}, TraceFlags: trace.FlagsSampled})
	}
	st := tracetest.SpanStub{
		Name: "op", SpanContext: sc(span), SpanKind: kind, StartTime: start, EndTime: end,
		Resource:             resource.NewSchemaless(attribute.String("service.name", service), attribute.String("service.instance.id", node)),
		InstrumentationScope: instrumentation.Scope{Name: "clocks"},
	}
	if parent != 0 {
		st.Parent = sc(parent)
	}
	return st
}

// TestQueueHopsBeforeAnyRoundTrip: a message between two nodes seen
// before any request between them is stored with the clock offset the
// first request gives, not with the nodes' clock difference in it; a
// message between two nodes no request ever joins is counted as
// no_clock_offset once the pairing wait ends, and not stored.
func TestQueueHopsBeforeAnyRoundTrip(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		c.Ingest.Graph.Wait = 2 * time.Second
	})
	const tenantID = "clocks"
	ctx := context.Background()
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
		otlptracehttp.WithHeaders(map[string]string{"X-Scope-OrgID": tenantID}))
	require.NoError(t, err)
	defer exp.Shutdown(ctx)

	const skew = 250 * time.Millisecond // node b's clock is ahead of a's
	const truth = 3 * time.Millisecond  // the message's real wait
	t0 := time.Now().Add(-time.Minute).Truncate(time.Second)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	messages := tracetest.SpanStubs{
		nodeStub("orders", "a", trace.SpanKindProducer, 1, 1, 0, at(0), at(time.Millisecond)),
		nodeStub("billing", "b", trace.SpanKindConsumer, 1, 2, 1, at(time.Millisecond+truth+skew), at(10*time.Millisecond+skew)),
		// Nodes c and d: no request between them, ever.
		nodeStub("orders", "c", trace.SpanKindProducer, 2, 1, 0, at(0), at(time.Millisecond)),
		nodeStub("billing", "d", trace.SpanKindConsumer, 2, 2, 1, at(time.Millisecond+truth+skew), at(10*time.Millisecond+skew)),
	}
	require.NoError(t, exp.ExportSpans(ctx, messages.Snapshots()))
	require.Equal(t, 2.0, counter(t, reg, "hopwatch_service_graph_held_queue_hops", nil), "both messages wait for an offset")
	// A request from a to b, 100 µs each way: the offset is the skew.
	request := tracetest.SpanStubs{
		nodeStub("orders", "a", trace.SpanKindClient, 3, 1, 0, at(time.Second), at(time.Second+2*time.Millisecond)),
		nodeStub("billing", "b", trace.SpanKindServer, 3, 2, 1, at(time.Second+100*time.Microsecond+skew), at(time.Second+1900*time.Microsecond+skew)),
	}
	require.NoError(t, exp.ExportSpans(ctx, request.Snapshots()))

	c := promClient(t, addrs.Web, tenantID)
	waitFor(t, "the queue time flushed", func() bool {
		_, ok := queryScalar(t, c, `sum(hopwatch_hop_queue_seconds_count)`)
		return ok
	})
	n, _ := queryScalar(t, c, `sum(hopwatch_hop_queue_seconds_count)`)
	require.Equal(t, 1.0, n, "one message stored: the one between a and b")
	sum, _ := queryScalar(t, c, `sum(hopwatch_hop_queue_seconds_sum)`)
	require.InDelta(t, truth.Seconds(), sum, 1e-9, "stored corrected, not with the %s clock difference", skew)

	waitFor(t, "the message between c and d counted as no_clock_offset", func() bool {
		return counter(t, reg, "hopwatch_discarded_samples_total", map[string]string{"tenant": tenantID, "reason": "no_clock_offset"}) == 1
	})
	n, _ = queryScalar(t, c, `sum(hopwatch_hop_queue_seconds_count)`)
	require.Equal(t, 1.0, n, "and not stored")
	require.Zero(t, counter(t, reg, "hopwatch_service_graph_held_queue_hops", nil))
}
