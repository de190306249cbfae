package server_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/server"
)

func dialGRPC(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// hopBatch builds a batch of n records of one stage series, 1 ms apart,
// each lasting dur, ending at most at end.
func hopBatch(seq uint64, n int, first time.Time, dur time.Duration) *hopwatchv1.StreamRequest {
	b := &hopwatchv1.HopBatch{
		Seq: seq,
		Series: []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_STAGE, Labels: []*hopwatchv1.Label{
			{Name: "service", Value: "queue-worker"}, {Name: "span_name", Value: "consume"},
			{Name: "from_stage", Value: "enqueue"}, {Name: "to_stage", Value: "dequeue"}}}},
	}
	prev := int64(0)
	for i := range n {
		t := first.Add(time.Duration(i) * time.Millisecond).UnixNano()
		b.SeriesIndex = append(b.SeriesIndex, 0)
		b.StartTimeDeltaUnixNano = append(b.StartTimeDeltaUnixNano, t-prev)
		b.DurationNano = append(b.DurationNano, uint64(dur))
		prev = t
	}
	return &hopwatchv1.StreamRequest{Batch: b}
}

// TestStreamingIngest drives hopwatch.v1.IngestService with a generated
// client: credit, acknowledgements, idempotent resend, the records in
// PromQL, the writer in the watermark, and live per-message counters.
func TestStreamingIngest(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		c.Ingest.StreamWindow = 4
	})
	conn := dialGRPC(t, addrs.OTLPGRPC)
	client := hopwatchv1.NewIngestServiceClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", "team-s", "x-hopwatch-writer", "loader-1")

	stream, err := client.Stream(ctx)
	require.NoError(t, err)
	first, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, uint64(0), first.GetSeq())
	require.Equal(t, uint32(4), first.GetCredit(), "initial credit is the configured window")

	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	for seq := uint64(1); seq <= 4; seq++ { // the whole window, before any ack
		require.NoError(t, stream.Send(hopBatch(seq, 250, start.Add(time.Duration(seq)*time.Second), 3*time.Millisecond)))
	}
	// Live counters: four messages received while the stream is open.
	waitFor(t, "grpc_server_msg_received_total for the open stream", func() bool {
		return counter(t, reg, "grpc_server_msg_received_total", map[string]string{"grpc_service": "hopwatch.v1.IngestService", "grpc_method": "Stream", "grpc_type": "bidi_stream"}) == 4
	})
	for seq := uint64(1); seq <= 4; seq++ {
		ack, err := stream.Recv()
		require.NoError(t, err)
		require.Equal(t, seq, ack.GetSeq())
		require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, ack.GetStatus(), ack.GetErrorMessage())
		require.Equal(t, uint32(250), ack.GetAcceptedRecords())
		require.Equal(t, uint32(1), ack.GetCredit())
	}
	require.Equal(t, float64(5), counter(t, reg, "grpc_server_msg_sent_total", map[string]string{"grpc_service": "hopwatch.v1.IngestService", "grpc_method": "Stream", "grpc_type": "bidi_stream"}))

	// A resend after a reconnect: seq 3 and 4 again, then 5; duplicates are
	// acknowledged and not applied.
	require.NoError(t, stream.CloseSend())
	_, err = stream.Recv()
	require.ErrorContains(t, err, "EOF")
	stream, err = client.Stream(ctx)
	require.NoError(t, err)
	_, err = stream.Recv()
	require.NoError(t, err)
	for _, seq := range []uint64{3, 4, 5} {
		require.NoError(t, stream.Send(hopBatch(seq, 250, start.Add(time.Duration(seq)*time.Second), 3*time.Millisecond)))
		ack, err := stream.Recv()
		require.NoError(t, err)
		want := hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE
		if seq == 5 {
			want = hopwatchv1.AckStatus_ACK_STATUS_OK
		}
		require.Equal(t, want, ack.GetStatus(), "seq %d", seq)
	}
	require.Equal(t, float64(2), counter(t, reg, "hopwatch_stream_duplicate_batches_total", nil))

	// A malformed batch is refused, with the reason, and the stream goes on.
	bad := hopBatch(6, 3, start, time.Millisecond)
	bad.Batch.DurationNano = bad.Batch.DurationNano[:2]
	require.NoError(t, stream.Send(bad))
	ack, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_REJECTED, ack.GetStatus())
	require.Contains(t, ack.GetErrorMessage(), "columns of different lengths")
	unknown := hopBatch(7, 1, start, time.Millisecond)
	unknown.Batch.Series[0].Labels = append(unknown.Batch.Series[0].Labels, &hopwatchv1.Label{Name: "pod", Value: "x"})
	require.NoError(t, stream.Send(unknown))
	ack, err = stream.Recv()
	require.NoError(t, err)
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_REJECTED, ack.GetStatus())
	require.Contains(t, ack.GetErrorMessage(), `label "pod" is not one of`)

	// Every record of seq 1..5 exactly once, in PromQL.
	prom := promClient(t, addrs.Web, "team-s")
	q := `sum(hopwatch_stage_duration_seconds_count{service="queue-worker",from_stage="enqueue",to_stage="dequeue"})`
	waitFor(t, "streamed stage records in PromQL", func() bool {
		v, ok := queryScalar(t, prom, q)
		return ok && v == 5*250
	})
	// The writer holds the tenant's watermark at its last record's end.
	code, resp := call(t, addrs.Web, "team-s", http.MethodGet, "/api/v1/writers", nil)
	require.Equal(t, http.StatusOK, code)
	var ws struct {
		Watermark float64
		Writers   []struct {
			Writer, State string
			Position      float64
		}
	}
	require.NoError(t, json.Unmarshal(resp.Data, &ws))
	require.Len(t, ws.Writers, 1)
	require.Equal(t, "loader-1", ws.Writers[0].Writer)
	require.Equal(t, "active", ws.Writers[0].State)
	lastEnd := start.Add(5*time.Second + 249*time.Millisecond + 3*time.Millisecond)
	require.InDelta(t, float64(lastEnd.UnixNano())/1e9, ws.Writers[0].Position, 1e-6)
	require.InDelta(t, ws.Writers[0].Position, ws.Watermark, 1e-6)

	// Excluded by API while its stream stays open: the stream goes on, the
	// writer stays out of the watermark.
	wc := hopwatchv1.NewWriterServiceClient(conn)
	tctx := metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", "team-s")
	ex, err := wc.ExcludeWriter(tctx, &hopwatchv1.ExcludeWriterRequest{Writer: "loader-1"})
	require.NoError(t, err)
	require.Equal(t, hopwatchv1.WriterState_WRITER_STATE_EXCLUDED, ex.GetWriter().GetState())
	require.NoError(t, stream.Send(hopBatch(8, 10, start.Add(8*time.Second), time.Millisecond)))
	ack, err = stream.Recv()
	require.NoError(t, err)
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, ack.GetStatus())
	list, err := wc.ListWriters(tctx, &hopwatchv1.ListWritersRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetWriters(), 1)
	require.Equal(t, hopwatchv1.WriterState_WRITER_STATE_EXCLUDED, list.GetWriters()[0].GetState())
	require.Equal(t, start.Add(8*time.Second+9*time.Millisecond+time.Millisecond).UnixNano(), list.GetWriters()[0].GetPositionUnixNano())
	_, err = wc.ListWriters(context.Background(), &hopwatchv1.ListWritersRequest{})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "the writer API needs a tenant with multi-tenancy on")

	// Credit is enforced: a client that sends beyond it loses the stream.
	greedy, err := client.Stream(metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", "team-s", "x-hopwatch-writer", "greedy"))
	require.NoError(t, err)
	_, err = greedy.Recv()
	require.NoError(t, err)
	// Sending is far faster than applying 1000 records, so the server's
	// reader sees batch 5 before the first acknowledgement is out.
	for seq := uint64(1); seq <= 50; seq++ {
		if greedy.Send(hopBatch(seq, 1000, start, time.Millisecond)) != nil {
			break
		}
	}
	_ = greedy.CloseSend()
	for err == nil {
		_, err = greedy.Recv()
	}
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "beyond the stream's credit")

	// A stream without a writer is refused.
	nowriter, err := client.Stream(metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", "team-s"))
	require.NoError(t, err)
	_, err = nowriter.Recv()
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Equal(t, float64(1), counter(t, reg, "hopwatch_otlp_requests_refused_total", map[string]string{"protocol": "stream", "reason": "invalid_writer"}))
}

