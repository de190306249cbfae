package ingest

import (
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/hopwatch/hopwatch/internal/demo"
	"github.com/hopwatch/hopwatch/sample"
)

var testDims = []Dimension{NewDimension("http.method"), NewDimension("deployment.environment"), NewDimension("retry"), NewDimension("attempt")}

// viaPdata and viaWire decode the same request both ways.
func viaPdata(t testing.TB, body []byte, dims []Dimension) (sample.Batch, Refusals, int) {
	td, err := unmarshalProto(body)
	require.NoError(t, err)
	var b sample.Batch
	var ref Refusals
	n := NewDecoder(dims).WithStages(DefaultStages()).Decode(td, &b, &ref)
	return b, ref, n
}

func viaWire(t testing.TB, body []byte, dims []Dimension) (sample.Batch, Refusals, int, error) {
	var b sample.Batch
	var ref Refusals
	n, err := NewDecoder(dims).WithStages(DefaultStages()).DecodeProto(body, &b, &ref)
	return b, ref, n, err
}

func requireSameDecoding(t *testing.T, body []byte, dims []Dimension) {
	t.Helper()
	wb, wref, wn, err := viaWire(t, body, dims)
	require.NoError(t, err)
	pb, pref, pn := viaPdata(t, body, dims)
	// The spans kept for service graph pairing agree too.
	wd, pd := NewDecoder(dims), NewDecoder(dims)
	var scratch sample.Batch
	var r Refusals
	_, err = wd.DecodeProto(body, &scratch, &r)
	require.NoError(t, err)
	td, err := unmarshalProto(body)
	require.NoError(t, err)
	pd.Decode(td, &scratch, &r)
	require.Equal(t, normHops(pd.hops), normHops(wd.hops))
	// So does the writers' progress, the watermark's input.
	require.Equal(t, normWriters(pd.writers), normWriters(wd.writers))
	require.Equal(t, pn, wn)
	require.Equal(t, pref, wref)
	require.Equal(t, pb.Samples, wb.Samples)
	require.Equal(t, len(pb.Series), len(wb.Series))
	for i := range pb.Series {
		require.Equal(t, pb.Series[i].Key, wb.Series[i].Key)
		require.Equal(t, pb.Series[i].Labels, wb.Series[i].Labels)
	}
}

func TestDecodeProtoMatchesPdata(t *testing.T) {
	t.Run("bench request", func(t *testing.T) { requireSameDecoding(t, benchRequest(1000), testDims) })
	t.Run("demo workload", func(t *testing.T) {
		td := demo.NewGenerator(7).Traces(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), 300)
		body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
		require.NoError(t, err)
		requireSameDecoding(t, body, []Dimension{NewDimension("messaging.system"), NewDimension("host.name")})
		requireSameDecoding(t, body, nil)
	})
	t.Run("attributes of every simple kind, refusals, repeated keys", func(t *testing.T) {
		td := ptrace.NewTraces()
		rs := td.ResourceSpans().AppendEmpty()
		rs.Resource().Attributes().PutStr("service.name", "api")
		rs.Resource().Attributes().PutStr("deployment.environment", "prod")
		spans := rs.ScopeSpans().AppendEmpty().Spans()
		for i := range 20 {
			s := spans.AppendEmpty()
			s.SetName("op")
			s.SetKind(ptrace.SpanKind(i % 7)) // 6 is out of range
			s.Status().SetCode(ptrace.StatusCode(i % 4))
			s.SetTraceID(pcommon.TraceID{byte(i % 5)})
			s.SetStartTimestamp(pcommon.Timestamp(100 * (i % 9)))
			s.SetEndTimestamp(pcommon.Timestamp(150 * (i % 8)))
			s.Attributes().PutStr("http.method", []string{"GET", "POST", ""}[i%3])
			s.Attributes().PutBool("retry", i%2 == 0)
			s.Attributes().PutInt("attempt", int64(i-10))
		}
		empty := td.ResourceSpans().AppendEmpty()
		empty.ScopeSpans().AppendEmpty().Spans().AppendEmpty().SetName("x")
		body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
		require.NoError(t, err)
		requireSameDecoding(t, body, testDims)
	})
}

func TestDecodeProtoFallsBackForComplexValues(t *testing.T) {
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "api")
	s := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	s.SetTraceID(pcommon.TraceID{1})
	s.SetStartTimestamp(1)
	s.SetEndTimestamp(2)
	s.Attributes().PutDouble("ratio", 0.25)
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)
	dims := []Dimension{NewDimension("ratio")}
	_, _, _, err = viaWire(t, body, dims)
	require.ErrorIs(t, err, errNeedsPdata)

	var b sample.Batch
	var ref Refusals
	n, err := decodeProtobuf(body)(NewDecoder(dims), &b, &ref)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.Equal(t, "0.25", b.Series[0].Labels.Get("ratio"))
}

