package ingest

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/sample"
)

// recordingAppender keeps the samples it is given (and counts them by
// family), and fails while fail is set.
type recordingAppender struct {
	mtx      sync.Mutex
	fail     bool
	samples  []sample.Sample
	series   []sample.Series
	families map[sample.Family]int
}

func (a *recordingAppender) Append(_ context.Context, _ string, b *sample.Batch) error {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	if a.fail {
		return errors.New("disk full")
	}
	if a.families == nil {
		a.families = map[sample.Family]int{}
	}
	for _, s := range b.Samples {
		a.samples = append(a.samples, s)
		a.series = append(a.series, b.Series[s.Series])
		a.families[b.Series[s.Series].Family]++
	}
	return nil
}

func (a *recordingAppender) setFail(fail bool) {
	a.mtx.Lock()
	a.fail = fail
	a.mtx.Unlock()
}

func (a *recordingAppender) count() int {
	a.mtx.Lock()
	defer a.mtx.Unlock()
	return len(a.samples)
}

// testReceiver is a receiver served over real TCP on loopback: OTLP/HTTP
// and gRPC (OTLP and the streaming ingest service).
type testReceiver struct {
	r        *Receiver
	reg      *prometheus.Registry
	app      *recordingAppender
	httpURL  string
	grpcAddr string
}

func startReceiver(t *testing.T, mutate func(*Options), wrap func(http.Handler) http.Handler) *testReceiver {
	t.Helper()
	opts := DefaultOptions()
	if mutate != nil {
		mutate(&opts)
	}
	tr := &testReceiver{reg: prometheus.NewRegistry(), app: &recordingAppender{}}
	var err error
	tr.r, err = New(opts, tr.app, tr.reg, nil)
	require.NoError(t, err)
	h := tr.r.HTTPHandler()
	if wrap != nil {
		h = wrap(h)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	tr.httpURL = hs.URL + TracesPath

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer(tr.r.GRPCServerOptions()...)
	tr.r.RegisterGRPC(gs)
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	t.Cleanup(func() {
		tr.r.Drain()
		gs.Stop()
		wg.Wait()
	})
	tr.grpcAddr = lis.Addr().String()
	return tr
}

func (tr *testReceiver) post(t *testing.T, contentType, encoding string, body []byte) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, tr.httpURL, bytes.NewReader(body))
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

func (tr *testReceiver) discarded(reason string) float64 {
	return testutil.ToFloat64(tr.r.metrics.discarded.WithLabelValues("anonymous", reason))
}

func (tr *testReceiver) refused(protocol, reason string) float64 {
	return testutil.ToFloat64(tr.r.metrics.requestsRefused.WithLabelValues(protocol, reason))
}

// traces returns a request of one resource of service svc with a span per
// (start, end) pair.
func traces(svc string, times ...uint64) ptrace.Traces {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", svc)
	spans := rs.ScopeSpans().AppendEmpty().Spans()
	for i := 0; i+1 < len(times); i += 2 {
		s := spans.AppendEmpty()
		s.SetName("op")
		s.SetTraceID(pcommon.TraceID{byte(i + 1)})
		s.SetSpanID(pcommon.SpanID{byte(i + 1)})
		s.SetStartTimestamp(pcommon.Timestamp(times[i]))
		s.SetEndTimestamp(pcommon.Timestamp(times[i+1]))
	}
	return td
}

func protoBody(t testing.TB, td ptrace.Traces) []byte {
	b, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)
	return b
}

