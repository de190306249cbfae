package cluster

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

func testSecret(t *testing.T, s string) *Secret {
	t.Helper()
	sec, err := NewSecret([]byte(s))
	require.NoError(t, err)
	return sec
}

// TestSecret: nodes with the cluster's secret form a cluster over real TCP;
// a node with another secret is refused at join (Unauthenticated), and
// neither its gRPC calls nor its raft connections change the state.
func TestSecret(t *testing.T) {
	good := testSecret(t, "0123456789abcdef-the-cluster")
	bad := testSecret(t, "0123456789abcdef-another-one")
	nodes := startCluster(t, 2, func(c *Config) { c.Secret = good })
	ctx := ctxT(t)
	l := leader(t, nodes...)
	idx, err := running(nodes, l)[0].PutTenant(ctx, Tenant{ID: "acme"})
	require.NoError(t, err)
	waitSameState(t, idx, nodes...)

	// A node with another secret cannot join.
	cfg := testConfig("intruder", t.TempDir())
	cfg.Join = []string{l.cfg.GRPCAdvertise}
	cfg.Secret = bad
	_, err = startNodeErr(t, cfg)
	require.ErrorIs(t, err, ErrUnauthenticated)
	require.ErrorContains(t, err, "--cluster.secret-file")

	// Nor can a client without the secret, or with another.
	for name, opts := range map[string][]grpc.DialOption{
		"none":  {grpc.WithTransportCredentials(insecure.NewCredentials())},
		"other": {grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(bad.PerRPCCredentials())},
	} {
		conn, err := grpc.NewClient(l.cfg.GRPCAdvertise, opts...)
		require.NoError(t, err)
		c := hopwatchv1.NewClusterServiceClient(conn)
		_, err = c.Join(ctx, joinRequest("intruder", "127.0.0.1:1", "127.0.0.1:2", false))
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%s: %v", name, err)
		b, err := encodeCommand(nil, &command{Op: OpDeleteTenant, Tenant: &Tenant{ID: "acme"}})
		require.NoError(t, err)
		_, err = c.Apply(ctx, applyRequest(b, "intruder"))
		require.Equal(t, codes.Unauthenticated, status.Code(err), "%s: %v", name, err)
		require.NoError(t, conn.Close())
	}
	require.Equal(t, 5.0, testutil.ToFloat64(l.metrics.authRefused.WithLabelValues("grpc")), "the intruder node's join and the four calls")

	// Raft refuses a transport with another secret, and one without.
	for name, sec := range map[string]*Secret{"other": bad, "none": nil} {
		sl, err := newStreamLayer("127.0.0.1:0", "", nil, sec, func(error) {})
		require.NoError(t, err)
		tr := raft.NewNetworkTransport(sl, 1, 5*time.Second, nil)
		var resp raft.AppendEntriesResponse
		err = tr.AppendEntries(raft.ServerID(l.id), l.trans.LocalAddr(), &raft.AppendEntriesRequest{
			RPCHeader: raft.RPCHeader{ID: []byte("intruder"), Addr: []byte(tr.LocalAddr())},
			Term:      l.raft.CurrentTerm() + 10,
		}, &resp)
		require.Error(t, err, name)
		require.NoError(t, tr.Close())
	}
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(l.metrics.authRefused.WithLabelValues("raft")) >= 2
	}, waitFor, tick, "raft refusals counted")
	st := l.State()
	_, ok := st.Tenant("acme")
	require.True(t, ok, "the tenant is still there")
	require.Len(t, st.Members(), 2)
	require.Equal(t, l.id, leader(t, nodes...).id, "no election was forced")
}

// TestSecretHandshake: the raft handshake between two stream layers, with
// the same secret and with different ones, over real TCP.
func TestSecretHandshake(t *testing.T) {
	a := testSecret(t, "0123456789abcdef-the-cluster")
	b := testSecret(t, "0123456789abcdef-another-one")
	f := func(dial, listen *Secret, ok bool) {
		t.Helper()
		refused := make(chan error, 1)
		ln, err := newStreamLayer("127.0.0.1:0", "", nil, listen, func(err error) { refused <- err })
		require.NoError(t, err)
		defer ln.Close()
		d, err := newStreamLayer("127.0.0.1:0", "", nil, dial, func(error) {})
		require.NoError(t, err)
		defer d.Close()
		accepted := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				buf := make([]byte, 4)
				_, err = c.Read(buf)
				if err == nil && string(buf) != "ping" {
					err = net.ErrClosed
				}
				c.Close()
			}
			accepted <- err
		}()
		c, err := d.Dial(raft.ServerAddress(ln.Addr().String()), 5*time.Second)
		if ok {
			require.NoError(t, err)
			_, err = c.Write([]byte("ping"))
			require.NoError(t, err)
			require.NoError(t, <-accepted)
			c.Close()
			return
		}
		if err == nil {
			// The dialer without a secret notices only when the listener
			// hangs up.
			_, _ = c.Write([]byte("ping"))
			c.Close()
		}
		require.Error(t, <-accepted)
		require.ErrorIs(t, <-refused, errRaftHandshake)
	}
	f(a, a, true)
	f(a, b, false)
	f(nil, a, false)
	_, err := NewSecret([]byte("short\n"))
	require.ErrorContains(t, err, "fewer than 16")
}

// TestSecretWithTLS: the secret's handshake runs inside mutual TLS.
func TestSecretWithTLS(t *testing.T) {
	conf := testTLSConfig(t)
	sec := testSecret(t, "0123456789abcdef-the-cluster")
	nodes := startCluster(t, 2, func(c *Config) { c.TLS, c.Secret = conf, sec })
	l := leader(t, nodes...)
	idx, err := running(nodes, l)[0].PutTenant(ctxT(t), Tenant{ID: "both"})
	require.NoError(t, err)
	_, ok := waitSameState(t, idx, nodes...).Tenant("both")
	require.True(t, ok)
}

// TestLoadSecretBounded: a secret file path given by mistake is refused
// after reading at most MaxSecretBytes+1 bytes.
func TestLoadSecretBounded(t *testing.T) {
	_, err := LoadSecret("/dev/zero")
	require.ErrorContains(t, err, "more than 4096 bytes")
	path := filepath.Join(t.TempDir(), "secret")
	require.NoError(t, os.WriteFile(path, []byte("0123456789abcdef0123456789abcdef\n"), 0o600))
	_, err = LoadSecret(path)
	require.NoError(t, err)
}