// TestWatermarkWritersOverOTLP: OTLP writers named by service.instance.id
// and by the writer header hold the watermark; exclusion over HTTP and gRPC
// takes one out at once, and inclusion puts it back.
func TestWatermarkWritersOverOTLP(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, nil)
	ctx := context.Background()
	now := time.Now()
	send := func(instance string, header map[string]string, end time.Time) {
		t.Helper()
		opts := []otlptracehttp.Option{otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure()}
		if header != nil {
			opts = append(opts, otlptracehttp.WithHeaders(header))
		}
		exp, err := otlptracehttp.New(ctx, opts...)
		require.NoError(t, err)
		attrs := []attribute.KeyValue{attribute.String("service.name", "checkout")}
		if instance != "" {
			attrs = append(attrs, attribute.String("service.instance.id", instance))
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithResource(resource.NewSchemaless(attrs...)), sdktrace.WithSyncer(exp))
		_, span := tp.Tracer("wm").Start(ctx, "pay", trace.WithTimestamp(end.Add(-10*time.Millisecond)))
		span.End(trace.WithTimestamp(end))
		require.NoError(t, tp.Shutdown(ctx))
	}
	lagging, current := now.Add(-40*time.Second), now.Add(-2*time.Second)
	send("pod-a", nil, lagging)
	send("pod-b", nil, current)
	send("", map[string]string{"X-Hopwatch-Writer": "backfill-job"}, current)

	writers := func() (float64, map[string]string) {
		code, resp := call(t, addrs.Web, "", http.MethodGet, "/api/v1/writers", nil)
		require.Equal(t, http.StatusOK, code)
		var ws struct {
			Watermark float64
			Writers   []struct{ Writer, State string }
		}
		require.NoError(t, json.Unmarshal(resp.Data, &ws))
		m := map[string]string{}
		for _, w := range ws.Writers {
			m[w.Writer] = w.State
		}
		return ws.Watermark, m
	}
	mark, states := writers()
	require.Equal(t, map[string]string{"pod-a": "active", "pod-b": "active", "backfill-job": "active"}, states)
	require.InDelta(t, float64(lagging.UnixNano())/1e9, mark, 1e-6, "the slowest writer holds the watermark")
	require.InDelta(t, float64(lagging.UnixNano())/1e9, counter(t, reg, "hopwatch_watermark_seconds", map[string]string{"tenant": "anonymous"}), 1e-6)

	// Exclude over HTTP: the watermark moves at once, without a timeout.
	code, resp := call(t, addrs.Web, "", http.MethodPost, "/api/v1/writers/pod-a/exclude", url.Values{})
	require.Equal(t, http.StatusOK, code, resp.Error)
	mark, states = writers()
	require.Equal(t, "excluded", states["pod-a"])
	require.InDelta(t, float64(current.UnixNano())/1e9, mark, 1e-6)
	// Writing does not re-include it.
	send("pod-a", nil, lagging.Add(time.Second))
	_, states = writers()
	require.Equal(t, "excluded", states["pod-a"])

	// Include over gRPC; unknown writers are NotFound.
	wc := hopwatchv1.NewWriterServiceClient(dialGRPC(t, addrs.OTLPGRPC))
	inc, err := wc.IncludeWriter(ctx, &hopwatchv1.IncludeWriterRequest{Writer: "pod-a"})
	require.NoError(t, err)
	require.Equal(t, hopwatchv1.WriterState_WRITER_STATE_ACTIVE, inc.GetWriter().GetState())
	_, err = wc.ExcludeWriter(ctx, &hopwatchv1.ExcludeWriterRequest{Writer: "nobody"})
	require.Equal(t, codes.NotFound, status.Code(err))
	list, err := wc.ListWriters(ctx, &hopwatchv1.ListWritersRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetWriters(), 3)
	require.Equal(t, current.UnixNano(), list.GetWatermarkUnixNano(), "the watermark never goes back")
	code, resp = call(t, addrs.Web, "", http.MethodGet, "/api/v1/writers/pod-a/exclude", url.Values{})
	require.Equal(t, http.StatusMethodNotAllowed, code)
	require.Contains(t, resp.Error, "use POST")
	code, resp = call(t, addrs.Web, "", http.MethodPost, "/api/v1/writers/nobody/exclude", url.Values{})
	require.Equal(t, http.StatusNotFound, code)
	require.Contains(t, resp.Error, "no such writer")
	require.Equal(t, 2.0, counter(t, reg, "hopwatch_writer_api_requests_total", map[string]string{"action": "exclude", "result": "unknown_writer"}), "the gRPC NotFound and the HTTP 404")
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_writer_api_requests_total", map[string]string{"action": "exclude", "result": "ok"}))
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_writer_api_requests_total", map[string]string{"action": "include", "result": "ok"}))
	require.Greater(t, counter(t, reg, "hopwatch_late_spans_total", map[string]string{"tenant": "anonymous"}), 0.0,
		"pod-a's second span ended before the watermark")
}

