// Package plugintest holds what the plugin's tests share: the datasource
// served over the plugin gRPC protocol as Grafana runs it, and a hopwatch
// node to query.
package plugintest

import (
	"context"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/grafana/grafana-plugin-sdk-go/experimental/datasourcetest"

	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/plugin/pkg/plugin"
)

// Main serves the datasource on a loopback port, sets *client to a client
// making Grafana's calls, runs the tests and exits. The SDK registers its
// metrics globally, so a test process serves one plugin: call Main from
// TestMain.
func Main(m *testing.M, client **datasourcetest.TestPluginClient) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	p, err := datasourcetest.Manage(plugin.NewDatasource, datasourcetest.ManageOpts{Address: addr})
	if err != nil {
		panic(err)
	}
	*client = p.Client
	code := m.Run()
	_ = p.Shutdown()
	os.Exit(code)
}

// StartHopwatch runs a hopwatch node on loopback ephemeral ports with a 1 s
// flush, changed by mutate, waits until it is ready and stops it when the
// test ends.
func StartHopwatch(t *testing.T, mutate func(*server.Config)) server.Addrs {
	t.Helper()
	cfg := server.DefaultConfig()
	cfg.WebListenAddress = "127.0.0.1:0"
	cfg.OTLPGRPCListenAddress = "127.0.0.1:0"
	cfg.OTLPHTTPListenAddress = "127.0.0.1:0"
	cfg.Cluster.RaftAddress, cfg.Cluster.GRPCAddress = "127.0.0.1:0", "127.0.0.1:0"
	cfg.FlushInterval = time.Second
	cfg.Storage.Dir = t.TempDir()
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := server.New(cfg, nil, slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for !srv.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("hopwatch not ready after 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	return srv.Addrs()
}
