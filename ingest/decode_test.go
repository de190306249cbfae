package ingest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/hopwatch/hopwatch/sample"
)

func TestDecodeLabelsAndDimensions(t *testing.T) {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "api")
	rs.Resource().Attributes().PutStr("deployment.environment", "prod")
	spans := rs.ScopeSpans().AppendEmpty().Spans()
	add := func(name string, kind ptrace.SpanKind, code ptrace.StatusCode, method string, start, dur int64) {
		s := spans.AppendEmpty()
		s.SetName(name)
		s.SetKind(kind)
		s.Status().SetCode(code)
		s.SetTraceID(pcommon.TraceID{byte(start)})
		s.SetStartTimestamp(pcommon.Timestamp(start))
		s.SetEndTimestamp(pcommon.Timestamp(start + dur))
		if method != "" {
			s.Attributes().PutStr("http.method", method)
		}
	}
	add("GET /a", ptrace.SpanKindServer, ptrace.StatusCodeOk, "GET", 100, 5)
	add("GET /a", ptrace.SpanKindServer, ptrace.StatusCodeOk, "GET", 200, 7)
	add("GET /a", ptrace.SpanKindServer, ptrace.StatusCodeError, "GET", 300, 9)
	add("db", ptrace.SpanKindClient, ptrace.StatusCodeUnset, "", 400, 0)

	d := NewDecoder([]Dimension{NewDimension("http.method"), NewDimension("deployment.environment")})
	var b sample.Batch
	var ref Refusals
	require.Equal(t, 4, d.Decode(td, &b, &ref))
	require.Zero(t, ref.Total())
	require.Len(t, b.Series, 3)
	require.Equal(t, labels.FromStrings("service", "api", "span_name", "GET /a", "span_kind", "SPAN_KIND_SERVER",
		"status_code", "STATUS_CODE_OK", "http_method", "GET", "deployment_environment", "prod"), b.Series[0].Labels)
	require.Equal(t, "STATUS_CODE_ERROR", b.Series[1].Labels.Get("status_code"))
	// An absent attribute is an absent label.
	require.Equal(t, labels.FromStrings("service", "api", "span_name", "db", "span_kind", "SPAN_KIND_CLIENT",
		"status_code", "STATUS_CODE_UNSET", "deployment_environment", "prod"), b.Series[2].Labels)
	require.Equal(t, []sample.Sample{
		{Series: 0, Start: 100, Duration: 5, TraceID: [16]byte{100}},
		{Series: 0, Start: 200, Duration: 7, TraceID: [16]byte{200}},
		{Series: 1, Start: 300, Duration: 9, TraceID: [16]byte{44}},
		{Series: 2, Start: 400, Duration: 0, TraceID: [16]byte{144}},
	}, b.Samples)
}

func TestDecodeRefusals(t *testing.T) {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "api")
	spans := rs.ScopeSpans().AppendEmpty().Spans()
	f := func(tid pcommon.TraceID, start, end uint64) {
		s := spans.AppendEmpty()
		s.SetTraceID(tid)
		s.SetStartTimestamp(pcommon.Timestamp(start))
		s.SetEndTimestamp(pcommon.Timestamp(end))
	}
	f(pcommon.TraceID{1}, 10, 20)
	f(pcommon.TraceID{1}, 20, 10)
	f(pcommon.TraceID{1}, 0, 10)
	f(pcommon.TraceID{}, 10, 20)
	noName := td.ResourceSpans().AppendEmpty().ScopeSpans().AppendEmpty().Spans()
	noName.AppendEmpty()
	noName.AppendEmpty()

	var b sample.Batch
	var ref Refusals
	require.Equal(t, 6, NewDecoder(nil).Decode(td, &b, &ref))
	require.Len(t, b.Samples, 1)
	require.Equal(t, Refusals{ReasonMissingServiceName: 2, ReasonMissingTimestamps: 1, ReasonEndBeforeStart: 1, ReasonInvalidTraceID: 1}, ref)

	// A label value over the limit refuses the span.
	long := ptrace.NewTraces()
	lrs := long.ResourceSpans().AppendEmpty()
	lrs.Resource().Attributes().PutStr("service.name", "api")
	ls := lrs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	ls.SetName(strings.Repeat("x", 33))
	ls.SetTraceID(pcommon.TraceID{1})
	ls.SetStartTimestamp(1)
	ls.SetEndTimestamp(2)
	var b2 sample.Batch
	var ref2 Refusals
	NewDecoder(nil).WithMaxLabelValueLength(32).Decode(long, &b2, &ref2)
	require.Equal(t, Refusals{ReasonLabelValueTooLong: 1}, ref2)
	require.Contains(t, ref2.Message(1), "--limits.max-label-value-length")
	msg := ref.Message(6)
	require.Contains(t, msg, "refused 5 of 6 spans: 2 missing_service_name")
	require.Contains(t, msg, "1 end_before_start")
}

