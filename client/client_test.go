package client

import (
	"context"
	"fmt"
	"math"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

const (
	statusOK          = hopwatchv1.AckStatus_ACK_STATUS_OK
	statusDuplicate   = hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE
	statusRejected    = hopwatchv1.AckStatus_ACK_STATUS_REJECTED
	statusUnavailable = hopwatchv1.AckStatus_ACK_STATUS_UNAVAILABLE
)

// base is the start of the test records.
var base = time.Unix(1_700_000_000, 0)

// A caller's timeout and a margin that leave the client 100ms to wait, and
// the test 9.9s to see that the answer came before the caller's deadline,
// however the machine stalls.
const (
	callerTimeout = 10 * time.Second
	margin        = callerTimeout - 100*time.Millisecond
)

func stageSeries(t testing.TB, c *Client, from, to string) SeriesRef {
	t.Helper()
	ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_STAGE,
		"service", "checkout", "span_name", "process-order", "from_stage", from, "to_stage", to)
	require.NoError(t, err)
	return ref
}

// recordN records n hops of ref, the i-th starting i ms after base.
func recordN(t testing.TB, c *Client, ref SeriesRef, n int) {
	t.Helper()
	for i := range n {
		require.NoError(t, c.Record(context.Background(), Hop{Series: ref, Start: base.Add(time.Duration(i) * time.Millisecond), Duration: time.Millisecond}))
	}
}

// goFlush flushes c on a goroutine; the result arrives on the channel.
func goFlush(c *Client, ctx context.Context) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- c.Flush(ctx) }()
	return ch
}

// closeCleanly closes c while ss acknowledges nothing more: the client
// must half-close the stream, and does not get the stream ended before.
func closeCleanly(t *testing.T, c *Client, ss *serverStream) {
	t.Helper()
	closed := make(chan error, 1)
	go func() { closed <- c.Close(context.Background()) }()
	require.Nil(t, ss.recv(t), "no batch after everything was acknowledged")
	ss.finish(nil)
	require.NoError(t, <-closed)
}

func TestBatchesBySize(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.Tenant = "team-a"
	o.MaxBatchRecords = 3
	o.QueueSize = 30
	c := newTestClient(t, o)
	ss := ts.accept(t)
	require.Equal(t, []string{"test-writer"}, ss.md.Get("x-hopwatch-writer"))
	require.Equal(t, []string{"team-a"}, ss.md.Get("x-scope-orgid"))
	ss.grant(t, 10)

	stage := stageSeries(t, c, "enqueue", "dequeue")
	queue, err := c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "producer", "checkout", "consumer", "billing")
	require.NoError(t, err)
	const (
		stageString = `HOP_KIND_STAGE{from_stage="enqueue", service="checkout", span_name="process-order", to_stage="dequeue"}`
		queueString = `HOP_KIND_QUEUE{consumer="billing", producer="checkout"}`
	)
	var want []record
	for i := range 7 {
		h := Hop{Series: stage, Start: base.Add(time.Duration(i) * time.Millisecond), Duration: time.Duration(i+1) * time.Microsecond}
		r := record{series: stageString, start: h.Start.UnixNano(), duration: uint64(h.Duration)}
		if i%2 == 1 {
			h.Series, r.series = queue, queueString
			h.TraceID = [16]byte{byte(i), 0xab}
			r.traceID = h.TraceID
		}
		if i == 4 {
			h.Failed, r.failed = true, true
		}
		if i == 5 { // out of order: a negative delta
			h.Start = base.Add(-time.Second)
			r.start = h.Start.UnixNano()
		}
		require.NoError(t, c.Record(context.Background(), h))
		want = append(want, r)
	}

	// Two full batches go without a flush; the seventh record waits.
	b1, b2 := ss.recv(t), ss.recv(t)
	flushed := goFlush(c, context.Background())
	b3 := ss.recv(t)
	require.Equal(t, []uint64{1, 2, 3}, []uint64{b1.Seq, b2.Seq, b3.Seq})
	require.Equal(t, []int{3, 3, 1}, []int{len(b1.SeriesIndex), len(b2.SeriesIndex), len(b3.SeriesIndex)})
	got := append(append(decode(t, b1), decode(t, b2)...), decode(t, b3)...)
	require.Equal(t, want, got)

	// Each batch has its own series table, and leaves out columns with
	// nothing to say.
	require.Len(t, b1.Series, 2)
	require.Len(t, b3.Series, 1)
	require.Empty(t, b1.Failed, "no failure in batch 1")
	require.NotEmpty(t, b2.Failed)
	require.NotEmpty(t, b1.TraceIds)
	require.Empty(t, b3.TraceIds, "no trace id in batch 3")

	for _, b := range []*hopwatchv1.HopBatch{b1, b2, b3} {
		ss.ack(t, b.Seq, statusOK, 1)
	}
	require.NoError(t, <-flushed)
	require.Equal(t, 7.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 3.0, testutil.ToFloat64(c.metrics.batchesSent))
	require.Equal(t, 0.0, testutil.ToFloat64(c.metrics.queueLength))
	closeCleanly(t, c, ss)
}

