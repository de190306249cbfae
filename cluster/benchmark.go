package cluster

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc"
)

// BenchmarkOptions configures Benchmark.
type BenchmarkOptions struct {
	// Dir holds the nodes' directories; empty makes a temporary one,
	// removed afterwards.
	Dir string
	// Writes is the number of writes timed on the leader and on a
	// follower (default 1000 each).
	Writes int
	// Kills is the number of times the leader is stopped (default 10).
	Kills int
	// Config is the nodes' configuration (NodeID, Dir, addresses, Bootstrap
	// and Join are set per node); zero fields take DefaultConfig's values,
	// so by default the failover figures are those of the defaults.
	Config Config
	Logger *slog.Logger
}

// BenchmarkResult holds the figures Benchmark measured.
type BenchmarkResult struct {
	// Leader and Forwarded are write latencies, from the call to its
	// return, of writes made on the leader and on a follower (which
	// forwards them to the leader over gRPC).
	Leader, Forwarded Latency
	// Failovers are the times from stopping the leader to a new leader
	// having applied a write made on another node, one per kill.
	Failovers []time.Duration
	// FailoverMedian is the median of Failovers.
	FailoverMedian time.Duration
}

// Latency summarises timed calls.
type Latency struct {
	N             int
	P50, P99, Max time.Duration
}

func latency(ds []time.Duration) Latency {
	if len(ds) == 0 {
		return Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Latency{N: len(s), P50: rank(0.5), P99: rank(0.99), Max: s[len(s)-1]}
}

// Benchmark measures a 3-node cluster on loopback TCP, with the raft log and
// snapshots on disk under opts.Dir: the commit latency of metadata writes,
// and the leader failover time (the leader's node is stopped, not asked to
// leave, and restarted from its directory before the next kill).
func Benchmark(ctx context.Context, opts BenchmarkOptions) (res BenchmarkResult, err error) {
	if opts.Writes <= 0 {
		opts.Writes = 1000
	}
	if opts.Kills <= 0 {
		opts.Kills = 10
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", "hopwatch-cluster-bench-")
		if err != nil {
			return res, err
		}
		defer os.RemoveAll(dir)
		opts.Dir = dir
	}
	nodes := make([]*benchNode, 3)
	defer func() {
		for _, n := range nodes {
			if n != nil {
				err = errors.Join(err, n.stop())
			}
		}
	}()
	for i := range nodes {
		cfg := opts.Config
		cfg.NodeID = fmt.Sprintf("bench%d", i+1)
		cfg.Dir = filepath.Join(opts.Dir, cfg.NodeID)
		cfg.RaftBind, cfg.RaftAdvertise, cfg.GRPCAdvertise = "127.0.0.1:0", "", ""
		cfg.Bootstrap, cfg.Join = i == 0, nil
		if i > 0 {
			cfg.Join = []string{nodes[0].grpcAddr}
		}
		if nodes[i], err = startBenchNode(ctx, cfg, opts.Logger); err != nil {
			return res, err
		}
	}
	if err := waitAll(ctx, nodes, func(n *benchNode) bool { return n.Ready() && len(n.LiveMembers()) == 3 }); err != nil {
		return res, err
	}

	leader, err := benchLeader(ctx, nodes)
	if err != nil {
		return res, err
	}
	follower := nodes[0]
	if follower == leader {
		follower = nodes[1]
	}
	time1 := func(n *benchNode, i int) ([]time.Duration, error) {
		ds := make([]time.Duration, 0, opts.Writes)
		for j := range opts.Writes {
			t := Tenant{ID: fmt.Sprintf("bench-%d", i), Limits: Limits{IngestionRateSpans: float64(j + 1)}}
			start := time.Now()
			if _, err := n.PutTenant(ctx, t); err != nil {
				return nil, err
			}
			ds = append(ds, time.Since(start))
		}
		return ds, nil
	}
	ds, err := time1(leader, 0)
	if err != nil {
		return res, err
	}
	res.Leader = latency(ds)
	if ds, err = time1(follower, 1); err != nil {
		return res, err
	}
	res.Forwarded = latency(ds)

	for k := range opts.Kills {
		leader, err := benchLeader(ctx, nodes)
		if err != nil {
			return res, err
		}
		li := slices.Index(nodes, leader)
		other := nodes[(li+1)%len(nodes)]
		start := time.Now()
		if err := leader.stop(); err != nil {
			return res, err
		}
		for {
			_, err := other.PutTenant(ctx, Tenant{ID: fmt.Sprintf("failover-%d", k)})
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return res, err
			}
		}
		res.Failovers = append(res.Failovers, time.Since(start))
		cfg := leader.cfg
		cfg.Bootstrap, cfg.Join = false, nil
		nodes[li] = nil
		if nodes[li], err = startBenchNode(ctx, cfg, opts.Logger); err != nil {
			return res, err
		}
		if err := waitAll(ctx, nodes, func(n *benchNode) bool { return n.Ready() && len(n.LiveMembers()) == 3 }); err != nil {
			return res, err
		}
	}
	res.FailoverMedian = latency(res.Failovers).P50
	return res, nil
}

// benchNode is a Node with a gRPC server of its own.
type benchNode struct {
	*Node
	cfg      Config
	grpcAddr string
	srv      *grpc.Server
	served   chan error
}

// startBenchNode starts a node; a restart (cfg.GRPCAdvertise set) reuses
// its addresses.
func startBenchNode(ctx context.Context, cfg Config, logger *slog.Logger) (*benchNode, error) {
	addr := cmp.Or(cfg.GRPCAdvertise, "127.0.0.1:0")
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	cfg.GRPCAdvertise = lis.Addr().String()
	n, err := New(cfg, nil, logger.With("bench_node", cfg.NodeID))
	if err != nil {
		lis.Close()
		return nil, err
	}
	cfg.RaftBind = string(n.trans.LocalAddr())
	b := &benchNode{Node: n, cfg: cfg, grpcAddr: cfg.GRPCAdvertise, srv: grpc.NewServer(), served: make(chan error, 1)}
	n.RegisterGRPC(b.srv)
	go func() { b.served <- b.srv.Serve(lis) }()
	if err := n.Start(ctx); err != nil {
		return nil, errors.Join(err, b.stop())
	}
	return b, nil
}

func (b *benchNode) stop() error {
	b.srv.Stop()
	return errors.Join(<-b.served, b.Shutdown())
}

// benchLeader waits until all nodes follow the same leader, and returns it.
func benchLeader(ctx context.Context, nodes []*benchNode) (*benchNode, error) {
	ns := make([]*Node, len(nodes))
	for i, n := range nodes {
		ns[i] = n.Node
	}
	var l *benchNode
	err := waitAll(ctx, nodes[:1], func(*benchNode) bool {
		i := agreedLeader(ns...)
		if i < 0 {
			return false
		}
		l = nodes[i]
		return true
	})
	return l, err
}

// agreedLeader returns the index of the node that leads with every node
// following it, or -1 while there is none.
func agreedLeader(nodes ...*Node) int {
	l := -1
	for i, n := range nodes {
		if n.raft.State() == raft.Leader {
			l = i
		}
	}
	if l < 0 {
		return -1
	}
	for _, n := range nodes {
		if _, id := n.raft.LeaderWithID(); string(id) != nodes[l].id {
			return -1
		}
	}
	return l
}

// waitAll polls until ok holds for every node, or ctx ends.
func waitAll(ctx context.Context, nodes []*benchNode, ok func(*benchNode) bool) error {
	for {
		all := true
		for _, n := range nodes {
			all = all && ok(n)
		}
		if all {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