// TestStreamResendAfterRestart: batches applied before a restart are
// recognised when a client resends them to the restarted node.
func TestStreamResendAfterRestart(t *testing.T) {
	dir := t.TempDir()
	start := time.Now().Add(-time.Minute).Truncate(time.Second)
	send := func(addrs server.Addrs, seqs ...uint64) []hopwatchv1.AckStatus {
		t.Helper()
		conn := dialGRPC(t, addrs.OTLPGRPC)
		ctx := metadata.AppendToOutgoingContext(context.Background(), "x-hopwatch-writer", "restarter")
		stream, err := hopwatchv1.NewIngestServiceClient(conn).Stream(ctx)
		require.NoError(t, err)
		_, err = stream.Recv()
		require.NoError(t, err)
		var out []hopwatchv1.AckStatus
		for _, seq := range seqs {
			require.NoError(t, stream.Send(hopBatch(seq, 100, start.Add(time.Duration(seq)*time.Second), time.Millisecond)))
			ack, err := stream.Recv()
			require.NoError(t, err)
			out = append(out, ack.GetStatus())
		}
		require.NoError(t, stream.CloseSend())
		return out
	}
	ok, dup := hopwatchv1.AckStatus_ACK_STATUS_OK, hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE
	srv, addrs := startServer(t, func(c *server.Config) { c.Storage.Dir = dir })
	require.Equal(t, []hopwatchv1.AckStatus{ok, ok, ok}, send(addrs, 1, 2, 3))
	// A stream left open does not hold the shutdown: it ends UNAVAILABLE.
	open, err := hopwatchv1.NewIngestServiceClient(dialGRPC(t, addrs.OTLPGRPC)).Stream(
		metadata.AppendToOutgoingContext(context.Background(), "x-hopwatch-writer", "idle"))
	require.NoError(t, err)
	_, err = open.Recv()
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))
	_, err = open.Recv()
	require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "shutting down")

	_, addrs = startServer(t, func(c *server.Config) { c.Storage.Dir = dir })
	require.Equal(t, []hopwatchv1.AckStatus{dup, dup, ok}, send(addrs, 2, 3, 4))
	prom := promClient(t, addrs.Web, "")
	waitFor(t, "four batches counted once", func() bool {
		v, ok := queryScalar(t, prom, `sum(hopwatch_stage_duration_seconds_count{service="queue-worker"})`)
		return ok && v == 400
	})
}