func TestBatchesByInterval(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.BatchInterval = 5 * time.Millisecond
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 10)
	ref := stageSeries(t, c, "enqueue", "dequeue")

	// One record, far from a full batch, is sent without a flush.
	recordN(t, c, ref, 1)
	b := ss.recv(t)
	require.Equal(t, uint64(1), b.Seq)
	require.Len(t, b.SeriesIndex, 1)
	ss.ack(t, 1, statusOK, 1)
	recordN(t, c, ref, 1)
	b = ss.recv(t)
	require.Equal(t, uint64(2), b.Seq)
	ss.ack(t, 2, statusOK, 1)
	closeCleanly(t, c, ss)
}

func TestCreditBoundsBatchesInFlight(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.QueueSize = 40
	o.FullPolicy = Drop
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 2)
	ref := stageSeries(t, c, "enqueue", "dequeue")

	// Four batches fill the queue; two may be in flight.
	recordN(t, c, ref, 40)
	require.ErrorIs(t, c.Record(context.Background(), Hop{Series: ref, Start: base, Duration: 1}), ErrQueueFull)
	require.Equal(t, 1.0, testutil.ToFloat64(c.metrics.droppedQueueFull))
	require.Equal(t, 40.0, testutil.ToFloat64(c.metrics.queueLength))
	require.Equal(t, 40.0, testutil.ToFloat64(c.metrics.queueCapacity))
	require.Equal(t, uint64(1), ss.recv(t).Seq)
	require.Equal(t, uint64(2), ss.recv(t).Seq)

	// Acknowledgements without credit let nothing more go: recv fails the
	// test on any batch beyond the credit granted.
	ss.ack(t, 1, statusOK, 0)
	ss.ack(t, 2, statusOK, 0)
	flushed := goFlush(c, context.Background())
	ss.grant(t, 1)
	require.Equal(t, uint64(3), ss.recv(t).Seq)
	ss.ack(t, 3, statusOK, 1)
	require.Equal(t, uint64(4), ss.recv(t).Seq)
	ss.ack(t, 4, statusOK, 0)
	require.NoError(t, <-flushed)
	require.Equal(t, 40.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 1.0, testutil.ToFloat64(c.metrics.droppedQueueFull))
	closeCleanly(t, c, ss)
}

func TestBlockWaitsForRoomUntilDeadlineLessMargin(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.QueueSize = 20
	o.DeadlineMargin = margin
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 1)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 20)
	require.Equal(t, uint64(1), ss.recv(t).Seq)
	hop := Hop{Series: ref, Start: base, Duration: 1}

	// The caller gets its answer at its deadline less the margin, before
	// its own deadline.
	ctx, cancel := context.WithTimeout(context.Background(), callerTimeout)
	defer cancel()
	err := c.Record(ctx, hop)
	require.ErrorIs(t, err, ErrQueueFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, ctx.Err(), "Record answered after the caller's deadline")

	// A deadline closer than the margin is refused at once.
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	err = c.Record(ctx, hop)
	require.ErrorIs(t, err, ErrQueueFull)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	err = c.Record(ctx, hop)
	require.ErrorIs(t, err, ErrQueueFull)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, 3.0, testutil.ToFloat64(c.metrics.droppedQueueFull))

	// Without a deadline Record waits until an acknowledgement makes room.
	recorded := make(chan error, 1)
	go func() { recorded <- c.Record(context.Background(), hop) }()
	select {
	case err := <-recorded:
		t.Fatalf("Record returned %v while the queue was full", err)
	default:
	}
	ss.ack(t, 1, statusOK, 1)
	require.NoError(t, <-recorded)
	require.Equal(t, uint64(2), ss.recv(t).Seq)
	flushed := goFlush(c, context.Background())
	ss.ack(t, 2, statusOK, 1)
	b := ss.recv(t)
	require.Equal(t, uint64(3), b.Seq)
	require.Len(t, b.SeriesIndex, 1)
	ss.ack(t, 3, statusOK, 1)
	require.NoError(t, <-flushed)
	require.Equal(t, 21.0, testutil.ToFloat64(c.metrics.recordsSent))
	closeCleanly(t, c, ss)
}