// TestSpanTimesOutOfRange: a span whose times do not fit int64 nanoseconds
// (so that its duration would be stored negative), or that lies beyond the
// decoder's time bounds, is refused with its reason on both decode paths.
func TestSpanTimesOutOfRange(t *testing.T) {
	now := uint64(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	notAfter, notBefore := int64(now)+int64(10*time.Minute), int64(now)-int64(24*time.Hour)
	f := func(start, end uint64, want Reason) {
		t.Helper()
		body := protoBody(t, traces("svc", start, end))
		check := func(path string, ref Refusals, b sample.Batch) {
			t.Helper()
			if want == reasonNone {
				require.Zero(t, ref.Total(), path)
				require.Len(t, b.Samples, 1, path)
				require.GreaterOrEqual(t, b.Samples[0].Duration, int64(0), path)
				return
			}
			require.Equal(t, 1, ref[want], "%s: %v", path, ref)
			require.Equal(t, 1, ref.Total(), path)
			require.Empty(t, b.Samples, path)
		}
		var b sample.Batch
		var ref Refusals
		d := NewDecoder(nil)
		d.SetTimeBounds(notAfter, notBefore)
		_, err := d.DecodeProto(body, &b, &ref)
		require.NoError(t, err)
		check("wire", ref, b)

		td, err := unmarshalProto(body)
		require.NoError(t, err)
		b, ref = sample.Batch{}, Refusals{}
		d.Decode(td, &b, &ref)
		check("pdata", ref, b)
	}
	f(now, now+1000, reasonNone)
	f(1, math.MaxUint64, ReasonTimestampOutOfRange)
	f(1<<63, 1<<63+5, ReasonTimestampOutOfRange)
	f(math.MaxInt64-10, math.MaxInt64, ReasonTooFarInFuture)
	f(now, now+uint64(11*time.Minute), ReasonTooFarInFuture)
	f(now, now+uint64(9*time.Minute), reasonNone)
	f(now-uint64(48*time.Hour), now-uint64(47*time.Hour), ReasonTooFarInPast)
	f(1, 2, ReasonTooFarInPast)
	f(now+5, now, ReasonEndBeforeStart)
	f(0, now, ReasonMissingTimestamps)
}

// TestCreationGracePeriodOverHTTP: through a real OTLP/HTTP export, spans
// too far in the future or out of int64 range are refused through partial
// success and counted; the rest of the batch is stored.
func TestCreationGracePeriodOverHTTP(t *testing.T) {
	tr := startReceiver(t, nil, nil)
	now := uint64(time.Now().UnixNano())
	td := traces("svc",
		now-1000, now,
		now, now+uint64(time.Hour),
		1, math.MaxUint64)
	resp, b := tr.post(t, contentProto, "", protoBody(t, td))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	er := ptraceotlp.NewExportResponse()
	require.NoError(t, er.UnmarshalProto(b))
	require.Equal(t, int64(2), er.PartialSuccess().RejectedSpans())
	msg := er.PartialSuccess().ErrorMessage()
	require.Contains(t, msg, "too_far_in_future")
	require.Contains(t, msg, "--limits.creation-grace-period")
	require.Contains(t, msg, "timestamp_out_of_range")
	require.Equal(t, 1.0, tr.discarded("too_far_in_future"))
	require.Equal(t, 1.0, tr.discarded("timestamp_out_of_range"))
	require.Equal(t, 1, tr.app.count())
	require.Equal(t, int64(1000), tr.app.samples[0].Duration)
}

// TestStageEventTimesAreBounded: stage events without a time, or with one
// out of range, make no stage sample (a negative or absurd duration) and
// are counted.
func TestStageEventTimesAreBounded(t *testing.T) {
	tr := startReceiver(t, nil, nil)
	now := uint64(time.Now().UnixNano())
	td := traces("svc", now-1000, now)
	s := td.ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
	for _, ev := range []struct {
		name string
		t    uint64
	}{{"enqueue", now - 900}, {"dequeue", 0}, {"arrive", math.MaxUint64}, {"done", now - 100}} {
		e := s.Events().AppendEmpty()
		e.SetName(ev.name)
		e.SetTimestamp(pcommon.Timestamp(ev.t))
	}
	resp, _ := tr.post(t, contentProto, "", protoBody(t, td))
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 2.0, tr.discarded(reasonBadEventTime))
	// The span and one stage sample, enqueue to done.
	require.Equal(t, 2, tr.app.count())
	for _, smp := range tr.app.samples {
		require.GreaterOrEqual(t, smp.Duration, int64(0))
	}
	require.Equal(t, int64(800), tr.app.samples[1].Duration)
}

// nestedArrayRequest returns a protobuf request whose one span carries the
// attribute key holding depth nested arrays around a string, built from
// the inside out without quadratic copying.
func nestedArrayRequest(key string, depth int) []byte {
	return nestedRequest(key, depth, false)
}

// nestedLinkRequest is nestedArrayRequest with the deep value on the
// span's link, and a shallow array under key on the span itself (which
// sends the request to the pdata decoder when key is a dimension).
func nestedLinkRequest(key string, depth int) []byte {
	return nestedRequest(key, depth, true)
}

