package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/server"
)

// TestGoClientAgainstNode: the Go client delivers every record exactly once
// to a real node, small batches and a small credit window included, and
// its writer shows in the tenant's watermark.
func TestGoClientAgainstNode(t *testing.T) {
	_, addrs := startServer(t, func(c *server.Config) {
		c.MultitenancyEnabled = true
		c.Ingest.StreamWindow = 2
	})
	opts := client.DefaultOptions()
	opts.Target = addrs.OTLPGRPC
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	opts.Writer = "client-test"
	opts.Tenant = "team-c"
	opts.MaxBatchRecords = 100
	reg := prometheus.NewRegistry()
	c, err := client.New(opts, reg, nil)
	require.NoError(t, err)

	queue, err := c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "producer", "orders", "consumer", "billing")
	require.NoError(t, err)
	span, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "billing", "span_name", "charge", "status_code", "STATUS_CODE_ERROR")
	require.NoError(t, err)
	start := time.Now().Add(-time.Minute)
	ctx := context.Background()
	const n = 2500
	for i := range n {
		h := client.Hop{Series: queue, Start: start.Add(time.Duration(i) * time.Millisecond), Duration: 2 * time.Millisecond}
		if i%5 == 0 {
			h.Series, h.Failed = span, true
			h.TraceID[0], h.TraceID[15] = 1, byte(i)
		}
		require.NoError(t, c.Record(ctx, h))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.Close(cctx))
	require.Equal(t, float64(n), counter(t, reg, "hopwatch_client_records_sent_total", nil))

	prom := promClient(t, addrs.Web, "team-c")
	waitFor(t, "streamed records in PromQL", func() bool {
		q, ok1 := queryScalar(t, prom, `sum(hopwatch_hop_queue_seconds_count{producer="orders",consumer="billing"})`)
		s, ok2 := queryScalar(t, prom, `sum(traces_spanmetrics_calls_total{service="billing",span_name="charge",status_code="STATUS_CODE_ERROR"})`)
		return ok1 && ok2 && q == n*4/5 && s == n/5
	})
	wc := hopwatchv1.NewWriterServiceClient(dialGRPC(t, addrs.OTLPGRPC))
	list, err := wc.ListWriters(metadata.AppendToOutgoingContext(ctx, "x-scope-orgid", "team-c"), &hopwatchv1.ListWritersRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetWriters(), 1)
	require.Equal(t, "client-test", list.GetWriters()[0].GetWriter())
	require.Equal(t, start.Add((n-1)*time.Millisecond+2*time.Millisecond).UnixNano(), list.GetWriters()[0].GetPositionUnixNano())
}