func TestResendAfterStreamFailureIsIdempotent(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.QueueSize = 100
	c := newTestClient(t, o)
	s := newStore()
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 100)

	// Four batches arrive and are applied; only two acknowledgements go
	// out before the stream breaks.
	ss := ts.accept(t)
	ss.grant(t, 4)
	for seq := uint64(1); seq <= 4; seq++ {
		b := ss.recv(t)
		require.Equal(t, seq, b.Seq)
		require.Equal(t, statusOK, s.apply(b))
	}
	ss.ack(t, 1, statusOK, 0)
	ss.ack(t, 2, statusOK, 0)
	ss.finish(status.Error(codes.Unavailable, "hopwatch restarting"))

	// The client reconnects as the same writer and sends 3 and 4 again
	// with their seq; the store answers DUPLICATE and applies them once.
	ss = ts.accept(t)
	require.Equal(t, []string{"test-writer"}, ss.md.Get("x-hopwatch-writer"))
	wait := ss.serveInBackground(t, s, 4)
	require.NoError(t, c.Flush(context.Background()))
	require.NoError(t, c.Close(context.Background()))
	wait()

	require.Equal(t, 100, s.records, "every record applied exactly once")
	for seq := uint64(1); seq <= 10; seq++ {
		want := 1
		if seq == 3 || seq == 4 {
			want = 2
		}
		require.Len(t, s.copies[seq], want, "arrivals of seq %d", seq)
	}
	require.True(t, proto.Equal(s.copies[3][0], s.copies[3][1]), "a batch is sent again unchanged")
	require.Equal(t, 100.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 2.0, testutil.ToFloat64(c.metrics.batchesRetried))
	require.Equal(t, 10.0, testutil.ToFloat64(c.metrics.batchesSent))
	require.Equal(t, 1.0, testutil.ToFloat64(c.metrics.reconnects))
}

func TestRejectedRecordsAreDroppedNotRetried(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.QueueSize = 30
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 3)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 30)
	for seq := uint64(1); seq <= 3; seq++ {
		require.Equal(t, seq, ss.recv(t).Seq)
	}
	ss.send(t, &hopwatchv1.StreamResponse{Seq: 1, Status: statusOK, AcceptedRecords: 10})
	ss.send(t, &hopwatchv1.StreamResponse{Seq: 2, Status: statusRejected, ErrorMessage: "malformed batch"})
	ss.send(t, &hopwatchv1.StreamResponse{Seq: 3, Status: statusOK, AcceptedRecords: 8, RejectedRecords: 2, ErrorMessage: "label value too long"})
	require.NoError(t, c.Flush(context.Background()))
	require.Equal(t, 18.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 12.0, testutil.ToFloat64(c.metrics.droppedRejected))
	require.Equal(t, 0.0, testutil.ToFloat64(c.metrics.batchesRetried))
	closeCleanly(t, c, ss) // fails if batch 2 comes again
}

func TestUnavailableIsSentAgainAfterBackoff(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.QueueSize = 30
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 2)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 20)
	b1, b2 := ss.recv(t), ss.recv(t)
	require.Equal(t, []uint64{1, 2}, []uint64{b1.Seq, b2.Seq})

	// Both could not be stored; they come again in seq order, unchanged.
	ss.ack(t, 1, statusUnavailable, 1)
	ss.ack(t, 2, statusUnavailable, 1)
	again1, again2 := ss.recv(t), ss.recv(t)
	require.True(t, proto.Equal(b1, again1))
	require.True(t, proto.Equal(b2, again2))
	flushed := goFlush(c, context.Background())
	ss.ack(t, 1, statusOK, 1)
	ss.ack(t, 2, statusOK, 1)
	require.NoError(t, <-flushed)
	require.Equal(t, 20.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 2.0, testutil.ToFloat64(c.metrics.batchesRetried))
	require.Equal(t, 0.0, testutil.ToFloat64(c.metrics.reconnects))
	closeCleanly(t, c, ss)
}

