package server_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/cluster"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/server"
)

// clusterAnswer is an answer of the cluster API in the Prometheus
// envelope.
type clusterAnswer struct {
	Status    string               `json:"status"`
	Data      server.ClusterStatus `json:"data"`
	ErrorType string               `json:"errorType"`
	Error     string               `json:"error"`
}

// clusterCall sends a request to a node's web listener and decodes the
// answer.
func clusterCall(t *testing.T, web, method, path, body string) (int, clusterAnswer) {
	t.Helper()
	code, hdr, b := httpDo(t, http.DefaultClient, method, "http://"+web+path, "application/json", []byte(body), nil)
	require.Equal(t, "application/json", hdr.Get("Content-Type"), "%s %s: %s", method, path, b)
	var a clusterAnswer
	require.NoError(t, json.Unmarshal(b, &a), "%s", b)
	return code, a
}

func clusterStatus(t *testing.T, web string) server.ClusterStatus {
	t.Helper()
	code, a := clusterCall(t, web, http.MethodGet, "/api/v1/cluster", "")
	require.Equal(t, http.StatusOK, code, a.Error)
	require.Equal(t, "success", a.Status)
	return a.Data
}

func ready(t *testing.T, web string) (bool, string) {
	t.Helper()
	code, _, b := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+web+"/-/ready", "", nil, nil)
	return code == http.StatusOK, string(b)
}

// startNode starts a node of a test cluster; wait waits until it is
// ready. Its data are in dir (a temporary directory when empty).
func startNode(t *testing.T, id, dir string, wait bool, mutate func(*server.Config)) (*server.Server, server.Addrs) {
	t.Helper()
	return startNodeReg(t, id, dir, wait, nil, mutate)
}

// startNodeReg is startNode with the node's metrics in reg.
func startNodeReg(t *testing.T, id, dir string, wait bool, reg *prometheus.Registry, mutate func(*server.Config)) (*server.Server, server.Addrs) {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.WebListenAddress = "127.0.0.1:0"
	cfg.OTLPGRPCListenAddress = "127.0.0.1:0"
	cfg.OTLPHTTPListenAddress = "127.0.0.1:0"
	cfg.Storage.Dir = dir
	if dir == "" {
		cfg.Storage.Dir = t.TempDir()
	}
	testCluster(&cfg.Cluster)
	cfg.Cluster.NodeID = id
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(cfg, reg, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})).With("test_node", id))
	require.NoError(t, err)
	require.NoError(t, srv.Start())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
	})
	if wait {
		waitFor(t, id+" ready", srv.Ready)
	}
	return srv, srv.Addrs()
}

// joining returns a mutation that joins the cluster of the node at
// grpcAddr.
func joining(grpcAddr string) func(*server.Config) {
	return func(c *server.Config) {
		c.Cluster.Bootstrap = false
		c.Cluster.Join = []string{grpcAddr}
	}
}