func TestNewDimension(t *testing.T) {
	f := func(attr, label string) {
		t.Helper()
		require.Equal(t, label, NewDimension(attr).Label)
	}
	f("http.method", "http_method")
	f("k8s.pod-name", "k8s_pod_name")
	f("service", "__service")
	f("status_code", "__status_code")
}

func TestOptionsValidate(t *testing.T) {
	o := DefaultOptions()
	o.MaxRequestBytes = 0
	o.Dimensions = []string{"a.b", "a_b", ""}
	o.MaxDimensions = 2
	err := o.Validate()
	require.ErrorContains(t, err, "more than MaxDimensions (2)")
	require.ErrorContains(t, err, "MaxRequestBytes")
	require.ErrorContains(t, err, `"a.b" and "a_b" both become label "a_b"`)
	require.ErrorContains(t, err, "empty attribute name")
}

// benchRequest builds an OTLP request of n spans over 10 services with 10
// operations each, with lognormal durations; fixed seed.
func benchRequest(n int) []byte {
	rng := rand.New(rand.NewPCG(1, 2))
	td := ptrace.NewTraces()
	now := uint64(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	for svc := range 10 {
		rs := td.ResourceSpans().AppendEmpty()
		rs.Resource().Attributes().PutStr("service.name", fmt.Sprintf("service-%d", svc))
		rs.Resource().Attributes().PutStr("service.instance.id", fmt.Sprintf("instance-%d", svc))
		spans := rs.ScopeSpans().AppendEmpty().Spans()
		for i := range n / 10 {
			s := spans.AppendEmpty()
			s.SetName(fmt.Sprintf("operation-%d", i%10))
			s.SetKind(ptrace.SpanKindServer)
			var tid pcommon.TraceID
			var sid pcommon.SpanID
			for j := range tid {
				tid[j] = byte(rng.Uint32())
			}
			for j := range sid {
				sid[j] = byte(rng.Uint32())
			}
			s.SetTraceID(tid)
			s.SetSpanID(sid)
			start := now + uint64(i)*1000
			s.SetStartTimestamp(pcommon.Timestamp(start))
			s.SetEndTimestamp(pcommon.Timestamp(start + uint64(2e6*rng.ExpFloat64())))
			s.Attributes().PutStr("http.method", "GET")
			s.Attributes().PutInt("http.status_code", 200)
		}
	}
	b, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	if err != nil {
		panic(err)
	}
	return b
}

type nopAppender struct{}

func (nopAppender) Append(context.Context, string, *sample.Batch) error { return nil }

// BenchmarkExport measures the OTLP request → samples path: the protobuf
// walk, span → sample conversion and the hand-off to storage (a no-op
// here), for a request of 1000 spans.
//
//	go test ./ingest -run XXX -bench BenchmarkExport -benchmem -count 6
func BenchmarkExport(b *testing.B) {
	const spans = 1000
	body := benchRequest(spans)
	r, err := New(DefaultOptions(), nopAppender{}, nil, nil)
	require.NoError(b, err)
	ctx := context.Background()
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.export(ctx, protoGRPC, "anonymous", "", len(body), decodeProtobuf(body)); err != nil {
			b.Fatal(err)
		}
	}
	perSpan := b.Elapsed().Seconds() / float64(b.N*spans)
	b.ReportMetric(1/perSpan, "spans/s")
	b.ReportMetric(perSpan*1e9, "ns/span")
}

// BenchmarkExportPdata is BenchmarkExport through pdata, the path JSON
// requests (and attributes the walker does not render) take.
//
//	go test ./ingest -run XXX -bench BenchmarkExportPdata -benchmem -count 6
func BenchmarkExportPdata(b *testing.B) {
	const spans = 1000
	body := benchRequest(spans)
	d := NewDecoder(nil)
	var batch sample.Batch
	b.ReportAllocs()
	for b.Loop() {
		batch.Reset()
		var ref Refusals
		td, err := unmarshalProto(body)
		if err != nil {
			b.Fatal(err)
		}
		d.Decode(td, &batch, &ref)
	}
	perSpan := b.Elapsed().Seconds() / float64(b.N*spans)
	b.ReportMetric(1/perSpan, "spans/s")
	b.ReportMetric(perSpan*1e9, "ns/span")
}