func TestDuplicateOnFirstSendMeansWriterReused(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 1)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 10)
	require.Equal(t, uint64(1), ss.recv(t).Seq)
	ss.ack(t, 1, statusDuplicate, 1)
	require.NoError(t, c.Flush(context.Background()))
	require.Equal(t, 0.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 10.0, testutil.ToFloat64(c.metrics.droppedDuplicateSeq))
	closeCleanly(t, c, ss)
}

func TestDuplicateOfBatchNeverAppliedIsALoss(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 2)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 20)
	require.Equal(t, uint64(1), ss.recv(t).Seq)
	require.Equal(t, uint64(2), ss.recv(t).Seq)

	// Batch 1 could not be stored, batch 2 was: a server that keeps only
	// the last seq applied answers batch 1's resend with DUPLICATE. It was
	// never applied, so its records are not counted as sent.
	ss.ack(t, 1, statusUnavailable, 1)
	ss.ack(t, 2, statusOK, 1)
	require.Equal(t, uint64(1), ss.recv(t).Seq)
	ss.ack(t, 1, statusDuplicate, 1)
	require.NoError(t, c.Flush(context.Background()))
	require.Equal(t, 10.0, testutil.ToFloat64(c.metrics.recordsSent))
	require.Equal(t, 10.0, testutil.ToFloat64(c.metrics.droppedDuplicateSeq))
	closeCleanly(t, c, ss)
}

func TestAckTimeoutReconnectsAndResends(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.AckTimeout = 50 * time.Millisecond
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 1)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 10)
	b := ss.recv(t)

	// No answer: the client gives up on the stream and sends the batch
	// again on a new one. (Should a stalled machine make a later stream
	// time out too, the client just goes on to the next.)
	s := newStore()
	stop := ts.serveAll(t, s, 1)
	require.NoError(t, c.Flush(context.Background()))
	require.NoError(t, c.Close(context.Background()))
	stop()
	require.Equal(t, 10, s.records)
	require.True(t, proto.Equal(b, s.copies[1][0]), "the batch is sent again unchanged")
	require.GreaterOrEqual(t, testutil.ToFloat64(c.metrics.batchesRetried), 1.0)
	require.GreaterOrEqual(t, testutil.ToFloat64(c.metrics.reconnects), 1.0)
	require.Equal(t, 10.0, testutil.ToFloat64(c.metrics.recordsSent))
}

func TestFlush(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.DeadlineMargin = margin
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 10)
	ref := stageSeries(t, c, "enqueue", "dequeue")

	require.NoError(t, c.Flush(context.Background()), "nothing to flush")

	// Flush waits for the acknowledgement, not just the send.
	recordN(t, c, ref, 1)
	flushed := goFlush(c, context.Background())
	b := ss.recv(t)
	select {
	case err := <-flushed:
		t.Fatalf("Flush returned %v before the acknowledgement", err)
	default:
	}
	ss.ack(t, b.Seq, statusOK, 1)
	require.NoError(t, <-flushed)

	// Unacknowledged, Flush gives up at its deadline less the margin.
	recordN(t, c, ref, 1)
	ctx, cancel := context.WithTimeout(context.Background(), callerTimeout)
	defer cancel()
	err := c.Flush(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "1 records still queued")
	require.NoError(t, ctx.Err(), "Flush answered after the caller's deadline")
	b = ss.recv(t)
	ss.ack(t, b.Seq, statusOK, 1)
	require.NoError(t, c.Flush(context.Background()))
	require.Equal(t, 2.0, testutil.ToFloat64(c.metrics.recordsSent))
	closeCleanly(t, c, ss)
}

