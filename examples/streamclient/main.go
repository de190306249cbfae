// Command streamclient sends synthetic hops to hopwatch over its streaming
// ingest API: orders of a made-up checkout pass a queue (enqueue → dequeue
// → arrive → done), each stage a latency series. It runs for -duration,
// then closes the client and prints the client's metrics.
//
//	go run ./cmd/hopwatch &
//	go run ./examples/streamclient -addr 127.0.0.1:4317 -duration 10s
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "streamclient:", err)
		os.Exit(1)
	}
}

// maxOrderTime caps an order's synthetic end-to-end time, so that the
// watermark can promise that nothing sent later ends more than this before
// the wall clock.
const maxOrderTime = 5 * time.Second

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	host, _ := os.Hostname()
	opts := client.DefaultOptions()
	// Unique per run: hopwatch deduplicates by writer and seq, and every
	// run numbers its batches from 1.
	opts.Writer = fmt.Sprintf("streamclient-%s-%d-%d", host, os.Getpid(), time.Now().Unix())
	var (
		duration = 10 * time.Second
		rate     = 1000.0
		seed     uint64
		logLevel slog.Level
	)
	fs := flag.NewFlagSet("streamclient", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&opts.Target, "addr", "127.0.0.1:4317", "hopwatch's gRPC address")
	fs.StringVar(&opts.Writer, "writer", opts.Writer, "writer id; unique per run")
	fs.StringVar(&opts.Tenant, "tenant", "", "tenant (X-Scope-OrgID), when hopwatch runs with multi-tenancy")
	fs.DurationVar(&duration, "duration", duration, "how long to send")
	fs.Float64Var(&rate, "rate", rate, "orders per second (each makes four hops)")
	fs.TextVar(&opts.FullPolicy, "full-policy", opts.FullPolicy, "what to do when the queue is full: block or drop")
	fs.IntVar(&opts.QueueSize, "queue-size", opts.QueueSize, "records held at most")
	fs.DurationVar(&opts.BatchInterval, "batch-interval", opts.BatchInterval, "how often a batch that is not full is sent")
	fs.Uint64Var(&seed, "seed", 1, "seed of the synthetic latencies")
	fs.TextVar(&logLevel, "log.level", slog.LevelInfo, "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if rate <= 0 {
		return errors.New("-rate must be positive")
	}
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))

	reg := prometheus.NewRegistry()
	c, err := client.New(opts, reg, logger)
	if err != nil {
		return err
	}
	w, err := newWorkload(c, seed)
	if err != nil {
		return errors.Join(err, c.Close(context.Background()))
	}
	logger.Info("sending", "addr", opts.Target, "writer", opts.Writer, "duration", duration, "orders_per_second", rate)

	sendCtx, cancel := context.WithTimeout(ctx, duration)
	defer cancel()
	orders, refused := w.run(sendCtx, rate)

	// Give Close as long as a batch interval and a few round trips.
	closeCtx, cancelClose := context.WithTimeout(context.Background(), opts.BatchInterval+5*time.Second)
	defer cancelClose()
	cerr := c.Close(closeCtx)

	fmt.Fprintf(stdout, "# %d orders, %d hops recorded, %d refused by Record\n", orders, 4*orders-refused, refused)
	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(stdout, mf); err != nil {
			return err
		}
	}
	return cerr
}

// workload makes the hops of one order at a time.
type workload struct {
	c   *client.Client
	rng *rand.Rand
	// wait: enqueue → dequeue, as a stage and as a queue hop; transit:
	// dequeue → arrive; work: arrive → done.
	wait, queue, transit, work client.SeriesRef
}

func newWorkload(c *client.Client, seed uint64) (*workload, error) {
	w := &workload{c: c, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	stage := func(from, to string) (client.SeriesRef, error) {
		return c.Series(hopwatchv1.HopKind_HOP_KIND_STAGE,
			"service", "order-worker", "span_name", "process-order", "from_stage", from, "to_stage", to)
	}
	var errs [4]error
	w.wait, errs[0] = stage("enqueue", "dequeue")
	w.transit, errs[1] = stage("dequeue", "arrive")
	w.work, errs[2] = stage("arrive", "done")
	w.queue, errs[3] = c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "producer", "checkout", "consumer", "order-worker")
	return w, errors.Join(errs[:]...)
}

// run records orders at rate per second until ctx ends, and returns how
// many orders it made and how many hops Record refused.
func (w *workload) run(ctx context.Context, rate float64) (orders, refused int) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	begin := time.Now()
	for {
		select {
		case <-ctx.Done():
			return orders, refused
		case now := <-tick.C:
			// As many orders as the rate asks for by now.
			for due := int(now.Sub(begin).Seconds() * rate); orders < due; orders++ {
				refused += w.order(ctx, now)
			}
			w.c.SetWatermark(now.Add(-maxOrderTime))
		}
	}
}

// order records the four hops of one order that has just finished, and
// returns how many Record refused.
func (w *workload) order(ctx context.Context, done time.Time) int {
	wait := w.lognormal(5*time.Millisecond, 1)
	transit := w.lognormal(2*time.Millisecond, 0.5)
	work := w.lognormal(20*time.Millisecond, 0.8)
	if total := wait + transit + work; total > maxOrderTime {
		work -= total - maxOrderTime
	}
	enqueued := done.Add(-(wait + transit + work))
	var tid [16]byte
	for i := range tid {
		tid[i] = byte(w.rng.Uint32())
	}
	failed := w.rng.IntN(100) == 0
	// A Record waits at most 100ms for room under the block policy.
	rctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	refused := 0
	for _, h := range []client.Hop{
		{Series: w.queue, Start: enqueued, Duration: wait, TraceID: tid},
		{Series: w.wait, Start: enqueued, Duration: wait, TraceID: tid},
		{Series: w.transit, Start: enqueued.Add(wait), Duration: transit, TraceID: tid},
		{Series: w.work, Start: enqueued.Add(wait + transit), Duration: work, TraceID: tid, Failed: failed},
	} {
		// Refusals are counted by reason in
		// hopwatch_client_records_dropped_total.
		if err := w.c.Record(rctx, h); err != nil {
			refused++
		}
	}
	return refused
}

// lognormal returns a latency with the given median and shape sigma.
func (w *workload) lognormal(median time.Duration, sigma float64) time.Duration {
	return time.Duration(float64(median) * math.Exp(sigma*w.rng.NormFloat64()))
}
