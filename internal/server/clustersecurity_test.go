package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/cluster"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/ratelimit"
)

// TestClusterListenersLoopbackByDefault: a node started with the default
// cluster addresses (only the ports made free) listens for raft and the
// internal gRPC on loopback only, and says so.
func TestClusterListenersLoopbackByDefault(t *testing.T) {
	def := server.DefaultConfig().Cluster
	var logs syncBuffer
	cfg := server.DefaultConfig()
	cfg.WebListenAddress = "127.0.0.1:0"
	cfg.OTLPGRPCListenAddress = "127.0.0.1:0"
	cfg.OTLPHTTPListenAddress = "127.0.0.1:0"
	cfg.Storage.Dir = t.TempDir()
	cfg.Cluster.NodeID = "n1"
	freePort := func(addr string) string {
		host, _, err := net.SplitHostPort(addr)
		require.NoError(t, err)
		return net.JoinHostPort(host, "0")
	}
	cfg.Cluster.RaftAddress = freePort(def.RaftAddress)
	cfg.Cluster.GRPCAddress = freePort(def.GRPCAddress)
	srv, err := server.New(cfg, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	})
	waitFor(t, "ready", srv.Ready)
	addrs := srv.Addrs()
	for _, a := range []string{addrs.ClusterRaft, addrs.ClusterGRPC} {
		host, port, err := net.SplitHostPort(a)
		require.NoError(t, err)
		require.Equal(t, "127.0.0.1", host, a)
		c, err := net.Dial("tcp", a)
		require.NoError(t, err, "listening on %s", a)
		c.Close()
		// Not on this host's other addresses.
		for _, ip := range hostIPs(t) {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), port), 5*time.Second)
			if err == nil {
				c.Close()
			}
			require.Error(t, err, "port %s reachable on %s", port, ip)
		}
	}
	require.Contains(t, logs.String(), `msg="cluster listeners" raft_listen=127.0.0.1:`)
	require.Contains(t, logs.String(), `reachable_from="this host only" authentication="none (loopback only)"`)
}

// hostIPs are this host's addresses other than loopback.
func hostIPs(t *testing.T) []net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	require.NoError(t, err)
	var ips []net.IP
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.IsGlobalUnicast() {
			ips = append(ips, ipn.IP)
		}
	}
	return ips
}