func TestClose(t *testing.T) {
	ts := startServer(t)
	c := newTestClient(t, testOptions(ts))
	ss := ts.accept(t)
	ss.grant(t, 10)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 5)

	// Close sends what is queued, waits for it, then half-closes the
	// stream and waits for hopwatch to end it.
	closed := make(chan error, 1)
	go func() { closed <- c.Close(context.Background()) }()
	b := ss.recv(t)
	require.Len(t, b.SeriesIndex, 5)
	ss.ack(t, b.Seq, statusOK, 1)
	require.Nil(t, ss.recv(t), "half-closed after the acknowledgement")
	ss.finish(nil)
	require.NoError(t, <-closed)
	require.Equal(t, 5.0, testutil.ToFloat64(c.metrics.recordsSent))

	require.ErrorIs(t, c.Record(context.Background(), Hop{Series: ref, Start: base}), ErrClosed)
	require.Equal(t, 1.0, testutil.ToFloat64(c.metrics.droppedClosed))
	require.ErrorIs(t, c.Flush(context.Background()), ErrClosed)
	require.ErrorIs(t, c.Close(context.Background()), ErrClosed)
}

func TestCloseDropsWhatItCannotDeliverByDeadline(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10
	o.QueueSize = 20
	o.DeadlineMargin = margin
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 1)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 20)
	require.Equal(t, uint64(1), ss.recv(t).Seq)

	// A Record waiting for room is let go by Close.
	recorded := make(chan error, 1)
	go func() { recorded <- c.Record(context.Background(), Hop{Series: ref, Start: base}) }()

	ctx, cancel := context.WithTimeout(context.Background(), callerTimeout)
	defer cancel()
	err := c.Close(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "closed with 20 records not acknowledged")
	require.NoError(t, ctx.Err(), "Close answered after the caller's deadline")
	require.ErrorIs(t, <-recorded, ErrClosed)
	require.Equal(t, 21.0, testutil.ToFloat64(c.metrics.droppedClosed))
	require.Equal(t, 0.0, testutil.ToFloat64(c.metrics.queueLength))
}

func TestCloseWithHopwatchUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := lis.Addr().String()
	require.NoError(t, lis.Close()) // nothing listens there now
	o := testOptions(&testServer{addr: addr})
	o.DeadlineMargin = margin

	// Nothing queued: Close has nothing to wait for.
	c, err := New(o, nil, nil)
	require.NoError(t, err)
	require.NoError(t, c.Close(context.Background()))

	c, err = New(o, nil, nil)
	require.NoError(t, err)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	recordN(t, c, ref, 3)
	ctx, cancel := context.WithTimeout(context.Background(), callerTimeout)
	defer cancel()
	err = c.Close(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.ErrorContains(t, err, "closed with 3 records not acknowledged")
	require.Equal(t, 3.0, testutil.ToFloat64(c.metrics.droppedClosed))
}

func TestWatermark(t *testing.T) {
	ts := startServer(t)
	c := newTestClient(t, testOptions(ts))
	ss := ts.accept(t)
	ss.grant(t, 10)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	t1, t2 := base.Add(time.Minute), base.Add(2*time.Minute)

	// With nothing to send, a batch without records carries it.
	c.SetWatermark(t1)
	flushed := goFlush(c, context.Background())
	b := ss.recv(t)
	require.Empty(t, b.SeriesIndex)
	require.Equal(t, t1.UnixNano(), b.WatermarkUnixNano)
	ss.ack(t, b.Seq, statusOK, 1)
	require.NoError(t, <-flushed)

	// Otherwise the next batch carries it, once; a position behind is
	// ignored.
	c.SetWatermark(t1.Add(-time.Second))
	recordN(t, c, ref, 1)
	c.SetWatermark(t2)
	flushed = goFlush(c, context.Background())
	b = ss.recv(t)
	require.Len(t, b.SeriesIndex, 1)
	require.Equal(t, t2.UnixNano(), b.WatermarkUnixNano)
	ss.ack(t, b.Seq, statusOK, 1)
	require.NoError(t, <-flushed)

	recordN(t, c, ref, 1)
	flushed = goFlush(c, context.Background())
	b = ss.recv(t)
	require.Zero(t, b.WatermarkUnixNano)
	ss.ack(t, b.Seq, statusOK, 1)
	require.NoError(t, <-flushed)
	closeCleanly(t, c, ss)
}