// TestClusterOfOne: a node on its own is a cluster of one, its own
// leader, through the same API as a larger cluster.
func TestClusterOfOne(t *testing.T) {
	_, addrs := startServer(t, nil)
	ok, body := ready(t, addrs.Web)
	require.True(t, ok, body)

	st := clusterStatus(t, addrs.Web)
	require.Equal(t, "n1", st.NodeID)
	require.Equal(t, "Leader", st.RaftState)
	require.Equal(t, "n1", st.LeaderID)
	require.Equal(t, addrs.ClusterRaft, st.LeaderRaftAddress)
	require.True(t, st.Ready)
	require.Positive(t, st.Term)
	require.GreaterOrEqual(t, st.CommitIndex, st.AppliedIndex)
	require.Positive(t, st.AppliedIndex)
	require.False(t, st.Time.IsZero())
	require.Len(t, st.Members, 1)
	m := st.Members[0]
	require.Equal(t, server.ClusterMemberStatus{ID: "n1", RaftAddress: addrs.ClusterRaft, GRPCAddress: addrs.ClusterGRPC, Voter: true,
		Role: "leader", State: "live", Since: m.Since}, m)

	// Refusals, each with the cluster's reason and the status of its kind.
	f := func(method, path, body string, code int, typ, msg string) {
		t.Helper()
		got, a := clusterCall(t, addrs.Web, method, path, body)
		require.Equal(t, code, got, "%s %s: %s", method, path, a.Error)
		require.Equal(t, "error", a.Status)
		require.Equal(t, typ, a.ErrorType)
		require.Contains(t, a.Error, msg)
	}
	f(http.MethodPost, "/api/v1/admin/cluster/members", `{"id": "n2", "raft_address": `, http.StatusBadRequest, "bad_data", "is not a join request")
	f(http.MethodPost, "/api/v1/admin/cluster/members", `{"id": "n2", "raft": "127.0.0.1:1"}`, http.StatusBadRequest, "bad_data", `unknown field "raft"`)
	f(http.MethodPost, "/api/v1/admin/cluster/members", `{"id": "n 2", "raft_address": "nowhere"}`, http.StatusBadRequest, "bad_data", "invalid id")
	f(http.MethodPost, "/api/v1/admin/cluster/members", `{"id": "n2", "raft_address": "nowhere"}`, http.StatusBadRequest, "bad_data", "invalid raft_address")
	f(http.MethodPost, "/api/v1/admin/cluster/members", fmt.Sprintf(`{"id": "n2", "raft_address": %q}`, addrs.ClusterRaft), http.StatusConflict, "conflict", "belongs to member n1")
	f(http.MethodDelete, "/api/v1/admin/cluster/members/n9", "", http.StatusNotFound, "not_found", `no member "n9"; members are n1`)
	f(http.MethodDelete, "/api/v1/admin/cluster/members/n1", "", http.StatusBadRequest, "bad_data", "the last voter")
	f(http.MethodPost, "/api/v1/admin/cluster/leave", "", http.StatusBadRequest, "bad_data", "the last voter")
	f(http.MethodGet, "/api/v1/admin/cluster/nothing", "", http.StatusNotFound, "not_found", "the cluster admin API is")
	f(http.MethodPost, "/api/v1/cluster", "", http.StatusMethodNotAllowed, "bad_data", "use GET")
	require.Len(t, clusterStatus(t, addrs.Web).Members, 1, "nothing changed")
}