func nestedRequest(key string, depth int, onLink bool) []byte {
	// Sizes from the inside out: value[i] is the AnyValue at nesting i
	// from the innermost.
	sizes := make([]int, depth+1)
	inner := protowire.AppendString(protowire.AppendTag(nil, fAnyString, protowire.BytesType), "x")
	sizes[0] = len(inner)
	for i := 1; i <= depth; i++ {
		arr := 1 + protowire.SizeVarint(uint64(sizes[i-1])) + sizes[i-1] // ArrayValue.values
		sizes[i] = 1 + protowire.SizeVarint(uint64(arr)) + arr           // AnyValue.array_value
	}
	val := make([]byte, 0, sizes[depth])
	for i := depth; i >= 1; i-- {
		arr := 1 + protowire.SizeVarint(uint64(sizes[i-1])) + sizes[i-1]
		val = protowire.AppendTag(val, fAnyArray, protowire.BytesType)
		val = protowire.AppendVarint(val, uint64(arr))
		val = protowire.AppendTag(val, fArrayValues, protowire.BytesType)
		val = protowire.AppendVarint(val, uint64(sizes[i-1]))
	}
	val = append(val, inner...)

	now := uint64(time.Now().UnixNano())
	var kv []byte
	kv = protowire.AppendTag(kv, fKeyValueKey, protowire.BytesType)
	kv = protowire.AppendString(kv, key)
	kv = protowire.AppendTag(kv, fKeyValueValue, protowire.BytesType)
	kv = protowire.AppendBytes(kv, val)
	var span []byte
	span = protowire.AppendTag(span, fSpanTraceID, protowire.BytesType)
	span = protowire.AppendBytes(span, bytes.Repeat([]byte{1}, 16))
	span = protowire.AppendTag(span, fSpanName, protowire.BytesType)
	span = protowire.AppendString(span, "op")
	span = protowire.AppendTag(span, fSpanStart, protowire.Fixed64Type)
	span = protowire.AppendFixed64(span, now-1000)
	span = protowire.AppendTag(span, fSpanEnd, protowire.Fixed64Type)
	span = protowire.AppendFixed64(span, now)
	if onLink {
		// Link: trace_id 1, span_id 2, attributes 4.
		var link []byte
		link = protowire.AppendTag(link, 1, protowire.BytesType)
		link = protowire.AppendBytes(link, bytes.Repeat([]byte{2}, 16))
		link = protowire.AppendTag(link, 2, protowire.BytesType)
		link = protowire.AppendBytes(link, bytes.Repeat([]byte{3}, 8))
		link = protowire.AppendTag(link, 4, protowire.BytesType)
		link = protowire.AppendBytes(link, kv)
		span = protowire.AppendTag(span, fSpanLinks, protowire.BytesType)
		span = protowire.AppendBytes(span, link)
		kv = nil
		kv = protowire.AppendTag(kv, fKeyValueKey, protowire.BytesType)
		kv = protowire.AppendString(kv, key)
		kv = protowire.AppendTag(kv, fKeyValueValue, protowire.BytesType)
		arr := protowire.AppendBytes(protowire.AppendTag(nil, fArrayValues, protowire.BytesType), protowire.AppendString(protowire.AppendTag(nil, fAnyString, protowire.BytesType), "x"))
		kv = protowire.AppendBytes(kv, protowire.AppendBytes(protowire.AppendTag(nil, fAnyArray, protowire.BytesType), arr))
	}
	span = protowire.AppendTag(span, fSpanAttributes, protowire.BytesType)
	span = protowire.AppendBytes(span, kv)
	var svc []byte
	svc = protowire.AppendTag(svc, fKeyValueKey, protowire.BytesType)
	svc = protowire.AppendString(svc, "service.name")
	svc = protowire.AppendTag(svc, fKeyValueValue, protowire.BytesType)
	svc = protowire.AppendBytes(svc, protowire.AppendString(protowire.AppendTag(nil, fAnyString, protowire.BytesType), "svc"))
	var res []byte
	res = protowire.AppendTag(res, fResourceAttributes, protowire.BytesType)
	res = protowire.AppendBytes(res, svc)
	var ss []byte
	ss = protowire.AppendTag(ss, fScopeSpansSpans, protowire.BytesType)
	ss = protowire.AppendBytes(ss, span)
	var rs []byte
	rs = protowire.AppendTag(rs, fResourceSpansResource, protowire.BytesType)
	rs = protowire.AppendBytes(rs, res)
	rs = protowire.AppendTag(rs, fResourceSpansScopeSpans, protowire.BytesType)
	rs = protowire.AppendBytes(rs, ss)
	return protowire.AppendBytes(protowire.AppendTag(nil, fRequestResourceSpans, protowire.BytesType), rs)
}

// bytesCodec sends a []byte as the gRPC message, to put any bytes on the
// wire.
type bytesCodec struct{}

