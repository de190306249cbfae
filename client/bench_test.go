package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

// The benchmarks send to an in-process stand-in for hopwatch over TCP on
// 127.0.0.1 that acknowledges every batch after reading only its seq and
// record count, so that allocs/op and B/op are the client's. They count
// the whole process, so the sender's per-batch work (gRPC framing, about
// one allocation per thousand records) is in them. Reproduce with
//
//	go test -run '^$' -bench . -benchmem ./client/

// ackServer is the stand-in: IngestService/Stream registered by hand with
// a codec that skims batches instead of decoding them.
type ackServer struct {
	addr    string
	mu      sync.Mutex
	records int
	bytes   int
}

func startAckServer(b *testing.B, credit uint32) *ackServer {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	as := &ackServer{addr: lis.Addr().String()}
	gs := grpc.NewServer(grpc.ForceServerCodecV2(skimCodec{}))
	gs.RegisterService(&grpc.ServiceDesc{
		ServiceName: "hopwatch.v1.IngestService",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{
			StreamName:    "Stream",
			ServerStreams: true,
			ClientStreams: true,
			Handler:       func(_ any, st grpc.ServerStream) error { return as.stream(st, credit) },
		}},
	}, as)
	var wg sync.WaitGroup
	wg.Go(func() { _ = gs.Serve(lis) })
	b.Cleanup(func() {
		gs.Stop()
		wg.Wait()
	})
	return as
}

func (as *ackServer) stream(st grpc.ServerStream, credit uint32) error {
	resp := &hopwatchv1.StreamResponse{Credit: credit}
	if err := st.SendMsg(resp); err != nil {
		return err
	}
	var sb skimmedBatch
	for {
		if err := st.RecvMsg(&sb); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		as.mu.Lock()
		as.records += sb.records
		as.bytes += sb.bytes
		as.mu.Unlock()
		resp.Seq, resp.Status, resp.AcceptedRecords, resp.Credit = sb.seq, hopwatchv1.AckStatus_ACK_STATUS_OK, uint32(sb.records), 1
		if err := st.SendMsg(resp); err != nil {
			return err
		}
	}
}

// skimmedBatch is what the stand-in reads of a StreamRequest.
type skimmedBatch struct {
	seq            uint64
	records, bytes int
}

type skimCodec struct{}

func (skimCodec) Name() string { return "proto" }

func (skimCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, err := proto.Marshal(v.(proto.Message))
	return mem.BufferSlice{mem.SliceBuffer(b)}, err
}

// Unmarshal reads the seq and counts the series_index entries of the
// StreamRequest's batch.
func (skimCodec) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return skim(buf.ReadOnlyData(), v.(*skimmedBatch))
}

func skim(data []byte, sb *skimmedBatch) error {
	*sb = skimmedBatch{bytes: len(data)}
	_, _, n := protowire.ConsumeTag(data) // StreamRequest.batch
	batch, m := protowire.ConsumeBytes(data[n:])
	if n < 0 || m < 0 {
		return errors.New("malformed StreamRequest")
	}
	for len(batch) > 0 {
		num, typ, n := protowire.ConsumeTag(batch)
		if n < 0 {
			return errors.New("malformed HopBatch")
		}
		batch = batch[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			sb.seq, n = protowire.ConsumeVarint(batch)
		case num == 3 && typ == protowire.BytesType:
			var packed []byte
			packed, n = protowire.ConsumeBytes(batch)
			for _, c := range packed {
				if c < 0x80 {
					sb.records++
				}
			}
		default:
			n = protowire.ConsumeFieldValue(num, typ, batch)
		}
		if n < 0 {
			return errors.New("malformed HopBatch")
		}
		batch = batch[n:]
	}
	return nil
}

// benchHops returns hops over 64 series with lognormal durations, from a
// fixed seed.
func benchHops(b *testing.B, c *Client) []Hop {
	refs := make([]SeriesRef, 64)
	for i := range refs {
		ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_STAGE, "service", fmt.Sprintf("svc-%d", i%8),
			"span_name", "process", "from_stage", "enqueue", "to_stage", fmt.Sprintf("stage-%d", i/8))
		if err != nil {
			b.Fatal(err)
		}
		refs[i] = ref
	}
	rng := rand.New(rand.NewPCG(1, 2))
	hops := make([]Hop, 4096)
	for i := range hops {
		var tid [16]byte
		for j := range tid {
			tid[j] = byte(rng.Uint32())
		}
		hops[i] = Hop{
			Series:   refs[rng.IntN(len(refs))],
			Start:    base.Add(time.Duration(i) * 50 * time.Microsecond),
			Duration: time.Duration(1e6 * rng.ExpFloat64()),
			TraceID:  tid,
			Failed:   rng.IntN(100) == 0,
		}
	}
	return hops
}

// benchClient returns a client of a stand-in that grants credit batches
// and acknowledges everything, and a function that closes the client and reports the bytes sent per
// record.
func benchClient(b *testing.B, credit uint32, opts func(*Options)) (*Client, func()) {
	as := startAckServer(b, credit)
	o := testOptions(&testServer{addr: as.addr})
	o.BatchInterval = 100 * time.Millisecond
	if opts != nil {
		opts(&o)
	}
	c, err := New(o, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	return c, func() {
		if err := c.Close(context.Background()); err != nil {
			b.Fatal(err)
		}
		as.mu.Lock()
		defer as.mu.Unlock()
		if as.records > 0 {
			b.ReportMetric(float64(as.bytes)/float64(as.records), "wire-B/record")
		}
	}
}

func BenchmarkRecord(b *testing.B) {
	c, done := benchClient(b, 8, nil)
	hops := benchHops(b, c)
	ctx := context.Background()
	// Warm up: every batch of the queue allocated once.
	for i := range 2 * DefaultOptions().QueueSize {
		if err := c.Record(ctx, hops[i%len(hops)]); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := c.Record(ctx, hops[i%len(hops)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if err := c.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.StopTimer()
	done()
}

func BenchmarkRecordParallel(b *testing.B) {
	c, done := benchClient(b, 8, nil)
	hops := benchHops(b, c)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.IntN(len(hops))
		for pb.Next() {
			if err := c.Record(ctx, hops[i%len(hops)]); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
	if err := c.Flush(ctx); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	b.StopTimer()
	done()
}

// BenchmarkRecordQueueFull measures refusing under Drop: what a caller pays
// while hopwatch withholds credit.
func BenchmarkRecordQueueFull(b *testing.B) {
	c, _ := benchClient(b, 0, func(o *Options) {
		o.FullPolicy = Drop
		o.MaxBatchRecords = 100
		o.QueueSize = 100
		o.BatchInterval = time.Hour
	})
	hops := benchHops(b, c)
	ctx := context.Background()
	// 100 records fill the one batch of the queue; without credit it stays
	// there.
	for i := range 100 {
		if err := c.Record(ctx, hops[i]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Record(ctx, hops[0]); !errors.Is(err, ErrQueueFull) {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	// Nothing will be acknowledged: Close gives the queued records up.
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		b.Fatal(err)
	}
}
