package ingest

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/resource"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/ratelimit"
	"github.com/hopwatch/hopwatch/sample"
)

// takenLimiter admits everything and keeps the units taken and not given
// back.
type takenLimiter struct {
	mtx   sync.Mutex
	taken int64
}

func (l *takenLimiter) AllowN(_ string, n int64) ratelimit.Decision {
	l.mtx.Lock()
	l.taken += n
	l.mtx.Unlock()
	return ratelimit.Decision{Allowed: true}
}

func (l *takenLimiter) ReturnN(_ string, n int64) {
	l.mtx.Lock()
	l.taken -= n
	l.mtx.Unlock()
}

func (l *takenLimiter) net() int64 {
	l.mtx.Lock()
	defer l.mtx.Unlock()
	return l.taken
}

// hopStub is a span of service on node, in trace 1.
func hopStub(service, node string, kind trace.SpanKind, span, parent byte, start, end time.Time) tracetest.SpanStub {
	sc := func(id byte) trace.SpanContext {
		return trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{id}, TraceFlags: trace.FlagsSampled})
	}
	st := tracetest.SpanStub{
		Name: "op", SpanContext: sc(span), SpanKind: kind, StartTime: start, EndTime: end,
		Resource:             resource.NewSchemaless(attribute.String("service.name", service), attribute.String("service.instance.id", node)),
		InstrumentationScope: instrumentation.Scope{Name: "outcome"},
	}
	if parent != 0 {
		st.Parent = sc(parent)
	}
	return st
}

// TestFailedExportTakesNothing: an OTLP export whose append fails is
// answered "not kept", and nothing of it stays applied: the service graph
// pairing it did is taken back and the rate limits' tokens are returned,
// so that the exporter's retry pairs and is counted exactly once.
func TestFailedExportTakesNothing(t *testing.T) {
	app := &recordingAppender{families: map[sample.Family]int{}}
	r, err := New(DefaultOptions(), app, nil, nil)
	require.NoError(t, err)
	spans, bytes := &takenLimiter{}, &takenLimiter{}
	r.SetRateLimits(RateLimits{Spans: spans, Bytes: bytes})
	srv := httptest.NewServer(r.HTTPHandler())
	defer srv.Close()
	ctx := context.Background()
	exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(srv.Listener.Addr().String()), otlptracehttp.WithInsecure(),
		otlptracehttp.WithRetry(otlptracehttp.RetryConfig{Enabled: false}))
	require.NoError(t, err)
	defer exp.Shutdown(ctx)

	t0 := time.Now().Add(-time.Minute)
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	// Kept: a server span on node b waiting for its client, and a message
	// from node a to node b, held until the two nodes' clock offset is
	// known.
	first := tracetest.SpanStubs{
		hopStub("api", "b", trace.SpanKindServer, 2, 1, ms(1), ms(9)),
		hopStub("proc", "a", trace.SpanKindProducer, 5, 0, ms(0), ms(1)),
		hopStub("idx", "b", trace.SpanKindConsumer, 6, 5, ms(4), ms(5)),
	}
	require.NoError(t, exp.ExportSpans(ctx, first.Snapshots()))
	require.Equal(t, 1, r.pairs.pendingCount())
	require.Equal(t, 1, r.pairs.heldCountOf("anonymous"))
	takenBefore, bytesBefore := spans.net(), bytes.net()

	// Its client on node a: pairs, gives the offset, releases the message.
	second := tracetest.SpanStubs{hopStub("web", "a", trace.SpanKindClient, 1, 0, ms(0), ms(10))}.Snapshots()
	app.setFail(true)
	require.Error(t, exp.ExportSpans(ctx, second))
	require.Equal(t, takenBefore, spans.net(), "tokens of a request not kept are given back")
	require.Equal(t, bytesBefore, bytes.net())
	require.Equal(t, 1, r.pairs.pendingCount(), "the server span waits again")
	require.Equal(t, 1, r.pairs.heldCountOf("anonymous"), "the message is held again")

	app.setFail(false)
	require.NoError(t, exp.ExportSpans(ctx, second), "the retry")
	require.Equal(t, takenBefore+1, spans.net())
	require.Zero(t, r.pairs.pendingCount())
	require.Zero(t, r.pairs.heldCountOf("anonymous"))
	require.Equal(t, map[sample.Family]int{
		sample.FamilySpan:        4,
		sample.FamilyEdgeServer:  2, // web → api, and proc → idx (messaging)
		sample.FamilyEdgeClient:  2,
		sample.FamilyNetwork:     1,
		sample.FamilyClockOffset: 1,
		sample.FamilyQueue:       1,
	}, app.families, "the edge, its hop times and the message's queue time once each")
}

// TestStreamBatchNotAppliedReturnsTokens: a streamed batch that storage
// could not take, or that it already holds (a resend after a restart),
// gives its rate-limit tokens back: only applied batches pay.
func TestStreamBatchNotAppliedReturnsTokens(t *testing.T) {
	app := &flakyAppender{}
	r, err := New(DefaultOptions(), app, nil, nil)
	require.NoError(t, err)
	spans, bytes := &takenLimiter{}, &takenLimiter{}
	r.SetRateLimits(RateLimits{Spans: spans, Bytes: bytes})
	w := r.work.Get().(*work)
	batch := &hopwatchv1.HopBatch{
		Seq:                    1,
		Series:                 []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_NETWORK, Labels: hopLabels("client", "a", "server", "b")}},
		SeriesIndex:            []uint32{0, 0},
		StartTimeDeltaUnixNano: []int64{1000, 1000},
		DurationNano:           []uint64{5, 6},
	}
	apply := func(dedup *streamWriter) hopwatchv1.AckStatus {
		ack, _ := r.applyBatch(context.Background(), "anonymous", "w", dedup, w, batch)
		return ack.GetStatus()
	}
	app.fail = true
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, apply(r.streams.get("anonymous", "w")))
	require.Zero(t, spans.net(), "a batch storage could not take pays nothing")
	require.Zero(t, bytes.net())
	app.fail = false
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, apply(r.streams.get("anonymous", "w")))
	require.Equal(t, int64(2), spans.net())
	paid := bytes.net()
	require.Positive(t, paid)

	// Storage knows the seq (as after a restart, when the stream's own
	// record is gone): a duplicate, not paid again.
	app.duplicate = true
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE, apply(&streamWriter{}))
	require.Equal(t, int64(2), spans.net())
	require.Equal(t, paid, bytes.net())
}