func (bytesCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}

func (bytesCodec) Unmarshal(data mem.BufferSlice, v any) error {
	*v.(*[]byte) = data.Materialize()
	return nil
}

func (bytesCodec) Name() string { return "proto" }

func dial(t *testing.T, addr string) *grpc.ClientConn {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestNestedAttributeValues: a dimension attribute nesting 1.5 M arrays,
// which the pdata fallback would recurse into until the stack overflows,
// is refused with InvalidArgument and counted; so is deep OTLP/JSON. Values
// nested a few levels are still decoded.
func TestNestedAttributeValues(t *testing.T) {
	tr := startReceiver(t, func(o *Options) {
		o.Dimensions = []string{"deep"}
		o.MaxRequestBytes = 32 << 20
	}, nil)
	conn := dial(t, tr.grpcAddr)
	const method = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
	var out []byte

	in := nestedArrayRequest("deep", 1_500_000)
	err := conn.Invoke(context.Background(), method, &in, &out, grpc.ForceCodecV2(bytesCodec{}), grpc.MaxCallSendMsgSize(64<<20))
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "more than 64 levels deep")
	require.Equal(t, 1.0, tr.refused(protoGRPC, refusedMalformed))

	// On a span's link, where a link's attributes are (field 4).
	in = nestedLinkRequest("deep", 1_500_000)
	err = conn.Invoke(context.Background(), method, &in, &out, grpc.ForceCodecV2(bytesCodec{}), grpc.MaxCallSendMsgSize(64<<20))
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Equal(t, 2.0, tr.refused(protoGRPC, refusedMalformed))

	in = nestedArrayRequest("deep", 3)
	require.NoError(t, conn.Invoke(context.Background(), method, &in, &out, grpc.ForceCodecV2(bytesCodec{})))
	require.Equal(t, 1, tr.app.count())
	require.Equal(t, `[[["x"]]]`, tr.app.series[0].Labels.Get("deep"))

	// OTLP/JSON, nested as deep as the request allows.
	var js strings.Builder
	js.WriteString(`{"resourceSpans":[{"resource":{"attributes":[{"key":"deep","value":`)
	const jsonDepth = 200_000
	for range jsonDepth {
		js.WriteString(`{"arrayValue":{"values":[`)
	}
	js.WriteString(`{"stringValue":"x"}`)
	for range jsonDepth {
		js.WriteString(`]}}`)
	}
	js.WriteString(`}]}}]}`)
	resp, b := tr.post(t, contentJSON, "", []byte(js.String()))
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	var st spb.Status
	require.NoError(t, protojson.Unmarshal(b, &st))
	require.Contains(t, st.GetMessage(), "nest more than")
	require.Equal(t, 1.0, tr.refused(protoHTTP, refusedMalformed))
}

// TestSeriesKeysAreInjective: values that differ make keys that differ,
// whatever bytes they hold, and keys of valid UTF-8 are the values
// 0xff-separated, as stored keys have always been.
func TestSeriesKeysAreInjective(t *testing.T) {
	key := func(vals ...string) string {
		var k []byte
		for _, v := range vals {
			k = appendKeyValue(k, []byte(v))
		}
		return string(k)
	}
	require.NotEqual(t, key("c\xffd", "e"), key("c", "d\xffe"))
	require.NotEqual(t, key("c\xfe", "d"), key("c", "\xfed"))
	require.NotEqual(t, key("\xfe\x00"), key("\xfe"+"\x00"+"\xff"))
	require.Equal(t, "api\xffGET /a\xff", key("api", "GET /a"))
	rng := rand.New(rand.NewPCG(1, 2))
	seen := map[string][2]string{}
	for range 20000 {
		var v [2]string
		for i := range v {
			b := make([]byte, rng.IntN(4))
			for j := range b {
				b[j] = []byte{'a', 0xfe, 0xff, 0, 1}[rng.IntN(5)]
			}
			v[i] = string(b)
		}
		k := key(v[0], v[1])
		if prev, ok := seen[k]; ok {
			require.Equal(t, prev, v, "two label sets share key %q", k)
		}
		seen[k] = v
	}
}

