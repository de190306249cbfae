package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/internal/demo"
	"github.com/hopwatch/hopwatch/internal/server"
)

// runDemo runs a node with a short flush interval and a synthetic workload
// sending to it over OTLP/gRPC, and prints where to look.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	def := server.DefaultConfig()
	def.FlushInterval = time.Second
	def.Storage.Dir = ""
	// A demo node is a cluster of one that nobody joins: its cluster ports
	// stay on loopback, out of the way of a real node on 9801 and 9802.
	def.Cluster.RaftAddress = "127.0.0.1:0"
	def.Cluster.GRPCAddress = "127.0.0.1:0"
	cfg, logger, err := setup("demo", args, def, stderr)
	if err != nil {
		return err
	}
	if cfg.Storage.Dir == "" {
		dir, err := os.MkdirTemp("", "hopwatch-demo-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.Storage.Dir = dir
	}
	srv, err := server.New(cfg, nil, logger)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	addrs := srv.Addrs()
	web := "http://" + loopback(addrs.Web)
	fmt.Fprintf(stdout, `hopwatch demo: a synthetic web-frontend → api-gateway → log-processor → queue → log-indexer → log-store workload.
Data in %s (removed on exit unless --storage.path was given).

  Prometheus API   %s/api/v1/query   (point Grafana's Prometheus datasource at %s)
  metrics          %s/metrics
  OTLP/gRPC        %s     OTLP/HTTP  http://%s/v1/traces

Series appear within a few seconds. Try:

  curl -s '%s/api/v1/query' --data-urlencode 'query=sum by (service) (rate(traces_spanmetrics_calls_total[1m]))'
  curl -s '%s/api/v1/query' --data-urlencode 'query=histogram_quantile(0.99, sum by (service, span_name) (rate(traces_spanmetrics_latency[1m])))'
  curl -s '%s/api/v1/query' --data-urlencode 'query=sum by (service) (rate(traces_spanmetrics_calls_total{status_code="STATUS_CODE_ERROR"}[1m])) / sum by (service) (rate(traces_spanmetrics_calls_total[1m]))'

Ctrl-C stops.
`, cfg.Storage.Dir, web, web, web, loopback(addrs.OTLPGRPC), loopback(addrs.OTLPHTTP), web, web, web)

	dopts := demo.DefaultOptions()
	dopts.Endpoint = loopback(addrs.OTLPGRPC)
	wctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- demo.Run(wctx, dopts, logger.With("component", "demo")) }()

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-srv.Err():
	}
	cancel()
	<-done
	sctx, scancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer scancel()
	if err := srv.Shutdown(sctx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// loopback turns a wildcard listen address into one a local client can dial.
func loopback(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "::" || host == "0.0.0.0" || strings.HasPrefix(host, "[::]") {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
