package ingest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/prometheus/prometheus/model/labels"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/sample"
)

// The streaming ingest service (hopwatch.v1.IngestService): hop records in
// columnar batches over one bidirectional stream per writer. Each stream is
// served by one goroutine that receives a batch, applies it (the same
// durable append as OTLP) and acknowledges it, so a slow append delays the
// acknowledgement; the client may have at most its credit unacknowledged,
// so a slow server slows its producers instead of dropping their data.

// streamWriter is the dedup state of one writer: the last sequence number
// applied. Its lock serialises applies of the writer across streams, so a
// reconnecting client racing its old stream cannot apply a batch twice.
type streamWriter struct {
	mtx      sync.Mutex
	last     uint64
	lastUsed int64
	// gap is the lowest seq storage could not take (UNAVAILABLE), 0 for
	// none. Later batches wait for it: applying them first would make its
	// resend look like a duplicate of an applied batch.
	gap uint64
}

type streamWriterKey struct{ tenant, writer string }

// streamWriters holds the dedup state of every streaming writer.
type streamWriters struct {
	mtx     sync.Mutex
	writers map[streamWriterKey]*streamWriter
}

func (s *streamWriters) get(tenantID, writer string) *streamWriter {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	k := streamWriterKey{tenantID, writer}
	w := s.writers[k]
	if w == nil {
		w = &streamWriter{}
		s.writers[k] = w
	}
	return w
}

// expire forgets writers that have not streamed since before cutoff.
func (s *streamWriters) expire(cutoff int64) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	for k, w := range s.writers {
		if w.mtx.TryLock() {
			if w.lastUsed < cutoff {
				delete(s.writers, k)
			}
			w.mtx.Unlock()
		}
	}
}

// streamService is hopwatch.v1.IngestService.
type streamService struct {
	hopwatchv1.UnimplementedIngestServiceServer
	r *Receiver
}

func (r *Receiver) registerStreamService(s *grpc.Server) {
	hopwatchv1.RegisterIngestServiceServer(s, streamService{r: r})
}