// TestInvalidUTF8IsRefused: OTLP strings that become labels, or name a
// node or writer, must be valid UTF-8; a span with one that is not is
// refused and counted, on both decode paths, and never merged into
// another series.
func TestInvalidUTF8IsRefused(t *testing.T) {
	now := uint64(time.Now().UnixNano())
	dims := []Dimension{NewDimension("a"), NewDimension("b")}
	td := traces("svc", now-10, now, now-10, now, now-10, now)
	spans := td.ResourceSpans().At(0).ScopeSpans().At(0).Spans()
	spans.At(0).Attributes().PutStr("a", "c\xffd")
	spans.At(0).Attributes().PutStr("b", "e")
	spans.At(1).Attributes().PutStr("a", "c")
	spans.At(1).Attributes().PutStr("b", "d\xffe")
	spans.At(2).SetName("bad \xc3")
	bad := td.ResourceSpans().AppendEmpty()
	bad.Resource().Attributes().PutStr("service.name", "svc\xfe")
	traces("x", now-10, now).ResourceSpans().At(0).ScopeSpans().MoveAndAppendTo(bad.ScopeSpans())
	node := td.ResourceSpans().AppendEmpty()
	node.Resource().Attributes().PutStr("service.name", "svc")
	node.Resource().Attributes().PutStr("service.instance.id", "pod-\xff")
	traces("x", now-10, now).ResourceSpans().At(0).ScopeSpans().MoveAndAppendTo(node.ScopeSpans())
	peer := traces("svc", now-10, now)
	ps := peer.ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
	ps.SetKind(ptrace.SpanKindClient)
	ps.Attributes().PutStr("peer.service", "db\xff")
	peer.ResourceSpans().MoveAndAppendTo(td.ResourceSpans())
	good := traces("svc", now-10, now)
	good.ResourceSpans().MoveAndAppendTo(td.ResourceSpans())
	body := protoBody(t, td)

	var b sample.Batch
	var ref Refusals
	n, err := NewDecoder(dims).DecodeProto(body, &b, &ref)
	require.NoError(t, err)
	require.Equal(t, 7, n)
	require.Equal(t, 6, ref[ReasonInvalidUTF8], "%v", ref)
	require.Len(t, b.Samples, 1)
	require.Len(t, b.Series, 1)

	pdataTD, err := unmarshalProto(body)
	require.NoError(t, err)
	b, ref = sample.Batch{}, Refusals{}
	require.Equal(t, 7, NewDecoder(dims).Decode(pdataTD, &b, &ref))
	require.Equal(t, 6, ref[ReasonInvalidUTF8], "%v", ref)
	require.Len(t, b.Samples, 1)

	// Over OTLP/HTTP: refused through partial success and counted.
	tr := startReceiver(t, func(o *Options) { o.Dimensions = []string{"a", "b"} }, nil)
	resp, rb := tr.post(t, contentProto, "", body)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	er := ptraceotlp.NewExportResponse()
	require.NoError(t, er.UnmarshalProto(rb))
	require.Equal(t, int64(6), er.PartialSuccess().RejectedSpans())
	require.Contains(t, er.PartialSuccess().ErrorMessage(), "invalid_utf8")
	require.Equal(t, 6.0, tr.discarded("invalid_utf8"))
	require.Equal(t, 1, tr.app.count())

	// A writer header that is not UTF-8 is refused.
	req, err := http.NewRequest(http.MethodPost, tr.httpURL, bytes.NewReader(protoBody(t, traces("svc", now-10, now))))
	require.NoError(t, err)
	req.Header.Set("Content-Type", contentProto)
	req.Header.Set(WriterHeader, "w\xff")
	hresp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	hresp.Body.Close()
	require.Equal(t, http.StatusBadRequest, hresp.StatusCode)
	require.Equal(t, 1.0, tr.refused(protoHTTP, refusedWriter))
}

// TestStreamRefusesMalformedMessages: a streamed message protobuf refuses
// (a label value that is not UTF-8) ends the stream with InvalidArgument,
// counted, not with gRPC's Internal.
func TestStreamRefusesMalformedMessages(t *testing.T) {
	tr := startReceiver(t, nil, nil)
	conn := dial(t, tr.grpcAddr)
	ctx := metadata.AppendToOutgoingContext(context.Background(), writerMetadata, "w1")
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	st, err := conn.NewStream(ctx, desc, "/hopwatch.v1.IngestService/Stream", grpc.ForceCodecV2(bytesCodec{}))
	require.NoError(t, err)
	var credit []byte
	require.NoError(t, st.RecvMsg(&credit))

	// A valid message, then its label value made invalid UTF-8 in place.
	now := time.Now().UnixNano()
	msg, err := proto.Marshal(&hopwatchv1.StreamRequest{Batch: &hopwatchv1.HopBatch{
		Seq:                    1,
		Series:                 []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_NETWORK, Labels: hopLabels("client", "a", "server", "bZ")}},
		SeriesIndex:            []uint32{0},
		StartTimeDeltaUnixNano: []int64{now},
		DurationNano:           []uint64{5},
	}})
	require.NoError(t, err)
	i := bytes.Index(msg, []byte("bZ"))
	require.Positive(t, i)
	msg[i+1] = 0xff
	require.NoError(t, st.SendMsg(&msg))
	var ack []byte
	err = st.RecvMsg(&ack)
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "UTF-8")
	require.Equal(t, 1.0, tr.refused(protoStream, refusedMalformed))
	require.Zero(t, tr.app.count())
}

