package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/hopwatch/hopwatch/ratelimit"
)

// runBenchRatelimit runs `hopwatch bench ratelimit`: the global accuracy of
// the rate limits on three nodes in this process, each with its own
// limiter, exchange and gRPC server on 127.0.0.1, under skewed load, beside
// the even split (ratelimit.Simulate; docs/ratelimit.md). With --processes
// the three nodes are processes of this binary (`hopwatch bench ratelimit
// node`, hidden) and the run has the first two phases.
func runBenchRatelimit(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "node" {
		return runBenchRatelimitNode(args[1:], stdout, stderr)
	}
	var o ratelimit.SimulateOptions
	var processes bool
	fs := flag.NewFlagSet("hopwatch bench ratelimit", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Float64Var(&o.Limit.Rate, "limit", 10000, "the tenant's cluster-wide limit, units/s")
	fs.Int64Var(&o.Limit.Burst, "burst", 0, "the tenant's cluster-wide burst, units (0: one second of --limit)")
	fs.Float64Var(&o.Overload, "overload", 2, "offered load as a multiple of --limit")
	fs.Int64Var(&o.Batch, "batch", 100, "units per decision")
	fs.Var(durationValue{&o.Phase}, "phase", "length of each of the four phases (70/20/10, 10/20/70, a fourth node joins, it leaves)")
	fs.Var(durationValue{&o.Interval}, "interval", "exchange interval")
	fs.IntVar(&o.Tenants, "tenants", 10000, "tenant IDs over which owner moves are counted")
	fs.BoolVar(&processes, "processes", false, "run the three nodes as processes of this binary; the run has the two load phases, no ring change")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.Limit.Rate <= 0 || o.Limit.Burst < 0 || o.Overload <= 0 || o.Batch <= 0 || o.Tenants <= 0 || o.Phase < 0 || o.Interval < 0 {
		return errors.New("limit, overload, batch and tenants must be positive; burst, phase and interval at least 0")
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if processes {
		return benchRatelimitProcesses(ctx, o, stdout, stderr)
	}
	res, err := ratelimit.Simulate(ctx, o)
	if err != nil {
		return err
	}
	return res.Print(stdout)
}
