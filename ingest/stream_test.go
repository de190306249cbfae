package ingest

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/sample"
)

func hopLabels(kv ...string) []*hopwatchv1.Label {
	var out []*hopwatchv1.Label
	for i := 0; i < len(kv); i += 2 {
		out = append(out, &hopwatchv1.Label{Name: kv[i], Value: kv[i+1]})
	}
	return out
}

// A streamed series and an OTLP span with the same labels must be one
// series in storage: same key, same labels.
func TestHopSeriesMatchOTLPSeries(t *testing.T) {
	dec := NewDecoder([]Dimension{NewDimension("deployment.environment")}).WithStages(DefaultStages())

	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", "api")
	rs.Resource().Attributes().PutStr("deployment.environment", "prod")
	s := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
	s.SetName("GET /a")
	s.SetKind(ptrace.SpanKindServer)
	s.Status().SetCode(ptrace.StatusCodeError)
	s.SetTraceID(pcommon.TraceID{1})
	s.SetStartTimestamp(100)
	s.SetEndTimestamp(200)
	s.Events().AppendEmpty().SetName("enqueue")
	s.Events().At(0).SetTimestamp(110)
	s.Events().AppendEmpty().SetName("dequeue")
	s.Events().At(1).SetTimestamp(150)
	var otlp sample.Batch
	var ref Refusals
	dec.Decode(td, &otlp, &ref)
	require.Len(t, otlp.Series, 2)

	hb := &hopwatchv1.HopBatch{
		Seq: 1,
		Series: []*hopwatchv1.HopSeries{
			{Kind: hopwatchv1.HopKind_HOP_KIND_SPAN, Labels: hopLabels("status_code", "STATUS_CODE_ERROR", "service", "api",
				"deployment_environment", "prod", "span_name", "GET /a", "span_kind", "SPAN_KIND_SERVER")},
			{Kind: hopwatchv1.HopKind_HOP_KIND_STAGE, Labels: hopLabels("service", "api", "span_name", "GET /a", "from_stage", "enqueue", "to_stage", "dequeue")},
			{Kind: hopwatchv1.HopKind_HOP_KIND_QUEUE, Labels: hopLabels("producer", "a", "consumer", "b")},
		},
		SeriesIndex:            []uint32{0, 1, 2},
		StartTimeDeltaUnixNano: []int64{100, 10, 5},
		DurationNano:           []uint64{100, 40, 7},
		Failed:                 []byte{0b001},
	}
	var streamed sample.Batch
	ref = Refusals{}
	n, end, err := dec.decodeHopBatch(hb, &streamed, &ref)
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, int64(200), end)
	require.Len(t, streamed.Series, 3)
	for i := range 2 {
		require.Equal(t, otlp.Series[i].Key, streamed.Series[i].Key, "series %d", i)
		require.Equal(t, otlp.Series[i].Labels, streamed.Series[i].Labels, "series %d", i)
		require.Equal(t, otlp.Series[i].Family, streamed.Series[i].Family, "series %d", i)
	}
	require.Equal(t, sample.FamilyQueue, streamed.Series[2].Family)
	var g graphOut
	g.p = newPairer(DefaultGraphOptions())
	g.batch, g.index = &sample.Batch{}, map[string]uint32{}
	g.add(sample.FamilyQueue, []string{LabelProducer, "a", LabelConsumer, "b"}, sample.Sample{})
	require.Equal(t, g.batch.Series[0].Key, streamed.Series[2].Key, "queue series key as pairing writes it")
	require.Equal(t, g.batch.Series[0].Labels, streamed.Series[2].Labels)

	require.Equal(t, []sample.Sample{
		{Series: 0, Start: 100, Duration: 100, Failed: true},
		{Series: 1, Start: 110, Duration: 40},
		{Series: 2, Start: 115, Duration: 7},
	}, streamed.Samples)
}