// TestClusterOfThree runs three nodes in one process: two join the first
// through cluster.join, a fourth waits until it is added through the
// admin API; metadata written on one node reaches all; members are
// removed and leave through the admin API.
func TestClusterOfThree(t *testing.T) {
	_, a1 := startNode(t, "n1", "", true, nil)
	_, a2 := startNode(t, "n2", "", true, joining(a1.ClusterGRPC))
	_, a3 := startNode(t, "n3", "", true, joining(a1.ClusterGRPC))
	webs := map[string]string{"n1": a1.Web, "n2": a2.Web, "n3": a3.Web}
	// Each node lists the three, with one leader they agree on.
	waitFor(t, "three members and one leader seen by all", func() bool {
		leaders := map[string]bool{}
		for _, web := range webs {
			st := clusterStatus(t, web)
			if len(st.Members) != 3 || st.LeaderID == "" {
				return false
			}
			leaders[st.LeaderID] = true
		}
		return len(leaders) == 1
	})
	for id, web := range webs {
		ok, body := ready(t, web)
		require.True(t, ok, "%s: %s", id, body)
		st := clusterStatus(t, web)
		require.Equal(t, id, st.NodeID)
		roles := map[string]int{}
		for _, m := range st.Members {
			roles[m.Role]++
			require.True(t, m.Voter)
			require.NotEmpty(t, m.GRPCAddress, "member %s", m.ID)
		}
		require.Equal(t, map[string]int{"leader": 1, "follower": 2}, roles, "seen from %s", id)
	}
	require.Equal(t, []string{"n1", "n2", "n3"}, memberIDs(clusterStatus(t, a2.Web)))

	// A rule group set through one node's ruler API is every node's.
	code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+a3.Web+"/api/v1/rules/team", "application/yaml",
		[]byte("name: replicated\nrules:\n- record: job:up:sum\n  expr: sum(up)\n"), nil)
	require.Equal(t, http.StatusAccepted, code, "%s", body)
	for id, web := range webs {
		waitFor(t, "the rule group on "+id, func() bool {
			code, _, b := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+web+"/api/v1/rules/team/replicated", "", nil, nil)
			return code == http.StatusOK && strings.Contains(string(b), "job:up:sum")
		})
	}

	// A node with neither bootstrap nor join waits, not ready, until a
	// member adds it through the admin API.
	_, a4 := startNode(t, "n4", "", false, func(c *server.Config) { c.Cluster.Bootstrap = false })
	waitFor(t, "n4 replays its WAL", func() bool {
		_, body := ready(t, a4.Web)
		return strings.Contains(body, "cluster")
	})
	ok, msg := ready(t, a4.Web)
	require.False(t, ok)
	require.Contains(t, msg, "not caught up with the cluster's leader")
	code, a := clusterCall(t, a2.Web, http.MethodPost, "/api/v1/admin/cluster/members",
		fmt.Sprintf(`{"id": "n4", "raft_address": %q, "grpc_address": %q}`, a4.ClusterRaft, a4.ClusterGRPC))
	require.Equal(t, http.StatusOK, code, a.Error)
	require.Equal(t, []string{"n1", "n2", "n3", "n4"}, memberIDs(a.Data))
	waitFor(t, "n4 ready", func() bool { ok, _ := ready(t, a4.Web); return ok })
	waitFor(t, "the rule group on n4", func() bool {
		code, _, _ := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+a4.Web+"/api/v1/rules/team/replicated", "", nil, nil)
		return code == http.StatusOK
	})

	// n4 is removed through another node, n3 leaves by itself.
	code, a = clusterCall(t, a1.Web, http.MethodDelete, "/api/v1/admin/cluster/members/n4", "")
	require.Equal(t, http.StatusOK, code, a.Error)
	require.Equal(t, []string{"n1", "n2", "n3"}, memberIDs(a.Data))
	code, a = clusterCall(t, a3.Web, http.MethodPost, "/api/v1/admin/cluster/leave", "")
	require.Equal(t, http.StatusOK, code, a.Error)
	waitFor(t, "n1 and n2 left", func() bool {
		for _, web := range []string{a1.Web, a2.Web} {
			st := clusterStatus(t, web)
			if strings.Join(memberIDs(st), ",") != "n1,n2" || st.LeaderID == "" {
				return false
			}
		}
		return true
	})
	code, a = clusterCall(t, a1.Web, http.MethodDelete, "/api/v1/admin/cluster/members/n3", "")
	require.Equal(t, http.StatusNotFound, code, a.Error)
	require.Equal(t, "not_found", a.ErrorType)

	// The two left still take writes.
	code, _, body = httpDo(t, http.DefaultClient, http.MethodDelete, "http://"+a2.Web+"/api/v1/rules/team/replicated", "", nil, nil)
	require.Equal(t, http.StatusAccepted, code, "%s", body)
}

func memberIDs(st server.ClusterStatus) []string {
	var ids []string
	for _, m := range st.Members {
		ids = append(ids, m.ID)
	}
	return ids
}

// TestClusterNodeIdentity: a node keeps its ID in its data directory, so
// that a restart without --cluster.node-id (or with a new host name) is
// the same member; another ID on the same data is refused, and so is a
// second process on the same directory.
func TestClusterNodeIdentity(t *testing.T) {
	dir := t.TempDir()
	srv, addrs := startNode(t, "first", dir, true, nil)

	cfg := server.DefaultConfig()
	cfg.WebListenAddress, cfg.OTLPGRPCListenAddress, cfg.OTLPHTTPListenAddress = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Storage.Dir = dir
	testCluster(&cfg.Cluster)
	cfg.Cluster.NodeID = "first"
	twin, err := server.New(cfg, nil, nil)
	require.NoError(t, err)
	require.ErrorContains(t, twin.Start(), "is in use by another hopwatch process")

	raftAddr := addrs.ClusterRaft
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, srv.Shutdown(ctx))

	cfg.Cluster.NodeID = "second"
	other, err := server.New(cfg, nil, nil)
	require.NoError(t, err)
	require.ErrorContains(t, other.Start(), `cluster.node-id: is "second", but the cluster state in `+filepath.Join(dir, "cluster")+` belongs to node "first"`)

	// Without an ID the stored one is taken; the restarted node is its
	// cluster's leader again, at its raft address of before.
	_, addrs = startNode(t, "", dir, true, func(c *server.Config) { c.Cluster.RaftAddress = raftAddr })
	st := clusterStatus(t, addrs.Web)
	require.Equal(t, "first", st.NodeID)
	require.Equal(t, "first", st.LeaderID)
	require.Equal(t, []string{"first"}, memberIDs(st))
	require.Equal(t, raftAddr, st.Members[0].RaftAddress)
}