func TestDecodeProtoRefusesMalformed(t *testing.T) {
	f := func(body []byte) {
		t.Helper()
		_, _, _, err := viaWire(t, body, nil)
		var we *wireError
		require.True(t, errors.As(err, &we), "want a wireError, got %v", err)
		require.Contains(t, err.Error(), "malformed OTLP protobuf")
	}
	f([]byte{0xff, 0xff, 0xff, 0x0f})
	f([]byte{0x0a, 0x05, 0x12})                   // length past the end
	f([]byte{0x0a, 0x02, 0x12, 0x05})             // nested length past its parent
	f([]byte{0x08, 0x01})                         // resource_spans as a varint
	f([]byte{0x0a, 0x04, 0x12, 0x02, 0x12, 0x01}) // span cut short inside scope_spans
}

// FuzzDecodeProto checks that the walker never panics and, where pdata
// accepts a request, decodes it as the pdata path does.
func FuzzDecodeProto(f *testing.F) {
	f.Add(benchRequest(20))
	td := demo.NewGenerator(1).Traces(time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC), 3)
	body, _ := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	f.Add(body)
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Add(nestedArrayRequest("retry", 70))
	f.Add(nestedArrayRequest("retry", 3))
	f.Fuzz(func(t *testing.T, body []byte) {
		wb, wref, wn, werr := viaWire(t, body, testDims)
		if checkValueDepth(body) != nil {
			return // refused before pdata would recurse into it
		}
		td, perr := unmarshalProto(body)
		if perr != nil || werr != nil {
			// The walker skips fields it does not use, so it may accept
			// what pdata refuses; the converse would be a walker bug,
			// except for values only the walker inspects.
			return
		}
		var pb sample.Batch
		var pref Refusals
		pn := NewDecoder(testDims).WithStages(DefaultStages()).Decode(td, &pb, &pref)
		if pn != wn || pref != wref || len(pb.Samples) != len(wb.Samples) {
			t.Fatalf("walker and pdata differ: spans %d/%d refusals %v/%v samples %d/%d", wn, pn, wref, pref, len(wb.Samples), len(pb.Samples))
		}
	})
}

// normHops makes empty and absent byte fields compare equal.
func normHops(hs []hopSpan) []hopSpan {
	out := make([]hopSpan, len(hs))
	for i, h := range hs {
		for _, f := range []*[]byte{&h.spanID, &h.parentID, &h.service, &h.dbSystem, &h.dbName, &h.peerService} {
			if len(*f) == 0 {
				*f = nil
			}
		}
		out[i] = h
	}
	return out
}

type writerView struct {
	service, instance, host string
	maxEnd                  int64
}

func normWriters(ws []writerProgress) []writerView {
	var out []writerView
	for _, w := range ws {
		out = append(out, writerView{string(w.service), string(w.instance), string(w.host), w.maxEnd})
	}
	return out
}

func TestWriterProgressPerResource(t *testing.T) {
	td := ptrace.NewTraces()
	add := func(attrs map[string]string, ends ...uint64) {
		rs := td.ResourceSpans().AppendEmpty()
		for k, v := range attrs {
			rs.Resource().Attributes().PutStr(k, v)
		}
		spans := rs.ScopeSpans().AppendEmpty().Spans()
		for _, e := range ends {
			s := spans.AppendEmpty()
			s.SetName("op")
			s.SetTraceID(pcommon.TraceID{1})
			s.SetStartTimestamp(pcommon.Timestamp(e - 10))
			s.SetEndTimestamp(pcommon.Timestamp(e))
		}
	}
	add(map[string]string{"service.name": "a", "service.instance.id": "a-1", "host.name": "h1"}, 500, 900, 700)
	add(map[string]string{"service.name": "b", "host.name": "h2"}, 300)
	add(map[string]string{"service.name": "c"}, 0) // refused (no timestamps): no progress
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)
	d := NewDecoder(nil)
	var b sample.Batch
	var ref Refusals
	_, err = d.DecodeProto(body, &b, &ref)
	require.NoError(t, err)
	require.Equal(t, []writerView{{"a", "a-1", "h1", 900}, {"b", "", "h2", 300}}, normWriters(d.writers))
	requireSameDecoding(t, body, nil)
}