func (s streamService) Stream(stream grpc.BidiStreamingServer[hopwatchv1.StreamRequest, hopwatchv1.StreamResponse]) error {
	r := s.r
	ctx := stream.Context()
	tenantID, err := r.resolver.FromGRPC(ctx)
	if err != nil {
		r.metrics.requestsRefused.WithLabelValues(protoStream, refusedTenant).Inc()
		return status.Error(tenantCode(err), err.Error())
	}
	ids := metadata.ValueFromIncomingContext(ctx, writerMetadata)
	if len(ids) != 1 || ids[0] == "" {
		r.metrics.requestsRefused.WithLabelValues(protoStream, refusedWriter).Inc()
		return status.Errorf(codes.InvalidArgument, "a stream needs exactly one %s metadata value naming its writer, got %d", writerMetadata, len(ids))
	}
	writer := ids[0]
	if err := writerFromHeader(writer); err != nil {
		r.metrics.requestsRefused.WithLabelValues(protoStream, refusedWriter).Inc()
		return status.Error(codes.InvalidArgument, err.Error())
	}
	window := uint64(r.opts.StreamWindow)
	if err := stream.Send(&hopwatchv1.StreamResponse{Credit: uint32(window)}); err != nil {
		return err
	}
	// A reader goroutine receives ahead of the applies, so that decoding
	// overlaps appending and credit can be enforced: a compliant client
	// never has more than window batches unacknowledged, so batches is
	// never full.
	var acked atomic.Uint64
	batches := make(chan *hopwatchv1.StreamRequest, window)
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		for received := uint64(1); ; received++ {
			// Received raw and unmarshalled here, so that a malformed
			// message (invalid UTF-8 in a label among them) is refused
			// with InvalidArgument and counted, not gRPC's Internal.
			raw := new(rawMessage)
			if err := stream.RecvMsg(raw); err != nil {
				if !errors.Is(err, io.EOF) {
					readErr <- err
				}
				return
			}
			req := new(hopwatchv1.StreamRequest)
			if err := proto.Unmarshal(raw.b, req); err != nil {
				r.metrics.requestsRefused.WithLabelValues(protoStream, refusedMalformed).Inc()
				readErr <- status.Errorf(codes.InvalidArgument, "malformed StreamRequest (message %d of the stream, %d bytes): %v", received, len(raw.b), err)
				return
			}
			if granted := window + acked.Load(); received > granted {
				r.metrics.requestsRefused.WithLabelValues(protoStream, refusedCredit).Inc()
				readErr <- status.Errorf(codes.ResourceExhausted,
					"batch %d sent beyond the stream's credit (%d batches granted): wait for acknowledgements before sending more", req.GetBatch().GetSeq(), granted)
				return
			}
			batches <- req
		}
	}()
	w := r.work.Get().(*work)
	defer r.work.Put(w)
	dedup := r.streams.get(tenantID, writer)
	// A batch refused by a rate limit is acknowledged at once, but its
	// credit, and that of every batch acknowledged after it, is withheld
	// until its retry delay has passed: the client's sending stops for as
	// long as the limit asks, even if it resends sooner.
	var (
		withheld uint32
		grantAt  time.Time
		grant    <-chan time.Time // nil while nothing is withheld
		timer    *time.Timer
	)
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		var req *hopwatchv1.StreamRequest
		select {
		case <-r.draining:
			return errDraining
		case err := <-readErr:
			return err
		case <-grant:
			// Granted before it is sent: the client may answer at once.
			acked.Add(uint64(withheld))
			credit := withheld
			withheld, grant = 0, nil
			if err := stream.Send(&hopwatchv1.StreamResponse{Credit: credit}); err != nil {
				return err
			}
			continue
		case req = <-batches:
		}
		if req == nil { // the client closed its side and every batch is applied
			select {
			case err := <-readErr:
				return err
			default:
				return nil
			}
		}
		ack, retryAfter := r.applyBatch(ctx, tenantID, writer, dedup, w, req.GetBatch())
		if retryAfter > 0 {
			if at := time.Now().Add(retryAfter); withheld == 0 || at.After(grantAt) {
				grantAt = at
				if timer == nil {
					timer = time.NewTimer(retryAfter)
				} else {
					timer.Reset(retryAfter)
				}
				grant = timer.C
			}
		}
		if withheld > 0 || retryAfter > 0 {
			withheld++
		} else {
			ack.Credit = 1
			// Granted before it is sent: the client may answer at once.
			acked.Add(1)
		}
		if err := stream.Send(ack); err != nil {
			return err
		}
	}
}

// errDraining ends the streams of a node that shuts down; clients resend
// what is unacknowledged to the node when it is back (or to another).
var errDraining = status.Error(codes.Unavailable, "hopwatch is shutting down: reconnect and resend the unacknowledged batches")

func tenantCode(err error) codes.Code {
	if errors.Is(err, tenant.ErrMissing) {
		return codes.Unauthenticated
	}
	return codes.InvalidArgument
}

