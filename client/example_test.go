package client_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

func Example() {
	opts := client.DefaultOptions()
	opts.Target = "127.0.0.1:4317"
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	host, _ := os.Hostname()
	opts.Writer = fmt.Sprintf("%s-%d-%d", host, os.Getpid(), time.Now().UnixNano()) // unique per run
	c, err := client.New(opts, prometheus.DefaultRegisterer, slog.Default())
	if err != nil {
		panic(err)
	}

	// Series once, at start-up.
	dequeued, err := c.Series(hopwatchv1.HopKind_HOP_KIND_STAGE,
		"service", "order-worker", "span_name", "process-order", "from_stage", "enqueue", "to_stage", "dequeue")
	if err != nil {
		panic(err)
	}

	// Records on the hot path: no allocation, and under the default Block
	// policy no waiting beyond the request's deadline less the margin.
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	enqueued := time.Now().Add(-3 * time.Millisecond)
	if err := c.Record(ctx, client.Hop{Series: dequeued, Start: enqueued, Duration: time.Since(enqueued)}); errors.Is(err, client.ErrQueueFull) {
		// Counted in hopwatch_client_records_dropped_total{reason="queue_full"}.
		slog.Warn("hop not recorded", "err", err)
	}

	// At shutdown: deliver what is queued, within a bound.
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelClose()
	if err := c.Close(closeCtx); err != nil {
		slog.Error("closing the hopwatch client", "err", err)
	}
}
