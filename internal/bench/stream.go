package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

// StreamOptions configures the streaming ingest benchmark: a load process
// (this binary's `bench stream-load`) sending hop records through the Go
// client to a hopwatch node in this process.
type StreamOptions struct {
	Loader       []string      // the load command; the benchmark appends its flags
	Duration     time.Duration // how long the load runs
	Writers      int           // clients (one stream each) in the load process
	Rate         float64       // records/s per writer; 0 is as fast as the client takes them
	BatchRecords int           // records per batch
	Raw          bool          // keep the raw tier on
}

// DefaultStreamOptions sends as fast as 4 writers can for 30 s.
func DefaultStreamOptions() StreamOptions {
	return StreamOptions{Duration: 30 * time.Second, Writers: 4, BatchRecords: 1000, Raw: true}
}

// StreamResult is what one run measured.
type StreamResult struct {
	Records      float64 // accepted by the node
	Seconds      float64 // wall time the load ran
	ServerCPU    float64 // seconds of CPU this process used meanwhile
	LoaderCPU    float64 // seconds of CPU the load process used
	P50, P99     float64 // batch handling time (decode, both WALs, aggregation), seconds
	PeakRSS      float64 // bytes, this process
	Batches      float64
	Duplicates   float64
	RawKept      float64 // share of records the raw tier kept (below 1 when it sampled under overload)
	LoaderOutput string
}

// Stream runs the benchmark and writes a Markdown table to w.
func Stream(w io.Writer, o StreamOptions) (StreamResult, error) {
	var res StreamResult
	if len(o.Loader) == 0 {
		return res, errors.New("no load command")
	}
	srv, reg, stop, err := startNode("stream", o.Raw)
	if err != nil {
		return res, err
	}
	defer stop()
	args := append(o.Loader[1:len(o.Loader):len(o.Loader)], "-addr", srv.Addrs().OTLPGRPC, "-duration", o.Duration.String(),
		"-writers", strconv.Itoa(o.Writers), "-rate", strconv.FormatFloat(o.Rate, 'f', -1, 64), "-batch-records", strconv.Itoa(o.BatchRecords))

	before := gather(reg)
	cpu0 := cpuSeconds()
	start := time.Now()
	cmd := exec.Command(o.Loader[0], args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("%s %s: %w\n%s", o.Loader[0], strings.Join(args, " "), err, out.String())
	}
	res.Seconds = time.Since(start).Seconds()
	res.ServerCPU = cpuSeconds() - cpu0
	res.LoaderCPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	res.LoaderOutput = out.String()
	after := gather(reg)
	res.Records = after.counter("hopwatch_otlp_spans_accepted_total") - before.counter("hopwatch_otlp_spans_accepted_total")
	res.Batches = after.counter("hopwatch_otlp_requests_total") - before.counter("hopwatch_otlp_requests_total")
	res.Duplicates = after.counter("hopwatch_stream_duplicate_batches_total") - before.counter("hopwatch_stream_duplicate_batches_total")
	if o.Raw {
		kept := after.counter("hopwatch_raw_samples_appended_total") - before.counter("hopwatch_raw_samples_appended_total")
		res.RawKept = kept / res.Records
	}
	res.P50 = after.quantile("hopwatch_otlp_request_duration_seconds", 0.5)
	res.P99 = after.quantile("hopwatch_otlp_request_duration_seconds", 0.99)
	res.PeakRSS = peakRSS()
	if res.Records == 0 {
		return res, errors.New("no records were accepted; the load said:\n" + res.LoaderOutput)
	}
	fmt.Fprintf(w, "streaming ingest (hopwatch.v1.IngestService, Go client), %d writers, rate %g/writer (0: unthrottled), batches of %d, %s, raw tier %v\n\n",
		o.Writers, o.Rate, o.BatchRecords, o.Duration, o.Raw)
	fmt.Fprintln(w, "| records accepted/s | server CPU cores | server CPU µs/record | batch p50 | batch p99 | peak RSS | load CPU cores | batches | duplicates | raw tier kept |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(w, "| %.0f | %.2f | %.3f | %.2f ms | %.2f ms | %.0f MiB | %.2f | %.0f | %.0f | %.1f%% |\n",
		res.Records/res.Seconds, res.ServerCPU/res.Seconds, res.ServerCPU/res.Records*1e6, res.P50*1e3, res.P99*1e3,
		res.PeakRSS/(1<<20), res.LoaderCPU/res.Seconds, res.Batches, res.Duplicates, res.RawKept*100)
	return res, nil
}

// LoadOptions configure the load of the streaming benchmark.
type LoadOptions struct {
	Addr         string
	Duration     time.Duration
	Writers      int
	Rate         float64 // records/s per writer; 0 is unthrottled
	BatchRecords int
}

// StreamLoad sends synthetic span hops (20 series per writer, exponential
// latencies, random trace ids; span hops feed both tiers) through one client per writer, then closes
// the clients, which waits for every acknowledgement, and reports.
func StreamLoad(ctx context.Context, w io.Writer, o LoadOptions) error {
	deadline := time.Now().Add(o.Duration)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		recorded int
		errs     []error
	)
	host, _ := os.Hostname()
	for i := range o.Writers {
		opts := client.DefaultOptions()
		opts.Target = o.Addr
		opts.Writer = fmt.Sprintf("bench-%s-%d-%d-%d", host, os.Getpid(), time.Now().UnixNano(), i)
		opts.MaxBatchRecords = o.BatchRecords
		opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		c, err := client.New(opts, nil, nil)
		if err != nil {
			return err
		}
		var refs []client.SeriesRef
		for s := range 20 {
			ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "bench-queue", "span_name", fmt.Sprintf("op-%d", s),
				"span_kind", "SPAN_KIND_CONSUMER")
			if err != nil {
				return err
			}
			refs = append(refs, ref)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(i), 7))
			n := 0
			var err error
			start := time.Now()
			for time.Now().Before(deadline) && ctx.Err() == nil {
				for range 256 {
					h := client.Hop{Series: refs[n%len(refs)], Start: time.Now(), Duration: time.Duration(float64(time.Millisecond) * rng.ExpFloat64())}
					for b := range h.TraceID {
						h.TraceID[b] = byte(rng.Uint32())
					}
					if err = c.Record(ctx, h); err != nil {
						break
					}
					n++
				}
				if err != nil {
					break
				}
				if o.Rate > 0 {
					if ahead := time.Duration(float64(n)/o.Rate*1e9) - time.Since(start); ahead > 0 {
						time.Sleep(ahead)
					}
				}
			}
			cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cerr := c.Close(cctx)
			mu.Lock()
			defer mu.Unlock()
			recorded += n
			errs = append(errs, err, cerr)
		}()
	}
	wg.Wait()
	fmt.Fprintf(w, "recorded %d records through %d writers\n", recorded, o.Writers)
	return errors.Join(errs...)
}
