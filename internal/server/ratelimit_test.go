package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/ratelimit"
)

// TestRateLimits: a tenant's ingestion rate limit, set through the admin
// API on a running node, refuses requests over it as a whole, before
// anything is written: OTLP/HTTP with 429 and Retry-After, OTLP/gRPC with
// RESOURCE_EXHAUSTED and RetryInfo. The OpenTelemetry SDK's exporters,
// with their default retry, are refused, wait as told, and deliver every
// span in the end; the refusals are counted.
func TestRateLimits(t *testing.T) {
	const (
		tenantID = "limited"
		rate     = 50 // spans/s, cluster-wide
		burst    = 60
		batch    = 40 // spans per request: under the burst, so every request fits in time
	)
	reg := prometheus.NewRegistry()
	srv, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		c.Ingest.Stages.Names = nil
	})
	base := "http://" + addrs.Web
	waitFor(t, "the tenant's limits through the admin API", func() bool {
		code, _, _ := httpDo(t, http.DefaultClient, http.MethodPut, base+"/api/v1/admin/tenants/"+tenantID, "application/json",
			fmt.Appendf(nil, `{"limits":{"ingestion_rate_spans":%d,"ingestion_burst_spans":%d}}`, rate, burst), nil)
		return code == http.StatusCreated || code == http.StatusOK
	})
	waitFor(t, "the limit in force", func() bool {
		return server.TenantRateLimit(srv, tenantID) == ratelimit.Limit{Rate: rate, Burst: burst}
	})

	start := time.Now().Add(-time.Minute)
	request := func(service string, n int) []byte { return spansRequest(t, service, n, start) }
	requireMessage := func(msg string) {
		t.Helper()
		// The cluster-wide limit and the flags that change it, never the
		// node's share.
		require.Contains(t, msg, "rate_limited")
		require.Contains(t, msg, fmt.Sprintf("%d spans/s with a burst of %d", rate, burst))
		require.Contains(t, msg, "--limits.ingestion-rate-spans")
	}

	// OTLP/HTTP: requests go through until the bucket is empty, then 429.
	admittedHTTP := 0
	for {
		code, hdr, body := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf",
			request("raw-http", batch), map[string]string{tenant.Header: tenantID})
		if code == http.StatusOK {
			admittedHTTP += batch
			continue
		}
		require.Equal(t, http.StatusTooManyRequests, code, "%s", body)
		secs, err := strconv.Atoi(hdr.Get("Retry-After"))
		require.NoError(t, err, "Retry-After %q", hdr.Get("Retry-After"))
		require.GreaterOrEqual(t, secs, 1)
		var st spb.Status
		require.NoError(t, proto.Unmarshal(body, &st))
		require.Equal(t, int32(codes.ResourceExhausted), st.GetCode())
		requireMessage(st.GetMessage())
		var info errdetails.RetryInfo
		require.Len(t, st.GetDetails(), 1)
		require.NoError(t, st.GetDetails()[0].UnmarshalTo(&info))
		require.Positive(t, info.GetRetryDelay().AsDuration())
		break
	}
	require.Positive(t, admittedHTTP, "the bucket starts full")

	// A request larger than the burst never fits: 413, no Retry-After.
	code, hdr, body := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf",
		request("raw-http", burst+1), map[string]string{tenant.Header: tenantID})
	require.Equal(t, http.StatusRequestEntityTooLarge, code, "%s", body)
	require.Empty(t, hdr.Get("Retry-After"))

	// OTLP/gRPC: RESOURCE_EXHAUSTED with RetryInfo.
	conn, err := grpc.NewClient(addrs.OTLPGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := ptraceotlp.NewGRPCClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), tenant.Header, tenantID)
	admittedGRPC := 0
	for {
		req := ptraceotlp.NewExportRequest()
		require.NoError(t, req.UnmarshalProto(request("raw-grpc", batch)))
		_, err := client.Export(ctx, req)
		if err == nil {
			admittedGRPC += batch
			continue
		}
		st := status.Convert(err)
		require.Equal(t, codes.ResourceExhausted, st.Code(), "%v", err)
		requireMessage(st.Message())
		var info *errdetails.RetryInfo
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				info = ri
			}
		}
		require.NotNil(t, info, "RESOURCE_EXHAUSTED without RetryInfo: OTLP exporters would not retry")
		require.Positive(t, info.GetRetryDelay().AsDuration())
		break
	}

	// The SDK's exporters, their default retry on, over both protocols at
	// once, competing for the tenant's limit. The export timeout (10 s by
	// default) bounds an export with its retries, and is shorter than two
	// of the retry's backoffs (5 s, ×1.5, jittered by ±50%); a long one
	// leaves the retry policy's own bound (a minute) in charge.
	const sdkBatches = 3
	hdrs := map[string]string{tenant.Header: tenantID}
	gexp, err := otlptracegrpc.New(context.Background(), otlptracegrpc.WithEndpoint(addrs.OTLPGRPC), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithHeaders(hdrs), otlptracegrpc.WithTimeout(5*time.Minute))
	require.NoError(t, err)
	hexp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
		otlptracehttp.WithHeaders(hdrs), otlptracehttp.WithTimeout(5*time.Minute))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for _, e := range []struct {
		service string
		exp     sdktrace.SpanExporter
	}{{"sdk-grpc", gexp}, {"sdk-http", hexp}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range sdkBatches {
				if err := e.exp.ExportSpans(context.Background(), sdkSpans(e.service, i, batch, start)); err != nil {
					t.Errorf("%s: batch %d not delivered: %v", e.service, i, err)
				}
			}
			if err := e.exp.Shutdown(context.Background()); err != nil {
				t.Errorf("%s: %v", e.service, err)
			}
		}()
	}
	wg.Wait()

	// Everything admitted is in the aggregates, and nothing refused.
	prom := promClient(t, addrs.Web, tenantID)
	for service, want := range map[string]int{"raw-http": admittedHTTP, "raw-grpc": admittedGRPC, "sdk-grpc": sdkBatches * batch, "sdk-http": sdkBatches * batch} {
		waitFor(t, service+" spans in the aggregates", func() bool {
			v, _ := queryScalar(t, prom, fmt.Sprintf(`sum(traces_spanmetrics_calls_total{service=%q})`, service))
			return v == float64(want) // no series reads as 0

		})
	}
	// Flushes have run since the raw requests' refusals (the SDKs' retries
	// take seconds): had a refused request been written, it would show.
	for service, want := range map[string]int{"raw-http": admittedHTTP, "raw-grpc": admittedGRPC} {
		v, _ := queryScalar(t, prom, fmt.Sprintf(`sum(traces_spanmetrics_calls_total{service=%q})`, service))
		require.Equal(t, float64(want), v, "%s: a refused request was written", service)
	}

	discarded := counter(t, reg, "hopwatch_discarded_samples_total", map[string]string{"tenant": tenantID, "reason": "rate_limited"})
	// The raw requests refused (one each, plus the one over the burst), and
	// the SDKs' refused attempts.
	require.GreaterOrEqual(t, discarded, float64(2*batch+burst+1))
	refused := counter(t, reg, "hopwatch_ratelimit_refused_total", map[string]string{"limit": "spans", "tenant": tenantID})
	require.Positive(t, refused)
	admitted := counter(t, reg, "hopwatch_ratelimit_admitted_total", map[string]string{"limit": "spans", "tenant": tenantID})
	require.Equal(t, float64(admittedHTTP+admittedGRPC+2*sdkBatches*batch), admitted)
	t.Logf("discarded %v spans (rate_limited), limiter refused %v, admitted %v", discarded, refused, admitted)
}

