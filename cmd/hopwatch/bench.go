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
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/internal/bench"
)

// runBench runs `hopwatch bench <what>`.
func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "ingest":
			return runBenchIngest(args[1:], stdout, stderr)
		case "stream":
			return runBenchStream(args[1:], stdout, stderr)
		case "stream-load":
			return runBenchStreamLoad(args[1:], stdout, stderr)
		case "quantile":
			return runBenchQuantile(args[1:], stdout, stderr)
		case "alert":
			return runBenchAlert(args[1:], stdout, stderr)
		case "cluster":
			return runBenchCluster(args[1:], stdout, stderr)
		case "ratelimit":
			return runBenchRatelimit(args[1:], stdout, stderr)
		}
	}
	if len(args) == 0 || args[0] != "storage" {
		return errors.New("usage: hopwatch bench storage|ingest|stream|quantile|alert|cluster|ratelimit [flags]")
	}
	o := bench.DefaultStorageOptions()
	fs := flag.NewFlagSet("hopwatch bench storage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Samples, "samples", o.Samples, "samples per dataset")
	fs.IntVar(&o.ChunkSize, "chunk-size", o.ChunkSize, "samples per chunk")
	fs.IntVar(&o.Runs, "runs", o.Runs, "timing repetitions (the median is reported)")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "dataset seed")
	fs.Var(int32Value{&o.Schema}, "schema", "native histogram schema of the chunk summaries")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.Samples <= 0 || o.ChunkSize <= 0 || o.Runs <= 0 {
		return fmt.Errorf("samples, chunk-size and runs must be positive")
	}
	_, err := bench.Storage(stdout, o)
	return err
}

// runBenchIngest runs `hopwatch bench ingest`.
func runBenchIngest(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultIngestOptions()
	fs := flag.NewFlagSet("hopwatch bench ingest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Telemetrygen, "telemetrygen", o.Telemetrygen, "path of OpenTelemetry's telemetrygen (go install github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen@v0.161.0)")
	fs.Var(durationValue{&o.Duration}, "duration", "how long telemetrygen sends")
	fs.IntVar(&o.Workers, "workers", o.Workers, "telemetrygen workers")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "spans/s per worker; 0 sends as fast as possible")
	fs.IntVar(&o.BatchSize, "batch-size", o.BatchSize, "spans per export request")
	fs.BoolVar(&o.HTTP, "http", o.HTTP, "use OTLP/HTTP instead of OTLP/gRPC")
	fs.BoolVar(&o.Raw, "raw", o.Raw, "keep the raw tier on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, err := bench.Ingest(stdout, o)
	return err
}

// runBenchStream runs `hopwatch bench stream`: this binary's stream-load
// in a child process against a node in this one.
func runBenchStream(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultStreamOptions()
	fs := flag.NewFlagSet("hopwatch bench stream", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(durationValue{&o.Duration}, "duration", "how long the load sends")
	fs.IntVar(&o.Writers, "writers", o.Writers, "client streams in the load process")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "records/s per writer; 0 sends as fast as the client takes them")
	fs.IntVar(&o.BatchRecords, "batch-records", o.BatchRecords, "records per batch")
	fs.BoolVar(&o.Raw, "raw", o.Raw, "keep the raw tier on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	o.Loader = []string{exe, "bench", "stream-load"}
	_, err = bench.Stream(stdout, o)
	return err
}

// runBenchStreamLoad is the load process of `hopwatch bench stream`.
func runBenchStreamLoad(args []string, stdout, stderr io.Writer) error {
	var o bench.LoadOptions
	fs := flag.NewFlagSet("hopwatch bench stream-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Addr, "addr", "127.0.0.1:4317", "hopwatch's gRPC address")
	o.Duration = 10 * time.Second
	fs.Var(durationValue{&o.Duration}, "duration", "how long to send")
	fs.IntVar(&o.Writers, "writers", 4, "client streams")
	fs.Float64Var(&o.Rate, "rate", 0, "records/s per writer; 0 is unthrottled")
	fs.IntVar(&o.BatchRecords, "batch-records", 1000, "records per batch")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return bench.StreamLoad(context.Background(), stdout, o)
}

// runBenchQuantile runs `hopwatch bench quantile`.
func runBenchQuantile(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultQuantileOptions()
	fs := flag.NewFlagSet("hopwatch bench quantile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(durationValue{&o.Duration}, "duration", "data per dataset")
	fs.Var(intList{&o.Series}, "series", "comma-separated series counts D1 is dealt over in the speed part")
	fs.IntVar(&o.Runs, "runs", o.Runs, "timing repetitions (the median is reported)")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "dataset seed")
	fs.Var(durationValue{&o.FlushInterval}, "flush-interval", "flush interval of the sketch part's histograms")
	fs.Var(intList{&o.SketchSeries}, "sketch-series", "comma-separated series counts each sketch dataset is dealt over")
	fs.BoolVar(&o.Speed, "speed", o.Speed, "run the speed part (exact path against Prometheus)")
	fs.BoolVar(&o.Sketch, "sketch", o.Sketch, "run the sketch part (native histogram error)")
	fs.StringVar(&o.Dir, "dir", o.Dir, "where to put the stores (default: the system's temporary directory)")
	fs.StringVar(&o.CPUProfile, "cpuprofile", o.CPUProfile, "write a CPU profile of each speed case's queries to this path + .<series>")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	_, err := bench.Quantile(context.Background(), stdout, o, logger)
	return err
}

// runBenchAlert runs `hopwatch bench alert`.
func runBenchAlert(args []string, stdout, stderr io.Writer) error {
	o := bench.DefaultAlertOptions()
	fs := flag.NewFlagSet("hopwatch bench alert", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.Alertmanager, "alertmanager", o.Alertmanager, "path of the Alertmanager binary (Debian's prometheus-alertmanager)")
	fs.IntVar(&o.Runs, "runs", o.Runs, "steps measured, each with a fresh node and Alertmanager")
	fs.Float64Var(&o.Rate, "rate", o.Rate, "spans/s")
	fs.Var(durationValue{&o.BatchInterval}, "batch-interval", "one batch, acknowledged before the next, per interval")
	fs.Var(durationValue{&o.WarmUp}, "warm-up", "fast spans before the step")
	fs.Float64Var(&o.Sigma, "sigma", o.Sigma, "shape of the lognormal durations")
	fs.Var(durationValue{&o.Timeout}, "timeout", "wait for the alerts after the step")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "seed of the durations")
	if err := fs.Parse(args); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	_, err := bench.Alert(context.Background(), stdout, o, logger)
	return err
}

// intList is a comma-separated list of integers.
type intList struct{ p *[]int }

func (v intList) String() string {
	if v.p == nil {
		return ""
	}
	var b strings.Builder
	for i, n := range *v.p {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Itoa(n))
	}
	return b.String()
}

func (v intList) Set(s string) error {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			return fmt.Errorf("%q is not a comma-separated list of integers", s)
		}
		out = append(out, n)
	}
	*v.p = out
	return nil
}