// TestStreamRecordTimes: streamed records out of int64 range or beyond
// the creation grace period are refused alone, with their reasons.
func TestStreamRecordTimes(t *testing.T) {
	app := &recordingAppender{}
	r, err := New(DefaultOptions(), app, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	w := r.work.Get().(*work)
	now := time.Now().UnixNano()
	ack, _ := r.applyBatch(context.Background(), "anonymous", "w", r.streams.get("anonymous", "w"), w, &hopwatchv1.HopBatch{
		Seq:                    1,
		Series:                 []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_NETWORK, Labels: hopLabels("client", "a", "server", "b")}},
		SeriesIndex:            []uint32{0, 0, 0},
		StartTimeDeltaUnixNano: []int64{now, 0, int64(time.Hour)},
		DurationNano:           []uint64{5, math.MaxUint64, 5},
	})
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, ack.GetStatus(), ack.GetErrorMessage())
	require.Equal(t, uint32(1), ack.GetAcceptedRecords())
	require.Equal(t, uint32(2), ack.GetRejectedRecords())
	require.Contains(t, ack.GetErrorMessage(), "timestamp_out_of_range")
	require.Contains(t, ack.GetErrorMessage(), "too_far_in_future")
	require.Equal(t, 1, app.count())
}

// TestHTTPRefusalsHaveBodies: every refusal carries a google.rpc.Status in
// the request's encoding, random bytes (invalid UTF-8 quoted in the
// message) included.
func TestHTTPRefusalsHaveBodies(t *testing.T) {
	tr := startReceiver(t, nil, nil)
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 20 {
		body := make([]byte, 1+rng.IntN(512))
		for j := range body {
			body[j] = byte(rng.Uint32())
		}
		for _, ct := range []string{contentJSON, contentProto} {
			resp, b := tr.post(t, ct, "", body)
			if resp.StatusCode == http.StatusOK {
				continue // random protobuf can be a valid empty request
			}
			require.Equal(t, http.StatusBadRequest, resp.StatusCode, "body %d as %s", i, ct)
			require.NotEmpty(t, b, "body %d as %s", i, ct)
			require.Equal(t, ct, resp.Header.Get("Content-Type"))
			var st spb.Status
			if ct == contentJSON {
				require.NoError(t, protojson.Unmarshal(b, &st))
			} else {
				require.NoError(t, proto.Unmarshal(b, &st))
			}
			require.Equal(t, int32(codes.InvalidArgument), st.GetCode())
			require.Contains(t, st.GetMessage(), "malformed OTLP")
		}
	}
}

// TestHTTPDeflate: Content-Encoding deflate is zlib-wrapped (RFC 9110),
// as the Collector sends it; raw deflate is taken too. A body that
// inflates past the limit is refused with 413 naming the limit, for every
// encoding.
func TestHTTPDeflate(t *testing.T) {
	tr := startReceiver(t, func(o *Options) { o.MaxRequestBytes = 64 << 10 }, nil)
	now := uint64(time.Now().UnixNano())
	body := protoBody(t, traces("svc", now-10, now))

	var zb bytes.Buffer
	zw := zlib.NewWriter(&zb)
	_, _ = zw.Write(body)
	require.NoError(t, zw.Close())
	resp, b := tr.post(t, contentProto, "deflate", zb.Bytes())
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)

	var fb bytes.Buffer
	fw, err := flate.NewWriter(&fb, flate.BestCompression)
	require.NoError(t, err)
	_, _ = fw.Write(body)
	require.NoError(t, fw.Close())
	resp, b = tr.post(t, contentProto, "deflate", fb.Bytes())
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", b)
	require.Equal(t, 2, tr.app.count())

	bomb := make([]byte, 10<<20)
	for _, enc := range []string{"deflate", "gzip", "zstd"} {
		resp, b = tr.post(t, contentProto, enc, compress(t, enc, bomb))
		require.Equal(t, http.StatusRequestEntityTooLarge, resp.StatusCode, enc)
		var st spb.Status
		require.NoError(t, proto.Unmarshal(b, &st))
		require.Contains(t, st.GetMessage(), "--otlp.max-request-bytes", enc)
		require.Contains(t, st.GetMessage(), strconv.Itoa(64<<10), enc)
	}
	require.Equal(t, 3.0, tr.refused(protoHTTP, refusedTooLarge))
}