// sdkSpans are n finished spans of service, as an SDK's span processor
// hands them to its exporter.
func sdkSpans(service string, b, n int, start time.Time) []sdktrace.ReadOnlySpan {
	res := resource.NewSchemaless(attribute.String("service.name", service))
	stubs := make(tracetest.SpanStubs, n)
	for i := range stubs {
		stubs[i] = tracetest.SpanStub{
			Name: "op",
			SpanContext: trace.NewSpanContext(trace.SpanContextConfig{
				TraceID: trace.TraceID{byte(b + 1), byte(i + 1), 1},
				SpanID:  trace.SpanID{byte(i + 1), 1},
			}),
			SpanKind:  trace.SpanKindInternal,
			StartTime: start,
			EndTime:   start.Add(time.Millisecond),
			Resource:  res,
		}
	}
	return stubs.Snapshots()
}

// TestRateLimitsStream: a streamed batch over the tenant's rate limit is
// answered UNAVAILABLE, naming the limit, and its credit comes only in a
// later message, once its retry delay has passed; sent again with the same
// seq after that, it is applied.
func TestRateLimitsStream(t *testing.T) {
	const tenantID, records = "limited-stream", 60
	reg := prometheus.NewRegistry()
	srv, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.MultitenancyEnabled = true
		c.Ingest.StreamWindow = 4
	})
	base := "http://" + addrs.Web
	waitFor(t, "the tenant's limits through the admin API", func() bool {
		code, _, _ := httpDo(t, http.DefaultClient, http.MethodPut, base+"/api/v1/admin/tenants/"+tenantID, "application/json",
			[]byte(`{"limits":{"ingestion_rate_spans":100,"ingestion_burst_spans":100}}`), nil)
		return code == http.StatusCreated || code == http.StatusOK
	})
	waitFor(t, "the limit in force", func() bool {
		return server.TenantRateLimit(srv, tenantID) == ratelimit.Limit{Rate: 100, Burst: 100}
	})

	client := hopwatchv1.NewIngestServiceClient(dialGRPC(t, addrs.OTLPGRPC))
	ctx := metadata.AppendToOutgoingContext(context.Background(), tenant.Header, tenantID, "x-hopwatch-writer", "loader-1")
	stream, err := client.Stream(ctx)
	require.NoError(t, err)
	first, err := stream.Recv()
	require.NoError(t, err)
	credit := first.GetCredit()

	start := time.Now().Add(-time.Minute)
	send := func(seq uint64) {
		t.Helper()
		require.Positive(t, credit, "no credit to send batch %d", seq)
		credit--
		require.NoError(t, stream.Send(hopBatch(seq, records, start.Add(time.Duration(seq)*time.Second), time.Millisecond)))
	}
	// recv returns the next acknowledgement, adding up the credit granted
	// on the way.
	recv := func() *hopwatchv1.StreamResponse {
		t.Helper()
		for {
			m, err := stream.Recv()
			require.NoError(t, err)
			credit += m.GetCredit()
			if m.GetSeq() != 0 {
				return m
			}
		}
	}

	// Batches go through until the bucket is empty.
	seq := uint64(1)
	for ; ; seq++ {
		send(seq)
		ack := recv()
		require.Equal(t, seq, ack.GetSeq())
		if ack.GetStatus() == hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE {
			require.Contains(t, ack.GetErrorMessage(), "rate_limited")
			require.Contains(t, ack.GetErrorMessage(), "100 spans/s with a burst of 100")
			require.Zero(t, ack.GetCredit(), "a refused batch's credit is withheld until its retry delay has passed")
			break
		}
		require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, ack.GetStatus(), ack.GetErrorMessage())
	}
	// The credit comes back on its own, then the batch is sent again until
	// it is applied.
	for {
		for credit == 0 {
			m, err := stream.Recv()
			require.NoError(t, err)
			require.Zero(t, m.GetSeq())
			credit += m.GetCredit()
		}
		send(seq)
		ack := recv()
		require.Equal(t, seq, ack.GetSeq())
		if ack.GetStatus() == hopwatchv1.AckStatus_ACK_STATUS_OK {
			break
		}
		require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, ack.GetStatus(), ack.GetErrorMessage())
	}
	require.NoError(t, stream.CloseSend())
	require.GreaterOrEqual(t, counter(t, reg, "hopwatch_discarded_samples_total", map[string]string{"tenant": tenantID, "reason": "rate_limited"}), float64(records))
}

