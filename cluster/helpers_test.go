package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// Waits are generous: CI runs these tests on 2 cores beside others, and
// they assert what happens, never how fast.
const (
	waitFor = 30 * time.Second
	tick    = 20 * time.Millisecond
)

// testLogger discards, unless CLUSTER_TEST_LOG is set (then it writes to
// stderr at that level: debug, info, warn).
func testLogger() *slog.Logger {
	lvl := os.Getenv("CLUSTER_TEST_LOG")
	if lvl == "" {
		return slog.New(slog.DiscardHandler)
	}
	var l slog.Level
	_ = l.UnmarshalText([]byte(lvl))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// testConfig has raft timeouts shorter than the defaults, so that
// elections in tests take a fraction of a second on an idle machine, and
// long write timeouts, so that a loaded machine slows the tests without
// failing them.
func testConfig(id, dir string) Config {
	return Config{
		NodeID:             id,
		Dir:                dir,
		RaftBind:           "127.0.0.1:0",
		ApplyTimeout:       10 * time.Second,
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		UnreachableAfter:   time.Second,
	}
}

// testNode is a Node with its own gRPC server on a loopback port.
type testNode struct {
	*Node
	cfg  Config
	reg  *prometheus.Registry
	srv  *grpc.Server
	done chan struct{}
}

// startNode starts a node with its gRPC server. cfg.GRPCAdvertise, when
// set, is the address to listen on (a restart keeps its ports).
func startNode(t testing.TB, cfg Config) *testNode {
	t.Helper()
	tn, err := startNodeErr(t, cfg)
	require.NoError(t, err)
	return tn
}

// startNodeErr is startNode returning the error of Start.
func startNodeErr(t testing.TB, cfg Config) (*testNode, error) {
	t.Helper()
	addr := cfg.GRPCAdvertise
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	require.NoError(t, err)
	cfg.GRPCAdvertise = lis.Addr().String()
	var opts []grpc.ServerOption
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg.TLS)))
	}
	tn := &testNode{cfg: cfg, reg: prometheus.NewRegistry(), done: make(chan struct{})}
	tn.Node, err = New(cfg, tn.reg, testLogger().With("test_node", cfg.NodeID))
	if err != nil {
		lis.Close()
		require.NoError(t, err)
	}
	tn.srv = grpc.NewServer(append(opts, tn.GRPCServerOptions()...)...)
	// A restart keeps the raft address that the others know.
	if cfg.transport == nil {
		tn.cfg.RaftBind = string(tn.trans.LocalAddr())
	}
	tn.RegisterGRPC(tn.srv)
	go func() {
		defer close(tn.done)
		_ = tn.srv.Serve(lis)
	}()
	t.Cleanup(func() { tn.stop(t) })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	return tn, tn.Start(ctx)
}

// stop shuts the node down and stops its gRPC server. Safe to repeat.
func (tn *testNode) stop(t testing.TB) {
	t.Helper()
	tn.srv.Stop()
	<-tn.done
	require.NoError(t, tn.Shutdown())
}

// restart starts the node again from its directory, on its addresses.
func (tn *testNode) restart(t testing.TB) *testNode {
	t.Helper()
	cfg := tn.cfg
	cfg.Bootstrap, cfg.Join = false, nil
	return startNode(t, cfg)
}

// startCluster bootstraps a cluster of size nodes on loopback, each with
// its own directory under t.TempDir(), and waits until all are ready.
func startCluster(t testing.TB, size int, tweak func(*Config)) []*testNode {
	t.Helper()
	var nodes []*testNode
	for i := range size {
		cfg := testConfig(fmt.Sprintf("n%d", i+1), t.TempDir())
		if i == 0 {
			cfg.Bootstrap = true
		} else {
			cfg.Join = []string{nodes[0].cfg.GRPCAdvertise}
		}
		if tweak != nil {
			tweak(&cfg)
		}
		nodes = append(nodes, startNode(t, cfg))
	}
	waitReady(t, nodes...)
	return nodes
}

func waitReady(t testing.TB, nodes ...*testNode) {
	t.Helper()
	for _, n := range nodes {
		require.Eventually(t, n.Ready, waitFor, tick, "node %s not ready", n.id)
	}
}

// leader waits until one of the running nodes is the leader and all
// running nodes follow it, and returns it.
func leader(t testing.TB, nodes ...*testNode) *testNode {
	t.Helper()
	ns := make([]*Node, len(nodes))
	for i, n := range nodes {
		ns[i] = n.Node
	}
	var l *testNode
	require.Eventually(t, func() bool {
		i := agreedLeader(ns...)
		if i >= 0 {
			l = nodes[i]
		}
		return i >= 0
	}, waitFor, tick, "no leader agreed on")
	return l
}

// running returns the nodes other than the excluded ones.
func running(nodes []*testNode, except ...*testNode) []*testNode {
	var out []*testNode
next:
	for _, n := range nodes {
		for _, e := range except {
			if n == e {
				continue next
			}
		}
		out = append(out, n)
	}
	return out
}

// stateBytes is a node's state in the snapshot format: two nodes with the
// same history have the same bytes.
func stateBytes(t testing.TB, s *State) string {
	t.Helper()
	var b []byte
	w := writerFunc(func(p []byte) (int, error) { b = append(b, p...); return len(p), nil })
	require.NoError(t, encodeSnapshot(w, s))
	return string(b)
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// waitSameState waits until all nodes hold the same state at the same
// index, at least index, and returns it.
func waitSameState(t testing.TB, index uint64, nodes ...*testNode) *State {
	t.Helper()
	var s *State
	require.Eventually(t, func() bool {
		s = nodes[0].State()
		if s.Index() < index {
			return false
		}
		want := stateBytes(t, s)
		for _, n := range nodes[1:] {
			if stateBytes(t, n.State()) != want {
				return false
			}
		}
		return true
	}, waitFor, tick, "nodes did not converge on one state at index >= %d", index)
	return s
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	t.Cleanup(cancel)
	return ctx
}