// TestClusterTokens: with authentication on and no token store given, the
// tenants' tokens are the cluster's, set through the tenant admin API: a
// token works once made, and stops working when revoked; a tenant's limit
// override is in force in storage.
func TestClusterTokens(t *testing.T) {
	admin := newToken(t)
	adminFile := filepath.Join(t.TempDir(), "admin-tokens")
	writeAdminTokens(t, adminFile, auth.FormatHash(auth.HashToken(admin)))
	srv, addrs := startServerReg(t, prometheus.NewRegistry(), func(c *server.Config) {
		c.Auth.Enabled = true
		c.Auth.AdminTokenFile = adminFile
	})
	base := "http://" + addrs.Web
	query := base + "/api/v1/labels"
	call := func(method, path, tok string, body string) (int, []byte) {
		t.Helper()
		code, _, b := httpDo(t, http.DefaultClient, method, base+path, "application/json", []byte(body), bearer(tok))
		return code, b
	}

	code, body := call(http.MethodPut, "/api/v1/admin/tenants/team-c", admin, `{"limits": {"max_series_per_tenant": 100}}`)
	require.Equal(t, http.StatusCreated, code, "%s", body)
	code, body = call(http.MethodPost, "/api/v1/admin/tenants/team-c/tokens", admin, "")
	require.Equal(t, http.StatusCreated, code, "%s", body)
	var made struct {
		Data struct{ Token, Hash string } `json:"data"`
	}
	require.NoError(t, json.Unmarshal(body, &made))
	tok := made.Data.Token
	code, _, body = httpDo(t, http.DefaultClient, http.MethodGet, query, "", nil, bearer(tok))
	require.Equal(t, http.StatusOK, code, "%s", body)
	waitFor(t, "team-c's series limit in force", func() bool { return server.TenantMaxSeries(srv, "team-c") == 100 })

	// The cluster's APIs are an admin's.
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/api/v1/cluster"},
		{http.MethodDelete, "/api/v1/admin/cluster/members/n9"},
		{http.MethodGet, "/api/v1/admin/tenants"},
	} {
		code, body = call(c.method, c.path, tok, "")
		require.Equal(t, http.StatusForbidden, code, "%s %s: %s", c.method, c.path, body)
	}
	code, body = call(http.MethodGet, "/api/v1/cluster", admin, "")
	require.Equal(t, http.StatusOK, code, "%s", body)

	code, body = call(http.MethodDelete, "/api/v1/admin/tenants/team-c/tokens/"+made.Data.Hash, admin, "")
	require.Equal(t, http.StatusOK, code, "%s", body)
	code, _, body = httpDo(t, http.DefaultClient, http.MethodGet, query, "", nil, bearer(tok))
	require.Equal(t, http.StatusUnauthorized, code, "%s", body)

	// Any change to the cluster's tenants reaches the authenticator, however
	// it was made.
	tok2 := newToken(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := srv.Node().PutTenant(ctx, cluster.Tenant{ID: "team-d", TokenHashes: []cluster.TokenHash{cluster.HashToken(tok2)}})
	require.NoError(t, err)
	code, _, body = httpDo(t, http.DefaultClient, http.MethodGet, query, "", nil, bearer(tok2))
	require.Equal(t, http.StatusOK, code, "%s", body)
}

