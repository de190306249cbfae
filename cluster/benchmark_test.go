package cluster

import (
	"context"
	"testing"
	"time"
)

// BenchmarkCluster measures metadata write latency (on the leader, and
// forwarded from a follower) and leader failover time on a 3-node loopback
// cluster with the default raft timeouts, the raft log on disk:
//
//	go test ./cluster -run '^$' -bench BenchmarkCluster -benchtime 1x
func BenchmarkCluster(b *testing.B) {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		res, err := Benchmark(ctx, BenchmarkOptions{Dir: b.TempDir(), Writes: 2000, Kills: 10})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(ms(res.Leader.P50), "leader-p50-ms")
		b.ReportMetric(ms(res.Leader.P99), "leader-p99-ms")
		b.ReportMetric(ms(res.Forwarded.P50), "forwarded-p50-ms")
		b.ReportMetric(ms(res.Forwarded.P99), "forwarded-p99-ms")
		b.ReportMetric(ms(res.FailoverMedian), "failover-median-ms")
		b.Logf("failovers: %v", res.Failovers)
	}
}

// TestBenchmarkRuns keeps Benchmark working: a few writes and one kill.
func TestBenchmarkRuns(t *testing.T) {
	ctx := ctxT(t)
	res, err := Benchmark(ctx, BenchmarkOptions{Dir: t.TempDir(), Writes: 20, Kills: 1, Config: Config{
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond, UnreachableAfter: time.Second, ApplyTimeout: 10 * time.Second,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Leader.N != 20 || res.Forwarded.N != 20 || len(res.Failovers) != 1 || res.FailoverMedian <= 0 {
		t.Fatalf("incomplete result: %+v", res)
	}
}