// TestSlowBodiesDoNotAllocate: connections that announce a large body and
// send one byte cost what arrived, not what Content-Length announced.
func TestSlowBodiesDoNotAllocate(t *testing.T) {
	const conns = 20
	// reading is told each time a handler first reads its body: by then
	// its buffer is allocated.
	reading := make(chan struct{}, conns)
	tr := startReceiver(t, nil, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			req.Body = &firstRead{ReadCloser: req.Body, ch: reading}
			h.ServeHTTP(w, req)
		})
	})
	host := strings.TrimPrefix(strings.TrimSuffix(tr.httpURL, TracesPath), "http://")
	limit := DefaultOptions().MaxRequestBytes

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for range conns {
		c, err := net.Dial("tcp", host)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = io.WriteString(c, "POST "+TracesPath+" HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: "+strconv.Itoa(limit)+"\r\n\r\n\x0a")
		require.NoError(t, err)
	}
	for range conns {
		<-reading
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	// Pre-allocating would take conns × 16 MiB = 320 MiB.
	require.Less(t, grown, int64(32<<20), "heap grew by %d bytes for %d slow connections", grown, conns)
}

// firstRead signals ch on its first Read.
type firstRead struct {
	io.ReadCloser
	ch   chan<- struct{}
	once sync.Once
}

func (f *firstRead) Read(p []byte) (int, error) {
	f.once.Do(func() { f.ch <- struct{}{} })
	return f.ReadCloser.Read(p)
}

// TestGRPCSilentConnectionIsClosed: a TCP connection to the gRPC port that
// never completes its HTTP/2 handshake is closed after the connection
// timeout.
func TestGRPCSilentConnectionIsClosed(t *testing.T) {
	tr := startReceiver(t, func(o *Options) { o.GRPC.ConnectionTimeout = 200 * time.Millisecond }, nil)
	c, err := net.Dial("tcp", tr.grpcAddr)
	require.NoError(t, err)
	defer c.Close()
	// The deadline only turns a hang into a failure.
	require.NoError(t, c.SetReadDeadline(time.Now().Add(60*time.Second)))
	_, err = io.ReadAll(c)
	require.NoError(t, err, "the server closes the connection (EOF), before the test's deadline")
}

// compress encodes b as Content-Encoding enc does.
func compress(t *testing.T, enc string, b []byte) []byte {
	var out bytes.Buffer
	var w io.WriteCloser
	switch enc {
	case "deflate":
		w = zlib.NewWriter(&out)
	case "gzip":
		w = gzip.NewWriter(&out)
	case "zstd":
		zw, err := zstd.NewWriter(&out)
		require.NoError(t, err)
		w = zw
	}
	_, err := w.Write(b)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	return out.Bytes()
}

// FuzzDecodeJSON: no OTLP/JSON request panics the decoder, whatever its
// nesting, strings or times; a request either decodes or is refused as
// malformed with a message.
func FuzzDecodeJSON(f *testing.F) {
	now := uint64(time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	td := traces("svc", now-10, now, 1, math.MaxUint64, now, now-5)
	s := td.ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
	s.SetKind(ptrace.SpanKindClient)
	s.Attributes().PutStr("peer.service", "db")
	s.Attributes().PutEmptySlice("retry").AppendEmpty().SetEmptyMap().PutInt("n", 3)
	ev := s.Events().AppendEmpty()
	ev.SetName("enqueue")
	ev.SetTimestamp(pcommon.Timestamp(now - 5))
	valid, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalJSON()
	require.NoError(f, err)
	f.Add(valid)
	f.Add([]byte(`{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"c\xffd"}}]},"scopeSpans":[{"spans":[{"traceId":"01010101010101010101010101010101","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"18446744073709551615"}]}]}]}`))
	f.Add([]byte(`{"resourceSpans":[{"resource":{"attributes":[{"key":"retry","value":` + strings.Repeat(`{"arrayValue":{"values":[`, 100) + `{}` + strings.Repeat(`]}}`, 100) + `}]}}]}`))
	f.Add([]byte(`{"resourceSpans": [`))
	f.Add([]byte(`[[[[[[[[`))
	f.Add([]byte("\xff\xfe\x00{"))
	f.Add([]byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"","startTimeUnixNano":-1}]}]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		d := NewDecoder(testDims).WithStages(DefaultStages())
		d.SetTimeBounds(int64(now)+int64(10*time.Minute), int64(now)-int64(24*time.Hour))
		var b sample.Batch
		var ref Refusals
		n, err := decodeJSON(body)(d, &b, &ref)
		if err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		require.LessOrEqual(t, ref.Total(), n)
		for _, smp := range b.Samples {
			require.GreaterOrEqual(t, smp.Duration, int64(0))
			require.Less(t, int(smp.Series), len(b.Series))
		}
	})
}