// applyBatch applies one batch of a writer once, and says how it went;
// retryAfter is positive when a rate limit refused the batch, for as long
// as the stream withholds credit.
func (r *Receiver) applyBatch(ctx context.Context, tenantID, writer string, dedup *streamWriter, w *work, hb *hopwatchv1.HopBatch) (_ *hopwatchv1.StreamResponse, retryAfter time.Duration) {
	start := time.Now()
	defer func() { r.metrics.duration.WithLabelValues(protoStream).Observe(time.Since(start).Seconds()) }()
	r.metrics.requests.WithLabelValues(protoStream).Inc()
	seq := hb.GetSeq()
	ack := &hopwatchv1.StreamResponse{Seq: seq}
	reject := func(reason, msg string) *hopwatchv1.StreamResponse {
		r.metrics.requestsRefused.WithLabelValues(protoStream, reason).Inc()
		ack.Status, ack.ErrorMessage = hopwatchv1.AckStatus_ACK_STATUS_REJECTED, msg
		return ack
	}
	if seq == 0 {
		return reject(refusedMalformed, "batch seq 0: sequence numbers start at 1"), 0
	}

	dedup.mtx.Lock()
	defer dedup.mtx.Unlock()
	dedup.lastUsed = start.UnixNano()
	if seq <= dedup.last {
		r.metrics.streamDuplicates.Inc()
		ack.Status = hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE
		return ack, 0
	}
	if dedup.gap != 0 && seq > dedup.gap {
		r.metrics.requestsRefused.WithLabelValues(protoStream, refusedUnavailable).Inc()
		ack.Status = hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE
		ack.ErrorMessage = fmt.Sprintf("batch %d waits for batch %d, which storage could not take: resend from batch %d", seq, dedup.gap, dedup.gap)
		return ack, 0
	}

	w.batch.Reset()
	var ref Refusals
	r.setTimeBounds(w.dec, start)
	n, end, err := w.dec.decodeHopBatch(hb, &w.batch, &ref)
	if err != nil {
		return reject(refusedMalformed, fmt.Sprintf("malformed batch %d: %v", seq, err)), 0
	}
	r.metrics.spansReceived.WithLabelValues(protoStream).Add(float64(n))
	size := int64(proto.Size(hb))
	if e := r.allow(tenantID, int64(n), size); e != nil {
		r.countRateLimited(protoStream, tenantID, n, e)
		if e.tooLarge {
			ack.Status, ack.ErrorMessage = hopwatchv1.AckStatus_ACK_STATUS_REJECTED, e.Error()
			return ack, 0
		}
		// UNAVAILABLE: the client sends it again with the same seq. Later
		// batches wait for it, as for a storage failure: applied first,
		// they would make its resend look like a duplicate.
		ack.Status, ack.ErrorMessage = hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, e.Error()
		if dedup.gap == 0 || seq < dedup.gap {
			dedup.gap = seq
		}
		return ack, e.retryAfter
	}
	// Storage logs the seq with the samples and refuses a seq it applied
	// before a restart, which the in-memory check above cannot know.
	w.batch.Writer, w.batch.Seq = writer, seq
	err = r.app.Append(ctx, tenantID, &w.batch)
	if err != nil {
		// Not applied now (a duplicate was counted when it was): its
		// tokens go back, so a resend does not pay twice.
		r.giveBack(tenantID, int64(n), size)
	}
	if errors.Is(err, sample.ErrDuplicate) {
		dedup.last = max(dedup.last, seq)
		r.metrics.streamDuplicates.Inc()
		ack.Status = hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE
		return ack, 0
	}
	if err != nil {
		r.metrics.requestsRefused.WithLabelValues(protoStream, refusedUnavailable).Inc()
		r.logger.Warn("append failed", "tenant", tenantID, "writer", writer, "seq", seq, "records", len(w.batch.Samples), "err", err)
		ack.Status, ack.ErrorMessage = hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE, errUnavailable{err}.Error()
		if dedup.gap == 0 || seq < dedup.gap {
			dedup.gap = seq
		}
		return ack, 0
	}
	r.countLate(tenantID, &w.batch)
	r.countLimited(tenantID, &w.batch, &ref, true)
	dedup.last = seq
	if seq == dedup.gap {
		dedup.gap = 0
	}
	rejected := ref.Total()
	r.metrics.spansAccepted.WithLabelValues(protoStream).Add(float64(n - rejected))
	r.countRefusals(protoStream, tenantID, &ref)
	if p := max(end, hb.GetWatermarkUnixNano()); p > 0 {
		r.marks.Observe(tenantID, append(w.id[:0], writer...), p, start.UnixNano())
	}
	ack.Status = hopwatchv1.AckStatus_ACK_STATUS_OK
	ack.AcceptedRecords, ack.RejectedRecords = uint32(n-rejected), uint32(rejected)
	if rejected > 0 {
		ack.ErrorMessage = ref.Message(n)
	}
	return ack, 0
}