func TestHeartbeatEveryInterval(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.BatchInterval = 5 * time.Millisecond
	c := newTestClient(t, o)
	ss := ts.accept(t)
	ss.grant(t, 10)
	c.SetWatermark(base)
	b := ss.recv(t)
	require.Empty(t, b.SeriesIndex)
	require.Equal(t, base.UnixNano(), b.WatermarkUnixNano)
	ss.ack(t, b.Seq, statusOK, 1)
	closeCleanly(t, c, ss)
}

func TestMaxBatchBytes(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchBytes = minBatchBytes
	o.SpanDimensions = []string{"request"}
	c := newTestClient(t, o)
	ss := ts.accept(t)
	s := newStore()
	wait := ss.serveInBackground(t, s, 100)

	// Ten series of about 6 KB each: two fit in a batch.
	long := strings.Repeat("x", 6000)
	for i := range 10 {
		ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "checkout", "span_name", fmt.Sprint(i), "request", long)
		require.NoError(t, err)
		require.NoError(t, c.Record(context.Background(), Hop{Series: ref, Start: base, Duration: 1}))
	}
	_, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "checkout", "span_name", "x", "request", strings.Repeat("x", 20000))
	require.ErrorIs(t, err, ErrInvalidSeries)
	require.ErrorContains(t, err, "too large for a batch of MaxBatchBytes 16384")

	require.NoError(t, c.Close(context.Background()))
	wait()
	require.Equal(t, 10, s.records)
	for seq, b := range s.applied {
		require.LessOrEqual(t, proto.Size(b), o.MaxBatchBytes, "batch %d", seq)
	}
	require.Greater(t, len(s.applied), 4)
}

func TestRecordRefusesInvalidHops(t *testing.T) {
	ts := startServer(t)
	c := newTestClient(t, testOptions(ts))
	ss := ts.accept(t)
	wait := ss.serveInBackground(t, newStore(), 10)
	ref := stageSeries(t, c, "enqueue", "dequeue")
	ctx := context.Background()
	for _, h := range []Hop{
		{Series: ref},
		{Series: ref, Start: time.Unix(0, 0)},
		{Series: ref, Start: time.Unix(-1, 0)},
		{Series: ref, Start: time.Date(2300, 1, 1, 0, 0, 0, 0, time.UTC)},
		{Series: ref, Start: base, Duration: -1},
		{Series: ref, Start: base, Duration: math.MaxInt64},
	} {
		require.ErrorIs(t, c.Record(ctx, h), ErrInvalidHop, "start %s, duration %d", h.Start, h.Duration)
	}
	require.NoError(t, c.Record(ctx, Hop{Series: ref, Start: time.Unix(0, 1)}))
	require.ErrorIs(t, c.Record(ctx, Hop{Series: ref + 1, Start: base}), ErrUnknownSeries)
	require.NoError(t, c.Close(ctx))
	wait()
}

func TestRecordDoesNotAllocate(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxBatchRecords = 10_000
	o.QueueSize = 20_000
	c := newTestClient(t, o)
	ss := ts.accept(t) // no credit yet: the sender stays idle
	refs := []SeriesRef{stageSeries(t, c, "enqueue", "dequeue"), stageSeries(t, c, "dequeue", "arrive")}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		i++
		h := Hop{Series: refs[i%2], Start: base.Add(time.Duration(i)), Duration: time.Millisecond, TraceID: [16]byte{1}, Failed: i%7 == 0}
		if err := c.Record(context.Background(), h); err != nil {
			t.Fatal(err)
		}
	})
	require.Zero(t, allocs)
	wait := ss.serveInBackground(t, newStore(), 10)
	require.NoError(t, c.Close(context.Background()))
	wait()
}

// TestTokenIsSentOnEveryStream: the token goes in the authorization
// metadata of the first stream and of every stream after a reconnect.
func TestTokenIsSentOnEveryStream(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.Token = "hw_gxajcnnLMYCobZYO5hv7ciIdPL_cbl4c9YJGqS_nQP4"
	c := newTestClient(t, o)
	ss := ts.accept(t)
	require.Equal(t, []string{"Bearer " + o.Token}, ss.md.Get("authorization"))
	require.Empty(t, ss.md.Get("x-scope-orgid"), "the token names the tenant")
	ss.finish(status.Error(codes.Unauthenticated, "refused"))
	ss = ts.accept(t)
	require.Equal(t, []string{"Bearer " + o.Token}, ss.md.Get("authorization"))
	ss.grant(t, 1)
	closeCleanly(t, c, ss)
}