// TestClusterConfig: cluster settings that cannot work are refused at
// start, each naming its flag.
func TestClusterConfig(t *testing.T) {
	f := func(mutate func(*server.ClusterConfig), want ...string) {
		t.Helper()
		cfg := server.DefaultConfig()
		mutate(&cfg.Cluster)
		_, err := server.New(cfg, nil, nil)
		require.Error(t, err)
		for _, w := range want {
			require.ErrorContains(t, err, w)
		}
	}
	f(func(c *server.ClusterConfig) { c.NodeID = "node 1" }, `cluster.node-id: "node 1": use only A-Z`)
	f(func(c *server.ClusterConfig) { c.NodeID = strings.Repeat("n", 129) }, "cluster.node-id", "use 1 to 128 characters")
	f(func(c *server.ClusterConfig) { c.RaftAddress = "9801" }, `cluster.raft-address: "9801" is not host:port`)
	f(func(c *server.ClusterConfig) { c.GRPCAddress = "" }, `cluster.grpc-address: "" is not host:port`)
	f(func(c *server.ClusterConfig) { c.RaftAddress = ":0" }, `cluster.raft-address: ":0" picks a port on every address`)
	f(func(c *server.ClusterConfig) { c.RaftAdvertiseAddress = "0.0.0.0:9801" }, "cluster.raft-advertise-address", "names no host that other nodes can dial")
	f(func(c *server.ClusterConfig) { c.GRPCAdvertiseAddress = "10.0.0.1" }, "cluster.grpc-advertise-address", "is not host:port")
	f(func(c *server.ClusterConfig) { c.GRPCAdvertiseAddress = "10.0.0.1:0" }, "cluster.grpc-advertise-address", "has no port")
	f(func(c *server.ClusterConfig) { c.Join = []string{"10.0.0.1:9802", "node2"} }, `cluster.join: "node2" is not host:port`,
		"cluster.bootstrap: set together with cluster.join")
	f(func(c *server.ClusterConfig) { c.TLS.CertFile = "node.pem" }, "cluster.tls.key-file: needed", "cluster.tls.ca-file: needed")
	f(func(c *server.ClusterConfig) {
		c.TLS = server.ClusterTLSConfig{CertFile: "missing.pem", KeyFile: "missing.key", CAFile: "ca.pem"}
	}, "cluster.tls: hopwatch/auth: certificate file")
}

// TestClusterTLS: with --cluster.tls.* two nodes form a cluster over
// mutual TLS on both cluster ports, and a client without a certificate of
// the cluster's CA is refused on both.
func TestClusterTLS(t *testing.T) {
	ca := newTestCA(t)
	withTLS := func(cn string, join string) func(*server.Config) {
		certFile, keyFile, _ := ca.issue(t, cn)
		return func(c *server.Config) {
			c.Cluster.TLS = server.ClusterTLSConfig{CertFile: certFile, KeyFile: keyFile, CAFile: ca.File}
			if join != "" {
				joining(join)(c)
			}
		}
	}
	_, a1 := startNode(t, "n1", "", true, withTLS("n1", ""))
	_, a2 := startNode(t, "n2", "", true, withTLS("n2", a1.ClusterGRPC))
	waitFor(t, "two members", func() bool { return len(clusterStatus(t, a1.Web).Members) == 2 })
	code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+a2.Web+"/api/v1/rules/team", "application/yaml",
		[]byte("name: over-tls\nrules:\n- record: job:up:sum\n  expr: sum(up)\n"), nil)
	require.Equal(t, http.StatusAccepted, code, "%s", body)

	_, _, stranger := newTestCA(t).issue(t, "stranger")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, conn := range map[string]*grpc.ClientConn{
		"plain text":                  dialGRPC(t, a1.ClusterGRPC),
		"no certificate":              dialTLS(t, a1.ClusterGRPC, ca),
		"a certificate of another CA": dialTLS(t, a1.ClusterGRPC, ca, stranger),
	} {
		_, err := hopwatchv1.NewClusterServiceClient(conn).ReadIndex(ctx, &hopwatchv1.ReadIndexRequest{})
		require.Equal(t, codes.Unavailable, status.Code(err), "%s: %v", name, err)
	}
	c, err := tls.Dial("tcp", a1.ClusterRaft, &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12})
	if err == nil {
		// TLS 1.3 reports a refused client certificate at the first read.
		require.NoError(t, c.SetReadDeadline(time.Now().Add(30*time.Second)))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	require.Error(t, err, "raft without a client certificate")
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the raft port did not refuse the client")
}
