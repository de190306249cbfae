package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/cluster"
)

// Waits are generous: CI runs beside other work; tests assert what
// happens, and only the hot-apply test how fast.
const (
	waitFor = 30 * time.Second
	tick    = 10 * time.Millisecond
)

// testLogger discards, unless ADMIN_TEST_LOG is set (then it writes to
// stderr at that level: debug, info, warn).
func testLogger() *slog.Logger {
	lvl := os.Getenv("ADMIN_TEST_LOG")
	if lvl == "" {
		return slog.New(slog.DiscardHandler)
	}
	var l slog.Level
	_ = l.UnmarshalText([]byte(lvl))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

// testNode is a real single-node cluster: raft on loopback TCP, its
// cluster gRPC service on a loopback listener, its log in a temporary
// directory.
type testNode struct {
	*cluster.Node
	dir string
}

func startNode(t *testing.T) *testNode {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dir := t.TempDir()
	n, err := cluster.New(cluster.Config{
		NodeID:             "n1",
		Dir:                dir,
		RaftBind:           "127.0.0.1:0",
		GRPCAdvertise:      lis.Addr().String(),
		Bootstrap:          true,
		ApplyTimeout:       10 * time.Second,
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
	}, prometheus.NewRegistry(), testLogger())
	if err != nil {
		lis.Close()
		require.NoError(t, err)
	}
	srv := grpc.NewServer()
	n.RegisterGRPC(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
		require.NoError(t, n.Shutdown())
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	require.NoError(t, n.Start(ctx))
	require.Eventually(t, n.Ready, waitFor, tick, "node not ready")
	return &testNode{Node: n, dir: dir}
}

// api is the admin handler of a node served over loopback HTTP.
type api struct {
	t    *testing.T
	srv  *httptest.Server
	reg  *prometheus.Registry
	node *testNode
}

func startAPI(t *testing.T, logger *slog.Logger) *api {
	t.Helper()
	n := startNode(t)
	reg := prometheus.NewRegistry()
	mux := http.NewServeMux()
	h := NewHandler(n, reg, logger)
	mux.Handle(Prefix, h)
	mux.Handle(Prefix+"/", h)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &api{t: t, srv: srv, reg: reg, node: n}
}

// response is one answer, decoded from the envelope.
type response struct {
	code      int
	header    http.Header
	status    string
	errorType string
	error     string
	data      json.RawMessage
}

func (a *api) do(method, path, body string, header ...string) response {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewBufferString(body)
	}
	req, err := http.NewRequest(method, a.srv.URL+path, rd)
	require.NoError(a.t, err)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := a.srv.Client().Do(req)
	require.NoError(a.t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(a.t, err)
	require.Equal(a.t, "application/json", resp.Header.Get("Content-Type"), "%s %s: %s", method, path, b)
	var env struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	require.NoError(a.t, json.Unmarshal(b, &env), "%s", b)
	return response{code: resp.StatusCode, header: resp.Header, status: env.Status, errorType: env.ErrorType, error: env.Error, data: env.Data}
}

// ok requires a success with code and decodes its data into v (if not nil).
func (r response) ok(t *testing.T, code int, v any) {
	t.Helper()
	require.Equal(t, code, r.code, "answer: %s %s %s", r.errorType, r.error, r.data)
	require.Equal(t, "success", r.status)
	if v != nil {
		require.NoError(t, json.Unmarshal(r.data, v))
	}
}

// fails requires an error answer with code and errorType whose message
// contains every one of msgs.
func (r response) fails(t *testing.T, code int, errorType string, msgs ...string) {
	t.Helper()
	require.Equal(t, code, r.code, "answer: %s %s %s", r.errorType, r.error, r.data)
	require.Equal(t, "error", r.status)
	require.Equal(t, errorType, r.errorType)
	for _, m := range msgs {
		require.Contains(t, r.error, m)
	}
}

// requests reads hopwatch_admin_requests_total{method, code}.
func (a *api) requests(method, code string) float64 {
	a.t.Helper()
	mfs, err := a.reg.Gather()
	require.NoError(a.t, err)
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_admin_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["method"] == method && labels["code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