// decodeHopBatch appends a batch's records to b. Records of a series
// refused for its values are counted in ref; a batch whose columns do not
// fit together is malformed as a whole. It returns the records seen and the
// latest record end.
func (d *Decoder) decodeHopBatch(hb *hopwatchv1.HopBatch, b *sample.Batch, ref *Refusals) (n int, end int64, err error) {
	clear(d.index)
	n = len(hb.GetSeriesIndex())
	starts, durs := hb.GetStartTimeDeltaUnixNano(), hb.GetDurationNano()
	ids, failed := hb.GetTraceIds(), hb.GetFailed()
	switch {
	case len(starts) != n || len(durs) != n:
		return 0, 0, fmt.Errorf("columns of different lengths: %d series_index, %d start_time_delta_unix_nano, %d duration_nano", n, len(starts), len(durs))
	case len(ids) != 0 && len(ids) != 16*n:
		return 0, 0, fmt.Errorf("trace_ids has %d bytes, want 0 or 16 per record (%d)", len(ids), 16*n)
	case len(failed) != 0 && len(failed) != (n+7)/8:
		return 0, 0, fmt.Errorf("failed has %d bytes, want 0 or one bit per record (%d bytes)", len(failed), (n+7)/8)
	}
	// Map the batch's series to b's, or to a refusal reason.
	d.streamIdx = d.streamIdx[:0]
	for i, hs := range hb.GetSeries() {
		idx, reason, err := d.hopSeries(b, hs)
		if err != nil {
			return 0, 0, fmt.Errorf("series %d: %w", i, err)
		}
		d.streamIdx = append(d.streamIdx, streamSeries{idx: idx, reason: reason})
	}
	var t int64
	for i, si := range hb.GetSeriesIndex() {
		if int(si) >= len(d.streamIdx) {
			return 0, 0, fmt.Errorf("record %d refers to series %d of %d", i, si, len(d.streamIdx))
		}
		// Each start is a delta on the one before, so one out of range
		// puts every later record out of place: the batch is malformed.
		if starts[i] > 0 && t > math.MaxInt64-starts[i] || starts[i] < 0 && t < math.MinInt64-starts[i] {
			return 0, 0, fmt.Errorf("record %d: start time delta %d ns overflows int64 nanoseconds", i, starts[i])
		}
		t += starts[i]
		if t <= 0 {
			return 0, 0, fmt.Errorf("record %d: start %d ns is not after the Unix epoch", i, t)
		}
		s := d.streamIdx[si]
		// A record's time refuses it before its series' labels do.
		if durs[i] > math.MaxInt64-uint64(t) {
			s.reason = ReasonTimestampOutOfRange
		} else if r := d.endReason(uint64(t) + durs[i]); r != reasonNone {
			s.reason = r
		}
		if s.reason != reasonNone {
			ref[s.reason]++
			continue
		}
		smp := sample.Sample{Series: s.idx, Start: t, Duration: int64(durs[i])}
		if len(ids) > 0 {
			smp.TraceID = [16]byte(ids[16*i:])
		}
		if len(failed) > 0 {
			smp.Failed = failed[i/8]&(1<<(i%8)) != 0
		}
		b.Samples = append(b.Samples, smp)
		end = max(end, smp.Start+smp.Duration)
	}
	return n, end, nil
}

// streamSeries is a batch series as decoded: its index in the sample
// batch, or why its records are refused.
type streamSeries struct {
	idx    uint32
	reason Reason
}

// The labels each hop kind takes; span series also take the dimensions.
var hopKindLabels = map[hopwatchv1.HopKind][]string{
	hopwatchv1.HopKind_HOP_KIND_SPAN:    {LabelService, LabelSpanName, LabelSpanKind, LabelStatusCode},
	hopwatchv1.HopKind_HOP_KIND_STAGE:   {LabelService, LabelSpanName, LabelFromStage, LabelToStage},
	hopwatchv1.HopKind_HOP_KIND_QUEUE:   {LabelProducer, LabelConsumer},
	hopwatchv1.HopKind_HOP_KIND_NETWORK: {LabelClient, LabelServer},
}