// runBenchCluster runs `hopwatch bench cluster`: metadata write latency
// and leader failover on a 3-node loopback cluster with its raft logs on
// disk, its nodes in this process (cluster.Benchmark, stopped to fail over)
// or, with --processes, three hopwatch serve processes (killed with
// SIGKILL).
func runBenchCluster(args []string, stdout, stderr io.Writer) error {
	var o cluster.BenchmarkOptions
	var processes bool
	fs := flag.NewFlagSet("hopwatch bench cluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Writes, "writes", 1000, "writes timed on the leader and on a follower")
	fs.IntVar(&o.Kills, "kills", 10, "times the leader is stopped")
	fs.StringVar(&o.Dir, "dir", "", "where the nodes keep their raft logs (default: a temporary directory); with --processes, where their temporary data directories are made")
	fs.BoolVar(&processes, "processes", false, "run the nodes as three hopwatch serve processes of this binary, write through their HTTP API and kill the leader with SIGKILL")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if processes {
		if o.Writes <= 0 || o.Kills < 0 {
			return errors.New("with --processes, --writes must be positive and --kills at least 0")
		}
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		// The nodes get SIGINT from the terminal too; this context stops
		// the measuring, and the deferred kills reap them.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		po := procBenchOptions{Exe: exe, Env: os.Environ(), Dir: o.Dir, Writes: o.Writes, Kills: o.Kills, Stderr: stderr}
		res, err := benchClusterProcesses(ctx, po)
		if err != nil {
			return err
		}
		printProcBench(stdout, po, res)
		return nil
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	res, err := cluster.Benchmark(context.Background(), o)
	if err != nil {
		return err
	}
	ms := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds()*1e3, 'f', 2, 64) }
	fmt.Fprintf(stdout, "3 nodes on loopback, raft-wal on disk, %d writes per side, %d leader kills\n\n", o.Writes, len(res.Failovers))
	fmt.Fprintln(stdout, "| writes | n | p50 ms | p99 ms | max ms |")
	fmt.Fprintln(stdout, "|---|---|---|---|---|")
	for _, r := range []struct {
		name string
		l    cluster.Latency
	}{{"on the leader", res.Leader}, {"forwarded from a follower", res.Forwarded}} {
		fmt.Fprintf(stdout, "| %s | %d | %s | %s | %s |\n", r.name, r.l.N, ms(r.l.P50), ms(r.l.P99), ms(r.l.Max))
	}
	var kills []string
	for _, d := range res.Failovers {
		kills = append(kills, ms(d))
	}
	fmt.Fprintf(stdout, "\nleader failover (stop → a new leader applied a write made on another node): median %s ms; each kill: %s ms\n", ms(res.FailoverMedian), strings.Join(kills, ", "))
	return nil
}
