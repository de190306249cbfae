package server_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/internal/server"
)

// counter returns the value of the counter name with exactly the given
// labels, 0 if there is no such series.
func counter(t *testing.T, reg *prometheus.Registry, name string, lbls map[string]string) float64 {
	t.Helper()
	v, _ := sample(t, reg, name, lbls)
	return v
}

// sample returns the value of the series of name with exactly the labels
// lbls in reg, and whether there is one.
func sample(t *testing.T, reg *prometheus.Registry, name string, lbls map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(lbls) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if v, ok := lbls[lp.GetName()]; !ok || v != lp.GetValue() {
					continue next
				}
			}
			return metricValue(m), true
		}
	}
	return 0, false
}

func metricValue(m *dto.Metric) float64 {
	if m.Counter != nil {
		return m.Counter.GetValue()
	}
	return m.Gauge.GetValue()
}

// badTraces returns one request with a good span, a span that ends before
// it starts, and a resource without service.name.
func badTraces() ptrace.Traces {
	td := ptrace.NewTraces()
	now := time.Now()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "svc")
	spans := rs.ScopeSpans().AppendEmpty().Spans()
	good := spans.AppendEmpty()
	good.SetName("good")
	good.SetTraceID(pcommon.TraceID{1})
	good.SetSpanID(pcommon.SpanID{1})
	good.SetStartTimestamp(pcommon.NewTimestampFromTime(now))
	good.SetEndTimestamp(pcommon.NewTimestampFromTime(now.Add(time.Millisecond)))
	back := spans.AppendEmpty()
	good.CopyTo(back)
	back.SetName("backwards")
	back.SetEndTimestamp(pcommon.NewTimestampFromTime(now.Add(-time.Millisecond)))

	anon := td.ResourceSpans().AppendEmpty()
	good.CopyTo(anon.ScopeSpans().AppendEmpty().Spans().AppendEmpty())
	return td
}

func TestBadInputOverHTTP(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) { c.Ingest.MaxRequestBytes = 4096 })
	url := "http://" + addrs.OTLPHTTP + "/v1/traces"

	post := func(contentType, encoding string, body []byte) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", contentType)
		if encoding != "" {
			req.Header.Set("Content-Encoding", encoding)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}
	statusMsg := func(b []byte) string {
		var st spb.Status
		require.NoError(t, proto.Unmarshal(b, &st))
		return st.GetMessage()
	}
	refused := func(reason string) float64 {
		return counter(t, reg, "hopwatch_otlp_requests_refused_total", map[string]string{"protocol": "http", "reason": reason})
	}

	resp, b := post("application/x-protobuf", "", []byte{0xff, 0xff, 0xff, 0x0f})
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, statusMsg(b), "malformed OTLP protobuf")
	require.Equal(t, 1.0, refused("malformed"))

	resp, b = post("application/json", "", []byte(`{"resourceSpans": [`))
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, string(b), "malformed OTLP JSON")
	require.Equal(t, 2.0, refused("malformed"))

	resp, b = post("text/plain", "", []byte("hello"))
	require.Equal(t, http.StatusUnsupportedMediaType, resp.StatusCode)
	require.Contains(t, statusMsg(b), "application/x-protobuf")
	require.Equal(t, 1.0, refused("unsupported_media_type"))

	resp, b = post("application/x-protobuf", "br", []byte("hello"))
	require.Equal(t, http.StatusUnsupportedMediaType, resp.StatusCode)
	require.Contains(t, statusMsg(b), "Content-Encoding")

	resp, b = post("application/x-protobuf", "", make([]byte, 5000))
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Contains(t, statusMsg(b), "--otlp.max-request-bytes")
	// A small gzip body that inflates past the limit is refused too.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write(make([]byte, 100_000))
	require.NoError(t, zw.Close())
	require.Less(t, gz.Len(), 4096)
	resp, _ = post("application/x-protobuf", "gzip", gz.Bytes())
	require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode)
	require.Equal(t, 2.0, refused("too_large"))

	req, _ := http.NewRequest(http.MethodGet, url, nil)
	hresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	hresp.Body.Close()
	require.Equal(t, http.StatusMethodNotAllowed, hresp.StatusCode)

	// Partly bad: the good span is kept, the others refused with reasons.
	body, err := ptraceotlp.NewExportRequestFromTraces(badTraces()).MarshalProto()
	require.NoError(t, err)
	resp, b = post("application/x-protobuf", "", body)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	er := ptraceotlp.NewExportResponse()
	require.NoError(t, er.UnmarshalProto(b))
	require.Equal(t, int64(2), er.PartialSuccess().RejectedSpans())
	require.Contains(t, er.PartialSuccess().ErrorMessage(), "end_before_start")
	require.Contains(t, er.PartialSuccess().ErrorMessage(), "missing_service_name")

	// The same in JSON.
	jbody, err := ptraceotlp.NewExportRequestFromTraces(badTraces()).MarshalJSON()
	require.NoError(t, err)
	resp, b = post("application/json", "", jbody)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.Contains(t, string(b), `"rejectedSpans":"2"`)

	require.Equal(t, 2.0, counter(t, reg, "hopwatch_otlp_spans_refused_total", map[string]string{"protocol": "http", "reason": "end_before_start"}))
	require.Equal(t, 2.0, counter(t, reg, "hopwatch_otlp_spans_refused_total", map[string]string{"protocol": "http", "reason": "missing_service_name"}))
	require.Equal(t, 2.0, counter(t, reg, "hopwatch_discarded_samples_total", map[string]string{"tenant": "anonymous", "reason": "end_before_start"}))
	require.Equal(t, 2.0, counter(t, reg, "hopwatch_otlp_spans_accepted_total", map[string]string{"protocol": "http"}))
}

// bytesCodec sends a []byte as the gRPC message, to put malformed protobuf
// on the wire.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (bytesCodec) Name() string { return "proto" }

func TestBadInputOverGRPC(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) { c.Ingest.MaxRequestBytes = 4096 })
	conn, err := grpc.NewClient(addrs.OTLPGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	ctx := context.Background()
	const method = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

	in, out := []byte{0xff, 0xff, 0xff, 0x0f}, []byte(nil)
	err = conn.Invoke(ctx, method, &in, &out, grpc.ForceCodecV2(bytesCodec{}))
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "malformed OTLP protobuf")
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_otlp_requests_refused_total", map[string]string{"protocol": "grpc", "reason": "malformed"}))

	in = make([]byte, 5000)
	err = conn.Invoke(ctx, method, &in, &out, grpc.ForceCodecV2(bytesCodec{}))
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "%v", err)
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_otlp_requests_refused_total", map[string]string{"protocol": "grpc", "reason": "too_large"}))

	client := ptraceotlp.NewGRPCClient(conn)
	resp, err := client.Export(ctx, ptraceotlp.NewExportRequestFromTraces(badTraces()))
	require.NoError(t, err)
	require.Equal(t, int64(2), resp.PartialSuccess().RejectedSpans())
	msg := resp.PartialSuccess().ErrorMessage()
	require.True(t, strings.HasPrefix(msg, "refused 2 of 3 spans:"), msg)
	require.Contains(t, msg, "service.name")
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_otlp_spans_accepted_total", map[string]string{"protocol": "grpc"}))
	require.Equal(t, 1.0, counter(t, reg, "hopwatch_otlp_spans_refused_total", map[string]string{"protocol": "grpc", "reason": "missing_service_name"}))
}