// TestManyElementsAreRefused: millions of empty spans (or attributes)
// cost the wire walk nothing, but pdata builds an object for each, some
// 240 bytes: 14 MiB of JSON took 1.2 GiB. Requests pdata decodes are
// refused past maxElements, before pdata sees them.
func TestManyElementsAreRefused(t *testing.T) {
	tr := startReceiver(t, func(o *Options) { o.Dimensions = []string{"deep"} }, nil)
	body := []byte(`{"resourceSpans":[{"scopeSpans":[{"spans":[`)
	body = append(body, bytes.Repeat([]byte(`{},`), 5_000_000)...)
	body = append(body, `{}]}]}]}`...)
	resp, b := tr.post(t, contentJSON, "", body)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Contains(t, string(b), "send smaller batches")

	// Protobuf: one span whose dimension needs pdata, then 2 M empty spans.
	pb := nestedArrayRequest("deep", 2)
	ss := protowire.AppendTag(nil, fScopeSpansSpans, protowire.BytesType)
	ss = append(ss, 0)
	many := bytes.Repeat(ss, 2_000_000)
	var rs []byte
	rs = protowire.AppendTag(rs, fResourceSpansScopeSpans, protowire.BytesType)
	rs = protowire.AppendBytes(rs, many)
	pb = protowire.AppendTag(pb, fRequestResourceSpans, protowire.BytesType)
	pb = protowire.AppendBytes(pb, rs)
	resp, b = tr.post(t, contentProto, "", pb)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	var st spb.Status
	require.NoError(t, proto.Unmarshal(b, &st))
	require.Contains(t, st.GetMessage(), "send smaller batches")
	require.Equal(t, 2.0, tr.refused(protoHTTP, refusedMalformed))
	require.Zero(t, tr.app.count())
}

// TestLongNodeAndPeerNames: the strings that name a node, a writer or a
// peer are kept (clock offsets, writer ids, spans waiting for their peer)
// and become labels, so they are bounded like label values.
func TestLongNodeAndPeerNames(t *testing.T) {
	now := uint64(time.Now().UnixNano())
	long := strings.Repeat("x", DefaultMaxLabelValueLength+1)
	td := traces("svc", now-10, now)
	td.ResourceSpans().At(0).Resource().Attributes().PutStr("service.instance.id", long)
	host := traces("svc", now-10, now)
	host.ResourceSpans().At(0).Resource().Attributes().PutStr("host.name", long)
	host.ResourceSpans().MoveAndAppendTo(td.ResourceSpans())
	peer := traces("svc", now-10, now)
	ps := peer.ResourceSpans().At(0).ScopeSpans().At(0).Spans().At(0)
	ps.SetKind(ptrace.SpanKindClient)
	ps.Attributes().PutStr("db.system", long)
	peer.ResourceSpans().MoveAndAppendTo(td.ResourceSpans())
	traces("svc", now-10, now).ResourceSpans().MoveAndAppendTo(td.ResourceSpans())
	body := protoBody(t, td)

	var b sample.Batch
	var ref Refusals
	_, err := NewDecoder(nil).DecodeProto(body, &b, &ref)
	require.NoError(t, err)
	require.Equal(t, 3, ref[ReasonLabelValueTooLong], "%v", ref)
	require.Len(t, b.Samples, 1)

	pdataTD, err := unmarshalProto(body)
	require.NoError(t, err)
	b, ref = sample.Batch{}, Refusals{}
	NewDecoder(nil).Decode(pdataTD, &b, &ref)
	require.Equal(t, 3, ref[ReasonLabelValueTooLong], "%v", ref)
	require.Len(t, b.Samples, 1)
}