// BenchmarkDecode isolates span → sample conversion on decoded pdata.
//
//	go test ./ingest -run XXX -bench BenchmarkDecode -benchmem -count 6
func BenchmarkDecode(b *testing.B) {
	const spans = 1000
	td, err := unmarshalProto(benchRequest(spans))
	require.NoError(b, err)
	d := NewDecoder(nil)
	var batch sample.Batch
	b.ReportAllocs()
	for b.Loop() {
		batch.Reset()
		var ref Refusals
		d.Decode(td, &batch, &ref)
	}
	perSpan := b.Elapsed().Seconds() / float64(b.N*spans)
	b.ReportMetric(1/perSpan, "spans/s")
	b.ReportMetric(perSpan*1e9, "ns/span")
}

func TestStageDurations(t *testing.T) {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "indexer")
	s := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	s.SetName("logs process")
	s.SetKind(ptrace.SpanKindConsumer)
	s.SetTraceID(pcommon.TraceID{1})
	s.SetStartTimestamp(1000)
	s.SetEndTimestamp(9000)
	ev := func(name string, ts uint64, attr string) {
		e := s.Events().AppendEmpty()
		e.SetName(name)
		e.SetTimestamp(pcommon.Timestamp(ts))
		if attr != "" {
			e.Attributes().PutStr("stage", attr)
		}
	}
	// Out of order on the wire; one stage named by its attribute; one
	// event that is no stage.
	ev("done", 8000, "")
	ev("enqueue", 1000, "")
	ev("checkpoint", 5000, "arrive")
	ev("exception", 6000, "")
	ev("dequeue", 3000, "")
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)

	for _, path := range []string{"wire", "pdata"} {
		var b sample.Batch
		var ref Refusals
		d := NewDecoder(nil).WithStages(DefaultStages())
		if path == "wire" {
			_, err := d.DecodeProto(body, &b, &ref)
			require.NoError(t, err)
		} else {
			d.Decode(td, &b, &ref)
		}
		var got []string
		for _, smp := range b.Samples {
			sr := b.Series[smp.Series]
			if sr.Family == sample.FamilyStage {
				got = append(got, fmt.Sprintf("%s→%s %d", sr.Labels.Get("from_stage"), sr.Labels.Get("to_stage"), smp.Duration))
				require.Equal(t, "indexer", sr.Labels.Get("service"))
				require.Equal(t, "logs process", sr.Labels.Get("span_name"))
			}
		}
		require.Equal(t, []string{"enqueue→dequeue 2000", "dequeue→arrive 2000", "arrive→done 3000"}, got, path)
	}
}

// TestHopNodeIsTheHost: a span's node, the clock its times are read on, is
// its host when the resource names one (processes on one host share its
// clock, so a queue hop between them needs no offset), else its instance;
// both decode paths agree.
func TestHopNodeIsTheHost(t *testing.T) {
	td := ptrace.NewTraces()
	add := func(service, instance, host string, kind ptrace.SpanKind) {
		rs := td.ResourceSpans().AppendEmpty()
		rs.Resource().Attributes().PutStr("service.name", service)
		if instance != "" {
			rs.Resource().Attributes().PutStr("service.instance.id", instance)
		}
		if host != "" {
			rs.Resource().Attributes().PutStr("host.name", host)
		}
		s := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
		s.SetName("op")
		s.SetKind(kind)
		s.SetTraceID(pcommon.TraceID{1})
		s.SetSpanID(pcommon.SpanID{byte(td.ResourceSpans().Len())})
		s.SetStartTimestamp(1e9)
		s.SetEndTimestamp(2e9)
	}
	add("publisher", "publisher-1", "node-a", ptrace.SpanKindProducer)
	add("indexer", "indexer-7", "node-a", ptrace.SpanKindConsumer)
	add("api", "api-3", "", ptrace.SpanKindServer)
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)

	nodes := func(hs []hopSpan) []string {
		var out []string
		for _, h := range hs {
			out = append(out, string(h.node))
		}
		return out
	}
	want := []string{"node-a", "node-a", "api-3"}
	pd := NewDecoder(nil)
	var b sample.Batch
	var ref Refusals
	pd.Decode(td, &b, &ref)
	require.Equal(t, want, nodes(pd.hops))
	wd := NewDecoder(nil)
	_, err = wd.DecodeProto(body, &b, &ref)
	require.NoError(t, err)
	require.Equal(t, want, nodes(wd.hops))
}