// hopSeries resolves one series of a batch to the same series OTLP spans
// with those labels feed. An error means a client bug (unknown kind or
// label, a required label missing); a reason means the values are refused.
func (d *Decoder) hopSeries(b *sample.Batch, hs *hopwatchv1.HopSeries) (uint32, Reason, error) {
	names, ok := hopKindLabels[hs.GetKind()]
	if !ok {
		return 0, reasonNone, fmt.Errorf("unknown hop kind %v", hs.GetKind())
	}
	var vals [4][]byte
	clear(d.dimValues)
	for _, l := range hs.GetLabels() {
		i := slices.Index(names, l.GetName())
		switch {
		case i >= 0:
			if vals[i] != nil {
				return 0, reasonNone, fmt.Errorf("label %q given twice", l.GetName())
			}
			vals[i] = view(l.GetValue())
		case hs.GetKind() == hopwatchv1.HopKind_HOP_KIND_SPAN && d.dimension(l.GetName()) >= 0:
			d.dimValues[d.dimension(l.GetName())] = view(l.GetValue())
		default:
			return 0, reasonNone, fmt.Errorf("label %q is not one of a %v series (%s%s)", l.GetName(), hs.GetKind(), strings.Join(names, ", "), d.dimensionList(hs.GetKind()))
		}
	}
	required := len(names)
	if hs.GetKind() == hopwatchv1.HopKind_HOP_KIND_SPAN {
		required = 2 // span_kind and status_code default to unspecified and unset
	}
	for i := range required {
		if len(vals[i]) == 0 {
			return 0, reasonNone, fmt.Errorf("%v series without a %q label", hs.GetKind(), names[i])
		}
	}
	for _, v := range vals {
		if len(v) > d.maxValueLen {
			return 0, ReasonLabelValueTooLong, nil
		}
	}
	for _, v := range d.dimValues {
		if len(v) > d.maxValueLen {
			return 0, ReasonLabelValueTooLong, nil
		}
	}
	switch hs.GetKind() {
	case hopwatchv1.HopKind_HOP_KIND_SPAN:
		kind, code := int32(0), int32(0)
		if vals[2] != nil {
			if kind = int32(slices.Index(spanKinds[:], string(vals[2]))); kind < 0 {
				return 0, reasonNone, fmt.Errorf("span_kind %q is not one of %s", vals[2], strings.Join(spanKinds[:], ", "))
			}
		}
		if vals[3] != nil {
			if code = int32(slices.Index(statusCodes[:], string(vals[3]))); code < 0 {
				return 0, reasonNone, fmt.Errorf("status_code %q is not one of %s", vals[3], strings.Join(statusCodes[:], ", "))
			}
		}
		return seriesOrReason(d.spanSeries(b, vals[0], vals[1], kind, code))
	case hopwatchv1.HopKind_HOP_KIND_STAGE:
		return seriesOrReason(d.stageSeries(b, vals[0], vals[1], vals[2], vals[3]))
	}
	family := sample.FamilyQueue
	if hs.GetKind() == hopwatchv1.HopKind_HOP_KIND_NETWORK {
		family = sample.FamilyNetwork
	}
	// The key as the service graph writes it (appendGraphKey).
	k := append(d.key[:0], byte(family), 0xff)
	for i := range 2 {
		k = appendKeyValue(k, view(names[i]))
		k = appendKeyValue(k, vals[i])
	}
	d.key = k
	return seriesOrReason(d.seriesIndex(b, k, func(key string) (sample.Series, bool) {
		if !utf8.Valid(vals[0]) || !utf8.Valid(vals[1]) {
			return sample.Series{}, false
		}
		return sample.Series{Family: family, Key: key, Labels: labels.FromStrings(names[0], string(vals[0]), names[1], string(vals[1]))}, true
	}))
}

// seriesOrReason turns a series lookup into hopSeries' answer: a series
// refused for its values is not valid UTF-8.
func seriesOrReason(idx uint32, ok bool) (uint32, Reason, error) {
	if !ok {
		return 0, ReasonInvalidUTF8, nil
	}
	return idx, reasonNone, nil
}

// dimension returns the index of the dimension with label name, or -1.
func (d *Decoder) dimension(name string) int {
	for i, dim := range d.dims {
		if dim.Label == name {
			return i
		}
	}
	return -1
}

func (d *Decoder) dimensionList(kind hopwatchv1.HopKind) string {
	if kind != hopwatchv1.HopKind_HOP_KIND_SPAN || len(d.dims) == 0 {
		return ""
	}
	var s strings.Builder
	for _, dim := range d.dims {
		s.WriteString(", ")
		s.WriteString(dim.Label)
	}
	return s.String()
}
