package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

// testServer is an IngestService over real gRPC on 127.0.0.1 whose every
// stream the test drives by hand: it receives, acknowledges and grants
// credit when the test says so. Each stream checks that the client never
// exceeds the credit granted on it.
type testServer struct {
	hopwatchv1.UnimplementedIngestServiceServer
	addr    string
	streams chan *serverStream
}

var _ hopwatchv1.IngestServiceServer = (*testServer)(nil)

func startServer(t testing.TB) *testServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ts := &testServer{addr: lis.Addr().String(), streams: make(chan *serverStream)}
	gs := grpc.NewServer()
	hopwatchv1.RegisterIngestServiceServer(gs, ts)
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	t.Cleanup(func() {
		gs.Stop()
		wg.Wait()
	})
	return ts
}

func (ts *testServer) Stream(st grpc.BidiStreamingServer[hopwatchv1.StreamRequest, hopwatchv1.StreamResponse]) error {
	md, _ := metadata.FromIncomingContext(st.Context())
	ss := &serverStream{st: st, md: md, end: make(chan error, 1)}
	select {
	case ts.streams <- ss:
	case <-st.Context().Done():
		return st.Context().Err()
	}
	select {
	case err := <-ss.end:
		return err
	case <-st.Context().Done():
		return st.Context().Err()
	}
}

// accept returns the next stream the client opens.
func (ts *testServer) accept(t testing.TB) *serverStream {
	t.Helper()
	select {
	case ss := <-ts.streams:
		return ss
	case <-time.After(time.Minute): // a hang guard, not a timing assertion
		t.Fatal("no stream opened")
		return nil
	}
}

// serverStream is one stream as the test sees it. Its methods are called
// from one goroutine at a time.
type serverStream struct {
	st  grpc.BidiStreamingServer[hopwatchv1.StreamRequest, hopwatchv1.StreamResponse]
	md  metadata.MD
	end chan error
	// granted and received count batches on this stream.
	granted, received int
}

func (ss *serverStream) send(t testing.TB, r *hopwatchv1.StreamResponse) {
	t.Helper()
	ss.granted += int(r.Credit)
	require.NoError(t, ss.st.Send(r))
}

// grant grants n batches of credit.
func (ss *serverStream) grant(t testing.TB, n uint32) {
	t.Helper()
	ss.send(t, &hopwatchv1.StreamResponse{Credit: n})
}

// ack acknowledges seq with status, granting credit more.
func (ss *serverStream) ack(t testing.TB, seq uint64, status hopwatchv1.AckStatus, credit uint32) {
	t.Helper()
	ss.send(t, &hopwatchv1.StreamResponse{Seq: seq, Status: status, Credit: credit})
}

// recv returns the next batch, or nil when the client half-closed the
// stream. It fails the test if the batch is beyond the credit granted.
func (ss *serverStream) recv(t testing.TB) *hopwatchv1.HopBatch {
	t.Helper()
	req, err := ss.st.Recv()
	if errors.Is(err, io.EOF) {
		return nil
	}
	require.NoError(t, err)
	ss.received++
	require.LessOrEqual(t, ss.received, ss.granted, "batch seq %d sent beyond the credit granted", req.GetBatch().GetSeq())
	return req.GetBatch()
}

// finish ends the stream with err (nil: a clean end).
func (ss *serverStream) finish(err error) { ss.end <- err }

// store applies batches once per seq, as hopwatch does for one writer.
type store struct {
	mu      sync.Mutex
	applied map[uint64]*hopwatchv1.HopBatch
	copies  map[uint64][]*hopwatchv1.HopBatch // every arrival of each seq
	records int
	bytes   int // encoded size of the batches applied
}

func newStore() *store {
	return &store{applied: map[uint64]*hopwatchv1.HopBatch{}, copies: map[uint64][]*hopwatchv1.HopBatch{}}
}

func (s *store) apply(b *hopwatchv1.HopBatch) hopwatchv1.AckStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.copies[b.Seq] = append(s.copies[b.Seq], b)
	if _, ok := s.applied[b.Seq]; ok {
		return hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE
	}
	s.applied[b.Seq] = b
	s.records += len(b.SeriesIndex)
	s.bytes += proto.Size(b)
	return hopwatchv1.AckStatus_ACK_STATUS_OK
}

