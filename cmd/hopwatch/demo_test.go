package main

import (
	"bytes"
	"context"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/api"
	promv1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/model"
	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mtx sync.Mutex
	b   bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	return s.b.String()
}

// TestDemoShowsEveryService runs `hopwatch demo` and waits until every
// service of its topology has calls and latency series, then stops it.
func TestDemoShowsEveryService(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var stdout syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- runDemo(ctx, []string{"--web.listen-address=127.0.0.1:0", "--otlp.grpc.listen-address=127.0.0.1:0",
			"--otlp.http.listen-address=127.0.0.1:0", "--log.level=error"}, &stdout, &bytes.Buffer{})
	}()
	re := regexp.MustCompile(`Prometheus API\s+(http://\S+)/api/v1/query`)
	var base string
	waitUntil(t, "the demo prints its URLs", func() bool {
		m := re.FindStringSubmatch(stdout.String())
		if m != nil {
			base = m[1]
		}
		return m != nil
	})
	require.Contains(t, stdout.String(), "histogram_quantile(0.99")

	c, err := api.NewClient(api.Config{Address: base})
	require.NoError(t, err)
	services := []string{"web-frontend", "api-gateway", "log-processor", "log-indexer", "log-store"}
	waitUntil(t, "series of every service", func() bool {
		// The URLs are printed at once; the node answers 503 until its
		// storage is open.
		v, _, _, err := promv1.NewAPI(c).Query(ctx, `count by (service) (traces_spanmetrics_latency)`, time.Now())
		if err != nil {
			t.Logf("not yet: %v", err)
			return false
		}
		return len(v.(model.Vector)) == len(services)
	})
	v, _, _, err := promv1.NewAPI(c).Query(ctx, `sum by (service) (traces_spanmetrics_calls_total)`, time.Now())
	require.NoError(t, err)
	got := map[string]bool{}
	for _, s := range v.(model.Vector) {
		require.Positive(t, float64(s.Value))
		got[string(s.Metric["service"])] = true
	}
	for _, s := range services {
		require.True(t, got[s], "service %s has no calls", s)
	}

	// The service graph: paired client/server and producer/consumer hops.
	edges := map[string]string{
		`{client="web-frontend", server="api-gateway"}`:                                      "",
		`{client="api-gateway", server="log-processor"}`:                                     "",
		`{client="log-processor", server="log-indexer", connection_type="messaging_system"}`: "",
		`{client="log-indexer", server="log-store"}`:                                         "",
	}
	for sel := range edges {
		waitUntil(t, "edge "+sel, func() bool {
			v, _, _, err := promv1.NewAPI(c).Query(ctx, "traces_service_graph_request_total"+sel, time.Now())
			require.NoError(t, err)
			vec := v.(model.Vector)
			return len(vec) == 1 && vec[0].Value > 0
		})
	}
	// Stage durations from the consumer's span events.
	waitUntil(t, "stage durations", func() bool {
		v, _, _, err := promv1.NewAPI(c).Query(ctx, `count(hopwatch_stage_duration_seconds{service="log-indexer", from_stage="dequeue", to_stage="arrive"})`, time.Now())
		require.NoError(t, err)
		vec := v.(model.Vector)
		return len(vec) == 1 && vec[0].Value == 1
	})
	cancel()
	require.NoError(t, <-done)
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