// TestRateLimitsBytes: a tenant's bytes limit refuses a request over it
// with 429 and names the bytes flag; the spans the spans limit had
// admitted for it are given back, and nothing of it is written.
func TestRateLimitsBytes(t *testing.T) {
	const tenantID = "bytes-limited"
	reg := prometheus.NewRegistry()
	srv, addrs := startServerReg(t, reg, func(c *server.Config) { c.MultitenancyEnabled = true })
	base := "http://" + addrs.Web
	// 4,000 bytes/s (a burst of one second of it); 1 span/s with a burst
	// of 1,000: the bytes limit is the one reached, and the spans bucket
	// barely refills while the test looks at it.
	waitFor(t, "the tenant's limits through the admin API", func() bool {
		code, _, _ := httpDo(t, http.DefaultClient, http.MethodPut, base+"/api/v1/admin/tenants/"+tenantID, "application/json",
			[]byte(`{"limits":{"ingestion_rate_bytes":4000,"ingestion_rate_spans":1,"ingestion_burst_spans":1000}}`), nil)
		return code == http.StatusCreated || code == http.StatusOK
	})
	waitFor(t, "the limits in force", func() bool {
		return server.TenantBytesLimit(srv, tenantID).Rate == 4000 && server.TenantRateLimit(srv, tenantID).Rate == 1
	})
	body := spansRequest(t, "bytes", 20, time.Now().Add(-time.Minute))
	require.Less(t, len(body), 4000, "a request fits in the burst")

	sent, refused := 0, false
	for range 4000/len(body) + 2 {
		code, hdr, resp := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf",
			body, map[string]string{tenant.Header: tenantID})
		if code == http.StatusOK {
			sent += 20
			continue
		}
		require.Equal(t, http.StatusTooManyRequests, code, "%s", resp)
		require.NotEmpty(t, hdr.Get("Retry-After"))
		var st spb.Status
		require.NoError(t, proto.Unmarshal(resp, &st))
		require.Contains(t, st.GetMessage(), "--limits.ingestion-rate-bytes")
		require.Contains(t, st.GetMessage(), "bytes/s")
		refused = true
		break
	}
	require.True(t, refused, "the bytes limit refuses once its burst is spent")
	require.Positive(t, sent)
	// The spans limit still holds the spans it admitted for the refused
	// request: 1,000 − sent are left, not 1,000 − sent − 20.
	require.True(t, server.TenantSpansAllow(srv, tenantID, int64(1000-sent)), "the refused request's spans were given back")

	// Nothing of the refused request was written: the aggregates count
	// exactly the admitted spans.
	prom := promClient(t, addrs.Web, tenantID)
	waitFor(t, "the admitted spans in the aggregates", func() bool {
		v, _ := queryScalar(t, prom, `sum(traces_spanmetrics_calls_total{service="bytes"})`)
		return v >= float64(sent)
	})
	v, _ := queryScalar(t, prom, `sum(traces_spanmetrics_calls_total{service="bytes"})`)
	require.Equal(t, float64(sent), v, "a refused request was written")
	require.Equal(t, float64(20), counter(t, reg, "hopwatch_discarded_samples_total", map[string]string{"tenant": tenantID, "reason": "rate_limited"}))
}