// TestClusterRefusesUnauthenticatedListeners: a node told to listen for
// raft or the internal gRPC beyond loopback, with neither a cluster secret
// nor cluster TLS, refuses to start, naming the flags to set.
func TestClusterRefusesUnauthenticatedListeners(t *testing.T) {
	secret := writeSecret(t, "0123456789abcdef0123456789abcdef")
	f := func(raft, grpcAddr string, mutate func(*server.ClusterConfig), want string) {
		t.Helper()
		cfg := server.DefaultConfig()
		cfg.Storage.Dir = t.TempDir()
		cfg.Cluster.RaftAddress, cfg.Cluster.GRPCAddress = raft, grpcAddr
		if mutate != nil {
			mutate(&cfg.Cluster)
		}
		if want == "" {
			require.NoError(t, cfg.Validate(), "%s %s", raft, grpcAddr)
			return
		}
		_, err := server.New(cfg, nil, nil)
		require.ErrorContains(t, err, want)
		require.ErrorContains(t, err, "Set --cluster.secret-file")
		require.ErrorContains(t, err, "--cluster.tls.cert-file, --cluster.tls.key-file and --cluster.tls.ca-file")
	}
	f(":9801", "127.0.0.1:9802", nil, `cluster.raft-address: ":9801" is reachable from other hosts, and nothing authenticates the nodes`)
	f("0.0.0.0:9801", "127.0.0.1:9802", nil, `cluster.raft-address: "0.0.0.0:9801" is reachable from other hosts`)
	f("127.0.0.1:9801", "10.1.2.3:9802", nil, `cluster.grpc-address: "10.1.2.3:9802" is reachable from other hosts`)
	f("127.0.0.1:9801", "[::]:9802", nil, `cluster.grpc-address: "[::]:9802" is reachable from other hosts`)
	f("myhost.example:9801", "127.0.0.1:9802", nil, `cluster.raft-address: "myhost.example:9801" is reachable from other hosts`)
	// Loopback needs nothing; other addresses need the secret or TLS.
	f("127.0.0.1:9801", "[::1]:9802", nil, "")
	f("localhost:9801", "127.0.0.1:9802", nil, "")
	f(":9801", ":9802", func(c *server.ClusterConfig) { c.SecretFile = secret }, "")
	f(":9801", ":9802", func(c *server.ClusterConfig) {
		c.TLS = server.ClusterTLSConfig{CertFile: "no-such.pem", KeyFile: "no-such-key.pem", CAFile: "no-such-ca.pem"}
	}, "")
	// A secret too short is refused.
	_, err := server.New(func() server.Config {
		cfg := server.DefaultConfig()
		cfg.Storage.Dir = t.TempDir()
		cfg.Cluster.SecretFile = writeSecret(t, "short")
		return cfg
	}(), nil, nil)
	require.ErrorContains(t, err, "cluster.secret-file: hopwatch/cluster: the cluster secret has 5 bytes, fewer than 16")
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func writeSecret(t *testing.T, s string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster-secret")
	require.NoError(t, os.WriteFile(p, []byte(s+"\n"), 0o600))
	return p
}

// TestClusterSecret: nodes with the same --cluster.secret-file form a
// cluster over real TCP on 127.0.0.1 (raft, joins, the rate limits'
// exchange); a node with another secret is refused at join and stops, and
// calls to the internal gRPC services without the secret are refused with
// Unauthenticated and change nothing.
func TestClusterSecret(t *testing.T) {
	good := writeSecret(t, "0123456789abcdef-the-cluster")
	bad := writeSecret(t, "0123456789abcdef-another-one")
	withSecret := func(f string) func(*server.Config) {
		return func(c *server.Config) { c.Cluster.SecretFile = f }
	}
	limited := func(c *server.Config) {
		c.RateLimits.IngestionRateSpans = 1000
		c.RateLimits.ExchangeInterval = 100 * time.Millisecond
	}
	reg1, reg2 := prometheus.NewRegistry(), prometheus.NewRegistry()
	_, a1 := startNodeReg(t, "n1", "", true, reg1, func(c *server.Config) {
		withSecret(good)(c)
		limited(c)
	})
	_, a2 := startNodeReg(t, "n2", "", true, reg2, func(c *server.Config) {
		withSecret(good)(c)
		limited(c)
		joining(a1.ClusterGRPC)(c)
	})
	waitFor(t, "two members", func() bool { return len(clusterStatus(t, a2.Web).Members) == 2 })
	// The rate limits' exchange between them carries the secret: with
	// spans on both nodes, the node that does not own the tenant reports
	// its demand to the owner at every round, and no report fails.
	for _, a := range []server.Addrs{a1, a2} {
		code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+a.OTLPHTTP+"/v1/traces", "application/x-protobuf",
			spansRequest(t, "svc", 10, time.Now().Add(-time.Minute)), nil)
		require.Equal(t, http.StatusOK, code, "%s", body)
	}
	reports := func() uint64 {
		var n uint64
		for _, reg := range []*prometheus.Registry{reg1, reg2} {
			mfs, err := reg.Gather()
			require.NoError(t, err)
			for _, mf := range mfs {
				if mf.GetName() == "hopwatch_ratelimit_exchange_duration_seconds" {
					for _, m := range mf.GetMetric() {
						n += m.GetHistogram().GetSampleCount()
					}
				}
			}
		}
		return n
	}
	waitFor(t, "demand reports between the nodes", func() bool { return reports() >= 5 })
	for _, reg := range []*prometheus.Registry{reg1, reg2} {
		require.Zero(t, counter(t, reg, "hopwatch_ratelimit_exchange_errors_total", nil))
	}

	// A node with another secret: its join is refused, and it stops.
	cfg := server.DefaultConfig()
	cfg.WebListenAddress, cfg.OTLPGRPCListenAddress, cfg.OTLPHTTPListenAddress = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Storage.Dir = t.TempDir()
	testCluster(&cfg.Cluster)
	cfg.Cluster.NodeID = "intruder"
	withSecret(bad)(&cfg)
	joining(a1.ClusterGRPC)(&cfg)
	intruder, err := server.New(cfg, nil, nil)
	require.NoError(t, err)
	require.NoError(t, intruder.Start())
	select {
	case err := <-intruder.Err():
		require.ErrorIs(t, err, cluster.ErrUnauthenticated)
		require.ErrorContains(t, err, "--cluster.secret-file")
	case <-time.After(30 * time.Second):
		t.Fatal("the node with another secret was not refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, intruder.Shutdown(ctx))

	// Calls without the secret, to both services of the internal gRPC.
	conn, err := grpc.NewClient(a1.ClusterGRPC, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	_, err = hopwatchv1.NewClusterServiceClient(conn).Join(ctx, &hopwatchv1.JoinRequest{Id: "intruder", RaftAddress: "127.0.0.1:1", GrpcAddress: "127.0.0.1:2"})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)
	require.Contains(t, status.Convert(err).Message(), "--cluster.secret-file")
	_, err = hopwatchv1.NewRateLimitServiceClient(conn).ExchangeDemand(ctx, &hopwatchv1.ExchangeDemandRequest{NodeId: "intruder"})
	require.Equal(t, codes.Unauthenticated, status.Code(err), "%v", err)

	st := clusterStatus(t, a1.Web)
	require.ElementsMatch(t, []string{"n1", "n2"}, memberIDs(st), "the refused node is not a member")
	// The intruder's join and the two calls above; none of n2's (its
	// registration, its rate limit exchange), which carry the secret.
	require.Equal(t, 3.0, counter(t, reg1, "hopwatch_cluster_auth_refused_total", map[string]string{"transport": "grpc"}))
}

// TestAdminAPILoopbackWithoutAuth: with authentication off and the web
// port open to other hosts, the admin API (tenants, cluster members,
// reload) answers this host only: a request from another address of the
// host is refused with 403, a body that says what to do, a count, and no
// change; the read-only endpoints stay open.
func TestAdminAPILoopbackWithoutAuth(t *testing.T) {
	ips := hostIPs(t)
	require.NotEmpty(t, ips, "this test needs an address of this host other than loopback")
	reg := prometheus.NewRegistry()
	_, addrs := startNodeReg(t, "n1", "", true, reg, func(c *server.Config) { c.WebListenAddress = ":0" })
	_, port, err := net.SplitHostPort(addrs.Web)
	require.NoError(t, err)
	remote := "http://" + net.JoinHostPort(ips[0].String(), port)
	local := "http://" + net.JoinHostPort("127.0.0.1", port)

	for _, req := range []struct{ method, path, body string }{
		{http.MethodPut, "/api/v1/admin/tenants/acme", `{}`},
		{http.MethodGet, "/api/v1/admin/tenants", ``},
		{http.MethodPost, "/api/v1/admin/cluster/members", `{"id":"n9","raft_address":"10.9.9.9:9801","grpc_address":"10.9.9.9:9802"}`},
		{http.MethodPost, "/-/reload", ``},
	} {
		code, _, body := httpDo(t, http.DefaultClient, req.method, remote+req.path, "application/json", []byte(req.body), nil)
		require.Equal(t, http.StatusForbidden, code, "%s %s: %s", req.method, req.path, body)
		require.Contains(t, string(body), "without --auth.enabled it answers requests from this host (loopback) only")
	}
	require.Equal(t, 4.0, counter(t, reg, "hopwatch_admin_remote_refused_total", nil))
	code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, local+"/api/v1/admin/tenants/acme", "", nil, nil)
	require.Equal(t, http.StatusNotFound, code, "the refused PUT created nothing: %s", body)
	require.Len(t, clusterStatus(t, addrs.Web).Members, 1)

	// From this host, and the read-only endpoints from anywhere.
	code, _, body = httpDo(t, http.DefaultClient, http.MethodPut, local+"/api/v1/admin/tenants/acme", "application/json", []byte(`{}`), nil)
	require.Less(t, code, 300, "%s", body)
	for _, path := range []string{"/metrics", "/api/v1/cluster", "/-/ready"} {
		code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, remote+path, "", nil, nil)
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
}

// TestClusterDefaultLimits: the default limits are the cluster's, one
// value: the first node's flags seed them, a node joining with other
// --limits.* values is refused at join, naming the flag and both values,
// and a change through the admin API applies on every node.
func TestClusterDefaultLimits(t *testing.T) {
	limits := func(spans float64) func(*server.Config) {
		return func(c *server.Config) { c.RateLimits.IngestionRateSpans = spans }
	}
	s1, a1 := startNode(t, "n1", "", true, limits(1000))
	getLimits := func(web string) (int, string) {
		code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+web+"/api/v1/admin/cluster/limits", "", nil, nil)
		return code, string(body)
	}
	waitFor(t, "the first node's flags are the cluster's defaults", func() bool {
		code, body := getLimits(a1.Web)
		return code == http.StatusOK && strings.Contains(body, `"ingestion_rate_spans":1000`)
	})

	// Another value: refused at join.
	cfg := server.DefaultConfig()
	cfg.WebListenAddress, cfg.OTLPGRPCListenAddress, cfg.OTLPHTTPListenAddress = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Storage.Dir = t.TempDir()
	testCluster(&cfg.Cluster)
	cfg.Cluster.NodeID = "n2"
	limits(500)(&cfg)
	joining(a1.ClusterGRPC)(&cfg)
	other, err := server.New(cfg, nil, nil)
	require.NoError(t, err)
	require.NoError(t, other.Start())
	select {
	case err := <-other.Err():
		require.ErrorIs(t, err, cluster.ErrConflict)
		require.ErrorContains(t, err, "--limits.ingestion-rate-spans is 500 on this node and 1000 in the cluster")
	case <-time.After(30 * time.Second):
		t.Fatal("the node with other limits was not refused")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, other.Shutdown(ctx))
	require.Equal(t, []string{"n1"}, memberIDs(clusterStatus(t, a1.Web)))

	// The same value: joins.
	dir3 := t.TempDir()
	s3, a3 := startNode(t, "n3", dir3, true, func(c *server.Config) {
		limits(1000)(c)
		joining(a1.ClusterGRPC)(c)
	})
	// A change through the admin API applies on every node.
	code, _, body := httpDo(t, http.DefaultClient, http.MethodPut, "http://"+a3.Web+"/api/v1/admin/cluster/limits", "application/json",
		[]byte(`{"ingestion_rate_spans": 2000, "max_series_per_tenant": 150000}`), nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	for _, s := range []*server.Server{s1, s3} {
		waitFor(t, "the new default in force", func() bool {
			return server.TenantRateLimit(s, "anyone") == ratelimit.Limit{Rate: 2000, Burst: 2000}
		})
	}
	code, body2 := getLimits(a1.Web)
	require.Equal(t, http.StatusOK, code)
	require.Contains(t, body2, `"ingestion_rate_spans":2000`)
	// A member restarted with other flags keeps the cluster's values, and
	// says so.
	require.NoError(t, s3.Shutdown(ctx))
	var logs syncBuffer
	cfg3 := server.DefaultConfig()
	cfg3.WebListenAddress, cfg3.OTLPGRPCListenAddress, cfg3.OTLPHTTPListenAddress = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg3.Storage.Dir = dir3
	testCluster(&cfg3.Cluster)
	cfg3.Cluster.NodeID, cfg3.Cluster.RaftAddress, cfg3.Cluster.Bootstrap = "n3", a3.ClusterRaft, false
	limits(700)(&cfg3)
	s3, err = server.New(cfg3, nil, slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	require.NoError(t, s3.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, s3.Shutdown(ctx))
	})
	waitFor(t, "the restarted member warns", func() bool {
		return strings.Contains(logs.String(), "--limits.ingestion-rate-spans is 700 on this node and 2000 in the cluster")
	})
	require.Equal(t, ratelimit.Limit{Rate: 2000, Burst: 2000}, server.TenantRateLimit(s3, "anyone"))

	// A bad value is refused, naming the field.
	code, _, body = httpDo(t, http.DefaultClient, http.MethodPut, "http://"+a1.Web+"/api/v1/admin/cluster/limits", "application/json",
		[]byte(`{"ingestion_rate_spans": -1}`), nil)
	require.Equal(t, http.StatusBadRequest, code, "%s", body)
	require.Contains(t, string(body), "defaults.limits.ingestion_rate_spans")
}
