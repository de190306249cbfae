package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/version"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 {
		switch args[0] {
		case "serve", "demo", "bench", "cluster":
			cmd, args = args[0], args[1:]
		case "version", "--version", "-version":
			info := version.Get()
			fmt.Fprintf(stdout, "hopwatch version %s (revision %s, %s)\n", info.Version, info.Revision, info.GoVersion)
			return 0
		case "help", "-h", "--help":
			fmt.Fprint(stdout, usage)
			return 0
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch cmd {
	case "serve":
		err = serve(ctx, args, stderr)
	case "demo":
		err = runDemo(ctx, args, stdout, stderr)
	case "bench":
		err = runBench(args, stdout, stderr)
	case "cluster":
		err = runCluster(ctx, args, stdout, stderr)
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "hopwatch %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

const usage = `hopwatch turns OpenTelemetry spans into per-hop latency series.

Usage:
  hopwatch [serve] [flags]   run a node (the default); see hopwatch serve -help
  hopwatch demo [flags]      run a node with an in-process synthetic workload
  hopwatch bench storage     measure the raw tier's codecs on datasets D1-D4
  hopwatch bench ingest      measure end-to-end ingest with OpenTelemetry's telemetrygen
  hopwatch bench stream      measure end-to-end streaming ingest with the Go client
  hopwatch bench quantile    measure exact window quantiles against Prometheus, and the sketch's error
  hopwatch bench alert       measure alert detection delay at a real Alertmanager
  hopwatch bench cluster     measure metadata write latency and leader failover on 3 loopback nodes
                             (--processes: three hopwatch serve processes, the leader SIGKILLed)
  hopwatch bench ratelimit   measure the global rate limit's accuracy on 3 nodes under skewed load
  hopwatch cluster status    members, leader and raft positions, from a node's HTTP API
  hopwatch cluster join      add a node to the cluster (--id, --raft-address, --grpc-address)
  hopwatch cluster remove ID take a member out of the cluster
  hopwatch cluster leave     the node at --url leaves the cluster
  hopwatch --version         print the version
`

// setup parses flags (and the config file) into a server configuration and
// builds the logger.
func setup(name string, args []string, cfg server.Config, stderr io.Writer) (server.Config, *slog.Logger, error) {
	fs := flag.NewFlagSet("hopwatch "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	lo := logOptions{level: "info", format: "logfmt"}
	var configFile string
	registerFlags(fs, &cfg, &lo, &configFile)
	if err := fs.Parse(args); err != nil {
		return cfg, nil, err
	}
	if fs.NArg() > 0 {
		return cfg, nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if configFile != "" {
		if err := applyConfigFile(fs, configFile); err != nil {
			return cfg, nil, fmt.Errorf("config file refused:\n%w", err)
		}
	}
	// --cluster.bootstrap defaults to true without --cluster.join only: a
	// node told where to join does not start a cluster of its own.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if !set["cluster.bootstrap"] && len(cfg.Cluster.Join) > 0 {
		if err := fs.Set("cluster.bootstrap", "false"); err != nil {
			return cfg, nil, err
		}
	}
	logger, err := newLogger(lo, stderr)
	if err != nil {
		return cfg, nil, err
	}
	cfg.ConfigYAML, cfg.Flags = effectiveConfig(fs)
	return cfg, logger, nil
}

func newLogger(lo logOptions, w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(lo.level)); err != nil {
		return nil, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", lo.level)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch lo.format {
	case "logfmt":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log.format: %q is not one of logfmt, json", lo.format)
	}
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg, logger, err := setup("serve", args, server.DefaultConfig(), stderr)
	if err != nil {
		return err
	}
	srv, err := server.New(cfg, nil, logger)
	if err != nil {
		return err
	}
	info := version.Get()
	logger.Info("starting hopwatch", "version", info.Version, "revision", info.Revision, "storage_path", cfg.Storage.Dir)
	return srv.Run(ctx)
}