// serve applies and acknowledges every batch, granting credit batches at
// first and one per acknowledgement, until the client half-closes; then
// it ends the stream cleanly. It runs on a goroutine of its own, so it
// reports problems with t.Errorf and stops.
func (ss *serverStream) serve(t testing.TB, s *store, credit uint32) {
	send := func(r *hopwatchv1.StreamResponse) bool {
		ss.granted += int(r.Credit)
		if err := ss.st.Send(r); err != nil {
			if ss.st.Context().Err() == nil {
				t.Errorf("send: %v", err)
			}
			return false
		}
		return true
	}
	if !send(&hopwatchv1.StreamResponse{Credit: credit}) {
		return
	}
	for {
		req, err := ss.st.Recv()
		if errors.Is(err, io.EOF) {
			ss.finish(nil)
			return
		}
		if err != nil {
			if ss.st.Context().Err() == nil {
				t.Errorf("recv: %v", err)
			}
			return
		}
		if ss.received++; ss.received > ss.granted {
			t.Errorf("batch seq %d sent beyond the credit granted (%d)", req.Batch.GetSeq(), ss.granted)
		}
		if !send(&hopwatchv1.StreamResponse{Seq: req.Batch.GetSeq(), Status: s.apply(req.Batch), Credit: 1}) {
			return
		}
	}
}

// serveInBackground runs serve in a goroutine and returns a function that
// waits for it; call it after closing the client.
func (ss *serverStream) serveInBackground(t testing.TB, s *store, credit uint32) (wait func()) {
	var wg sync.WaitGroup
	wg.Go(func() { ss.serve(t, s, credit) })
	return wg.Wait
}

// serveAll serves every stream the client opens from now on with serve,
// until the returned function is called; that waits for them all. Call it
// after closing the client.
func (ts *testServer) serveAll(t testing.TB, s *store, credit uint32) (stop func()) {
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case ss := <-ts.streams:
				wg.Go(func() { ss.serve(t, s, credit) })
			case <-quit:
				return
			}
		}
	})
	return func() {
		close(quit)
		wg.Wait()
	}
}

// testOptions returns options for a client of ts: fast retries, and no
// interval cuts unless a test asks for them.
func testOptions(ts *testServer) Options {
	o := DefaultOptions()
	o.Target = ts.addr
	o.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	o.Writer = "test-writer"
	o.BatchInterval = time.Hour
	o.Backoff = Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2, Jitter: 0.2}
	return o
}

// newTestClient starts a client with opts and closes it when the test
// ends, if the test did not.
func newTestClient(t testing.TB, opts Options) *Client {
	t.Helper()
	c, err := New(opts, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = c.Close(ctx)
	})
	return c
}

// record is one record decoded from a HopBatch.
type record struct {
	series   string
	start    int64
	duration uint64
	traceID  [16]byte
	failed   bool
}

// decode reads a batch's columns back into records, checking their
// lengths as hopwatch would.
func decode(t testing.TB, b *hopwatchv1.HopBatch) []record {
	t.Helper()
	n := len(b.SeriesIndex)
	require.Len(t, b.StartTimeDeltaUnixNano, n)
	require.Len(t, b.DurationNano, n)
	if len(b.TraceIds) != 0 {
		require.Len(t, b.TraceIds, 16*n)
	}
	if len(b.Failed) != 0 {
		require.Len(t, b.Failed, (n+7)/8)
	}
	rs := make([]record, n)
	var start int64
	for i := range n {
		require.Less(t, int(b.SeriesIndex[i]), len(b.Series))
		start += b.StartTimeDeltaUnixNano[i]
		rs[i] = record{series: seriesString(b.Series[b.SeriesIndex[i]]), start: start, duration: b.DurationNano[i]}
		if len(b.TraceIds) != 0 {
			copy(rs[i].traceID[:], b.TraceIds[16*i:])
		}
		if len(b.Failed) != 0 {
			rs[i].failed = b.Failed[i/8]&(1<<(i%8)) != 0
		}
	}
	return rs
}

// seriesString renders a series as kind{name="value", ...}.
func seriesString(s *hopwatchv1.HopSeries) string {
	var sb strings.Builder
	sb.WriteString(s.Kind.String() + "{")
	for i, l := range s.Labels {
		if i > 0 {
			sb.WriteString(", ")
		}
		fmt.Fprintf(&sb, "%s=%q", l.Name, l.Value)
	}
	sb.WriteString("}")
	return sb.String()
}