func TestHopBatchErrors(t *testing.T) {
	dec := NewDecoder(nil).WithMaxLabelValueLength(8)
	good := func() *hopwatchv1.HopBatch {
		return &hopwatchv1.HopBatch{
			Seq:                    1,
			Series:                 []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_NETWORK, Labels: hopLabels("client", "a", "server", "b")}},
			SeriesIndex:            []uint32{0, 0},
			StartTimeDeltaUnixNano: []int64{100, 1},
			DurationNano:           []uint64{1, 2},
		}
	}
	for name, tc := range map[string]struct {
		mutate func(*hopwatchv1.HopBatch)
		want   string
	}{
		"column lengths": {func(b *hopwatchv1.HopBatch) { b.DurationNano = b.DurationNano[:1] }, "columns of different lengths"},
		"trace ids":      {func(b *hopwatchv1.HopBatch) { b.TraceIds = make([]byte, 17) }, "trace_ids has 17 bytes"},
		"failed bitmap":  {func(b *hopwatchv1.HopBatch) { b.Failed = []byte{0, 0} }, "failed has 2 bytes"},
		"series index":   {func(b *hopwatchv1.HopBatch) { b.SeriesIndex[1] = 3 }, "refers to series 3 of 1"},
		"negative start": {func(b *hopwatchv1.HopBatch) { b.StartTimeDeltaUnixNano[1] = -200 }, "not after the Unix epoch"},
		"start overflow": {func(b *hopwatchv1.HopBatch) { b.StartTimeDeltaUnixNano[1] = math.MaxInt64 }, "overflows int64"},
		"unknown kind":   {func(b *hopwatchv1.HopBatch) { b.Series[0].Kind = 99 }, "unknown hop kind"},
		"missing label":  {func(b *hopwatchv1.HopBatch) { b.Series[0].Labels = b.Series[0].Labels[:1] }, `without a "server" label`},
		"unknown label":  {func(b *hopwatchv1.HopBatch) { b.Series[0].Labels = hopLabels("client", "a", "server", "b", "x", "y") }, `label "x" is not one of`},
		"twice":          {func(b *hopwatchv1.HopBatch) { b.Series[0].Labels = hopLabels("client", "a", "client", "b") }, `label "client" given twice`},
		"bad span kind": {func(b *hopwatchv1.HopBatch) {
			b.Series[0] = &hopwatchv1.HopSeries{Kind: 1, Labels: hopLabels("service", "s", "span_name", "n", "span_kind", "SERVER")}
		}, `span_kind "SERVER" is not one of`},
	} {
		t.Run(name, func(t *testing.T) {
			hb := good()
			tc.mutate(hb)
			var b sample.Batch
			var ref Refusals
			_, _, err := dec.decodeHopBatch(hb, &b, &ref)
			require.ErrorContains(t, err, tc.want)
		})
	}
	// A value over the length limit refuses the series' records, not the batch.
	hb := good()
	hb.Series = append(hb.Series, &hopwatchv1.HopSeries{Kind: hopwatchv1.HopKind_HOP_KIND_NETWORK, Labels: hopLabels("client", "a-very-long-name", "server", "b")})
	hb.SeriesIndex[1] = 1
	var b sample.Batch
	var ref Refusals
	n, _, err := dec.decodeHopBatch(hb, &b, &ref)
	require.NoError(t, err)
	require.Equal(t, 2, n)
	require.Len(t, b.Samples, 1)
	require.Equal(t, 1, ref[ReasonLabelValueTooLong])
}

func BenchmarkDecodeHopBatch(b *testing.B) {
	const n = 1000
	hb := &hopwatchv1.HopBatch{Seq: 1}
	for s := range 20 {
		hb.Series = append(hb.Series, &hopwatchv1.HopSeries{Kind: hopwatchv1.HopKind_HOP_KIND_STAGE,
			Labels: hopLabels("service", "svc", "span_name", "op", "from_stage", "enqueue", "to_stage", string(rune('a'+s)))})
	}
	for i := range n {
		hb.SeriesIndex = append(hb.SeriesIndex, uint32(i%20))
		hb.StartTimeDeltaUnixNano = append(hb.StartTimeDeltaUnixNano, 1_700_000_000_000_000_000/int64(n)+int64(i))
		hb.DurationNano = append(hb.DurationNano, uint64(1000+i))
	}
	hb.TraceIds = make([]byte, 16*n)
	dec := NewDecoder(nil).WithStages(DefaultStages())
	var batch sample.Batch
	b.Run("columns", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			batch.Reset()
			var ref Refusals
			if _, _, err := dec.decodeHopBatch(hb, &batch, &ref); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	})
	// With the protobuf unmarshal the server does per message.
	wire, err := proto.Marshal(&hopwatchv1.StreamRequest{Batch: hb})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("unmarshal+columns", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(wire)))
		for range b.N {
			req := new(hopwatchv1.StreamRequest)
			if err := proto.Unmarshal(wire, req); err != nil {
				b.Fatal(err)
			}
			batch.Reset()
			var ref Refusals
			if _, _, err := dec.decodeHopBatch(req.GetBatch(), &batch, &ref); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/record")
	})
}

// flakyAppender fails while fail is set, and takes every streamed batch
// for a duplicate while duplicate is.
type flakyAppender struct {
	fail, duplicate bool
	applied         int
}

func (a *flakyAppender) Append(_ context.Context, _ string, b *sample.Batch) error {
	if a.fail {
		return errors.New("disk full")
	}
	if a.duplicate && b.Seq != 0 {
		return sample.ErrDuplicate
	}
	a.applied += len(b.Samples)
	return nil
}

// TestStreamUnavailableHoldsLaterBatches: a batch storage could not take
// holds the writer's later batches back, so that its resend is applied and
// not mistaken for a duplicate of an applied batch.
func TestStreamUnavailableHoldsLaterBatches(t *testing.T) {
	app := &flakyAppender{}
	r, err := New(DefaultOptions(), app, nil, nil)
	require.NoError(t, err)
	w := r.work.Get().(*work)
	dedup := r.streams.get("anonymous", "w")
	batch := func(seq uint64) *hopwatchv1.HopBatch {
		return &hopwatchv1.HopBatch{
			Seq:                    seq,
			Series:                 []*hopwatchv1.HopSeries{{Kind: hopwatchv1.HopKind_HOP_KIND_NETWORK, Labels: hopLabels("client", "a", "server", "b")}},
			SeriesIndex:            []uint32{0},
			StartTimeDeltaUnixNano: []int64{int64(seq) * 1000},
			DurationNano:           []uint64{5},
		}
	}
	apply := func(seq uint64) hopwatchv1.AckStatus {
		ack, _ := r.applyBatch(context.Background(), "anonymous", "w", dedup, w, batch(seq))
		return ack.GetStatus()
	}
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, apply(1))
	app.fail = true
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, apply(2))
	app.fail = false
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, apply(3), "batch 3 must wait for batch 2")
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, apply(2))
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_OK, apply(3))
	require.Equal(t, hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE, apply(2))
	require.Equal(t, 3, app.applied, "every batch applied exactly once")
}
