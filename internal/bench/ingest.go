package bench

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/hopwatch/hopwatch/internal/server"
)

// IngestOptions configures the end-to-end ingest benchmark: OpenTelemetry's
// telemetrygen sending traces to a hopwatch node in this process.
type IngestOptions struct {
	Telemetrygen string        // path to the telemetrygen binary
	Duration     time.Duration // how long telemetrygen sends
	Workers      int           // telemetrygen workers
	Rate         float64       // spans/s per worker; 0 is unthrottled
	BatchSize    int           // spans per export
	HTTP         bool          // OTLP/HTTP instead of gRPC
	Raw          bool          // keep the raw tier on
}

// DefaultIngestOptions sends as fast as 4 workers can for 30 s over gRPC.
func DefaultIngestOptions() IngestOptions {
	return IngestOptions{Telemetrygen: "telemetrygen", Duration: 30 * time.Second, Workers: 4, BatchSize: 512, Raw: true}
}

// IngestResult is what one run measured.
type IngestResult struct {
	Spans          float64 // accepted
	Seconds        float64 // wall time telemetrygen ran
	ServerCPU      float64 // seconds of CPU this process used meanwhile
	GeneratorCPU   float64 // seconds of CPU telemetrygen used
	P50, P99       float64 // export handling time, seconds
	PeakRSS        float64 // bytes, this process
	Requests       float64
	RefusedSpans   float64
	RefusedRequest float64
}

// Ingest runs the benchmark and writes a Markdown table to w.
func Ingest(w io.Writer, o IngestOptions) (IngestResult, error) {
	var res IngestResult
	srv, reg, stop, err := startNode("ingest", o.Raw)
	if err != nil {
		return res, err
	}
	defer stop()
	endpoint := srv.Addrs().OTLPGRPC
	args := []string{"traces", "--otlp-insecure", "--duration", o.Duration.String(), "--workers", strconv.Itoa(o.Workers),
		"--rate", strconv.FormatFloat(o.Rate, 'f', -1, 64), "--batch-size", strconv.Itoa(o.BatchSize)}
	if o.HTTP {
		endpoint = srv.Addrs().OTLPHTTP
		args = append(args, "--otlp-http")
	}
	args = append(args, "--otlp-endpoint", endpoint)

	before := gather(reg)
	cpu0 := cpuSeconds()
	start := time.Now()
	cmd := exec.Command(o.Telemetrygen, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return res, fmt.Errorf("telemetrygen %s: %w\n%s", strings.Join(args, " "), err, out.String())
	}
	res.Seconds = time.Since(start).Seconds()
	res.ServerCPU = cpuSeconds() - cpu0
	res.GeneratorCPU = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	after := gather(reg)
	res.Spans = after.counter("hopwatch_otlp_spans_accepted_total") - before.counter("hopwatch_otlp_spans_accepted_total")
	res.Requests = after.counter("hopwatch_otlp_requests_total") - before.counter("hopwatch_otlp_requests_total")
	res.RefusedSpans = after.counter("hopwatch_otlp_spans_refused_total") - before.counter("hopwatch_otlp_spans_refused_total")
	res.RefusedRequest = after.counter("hopwatch_otlp_requests_refused_total") - before.counter("hopwatch_otlp_requests_refused_total")
	res.P50 = after.quantile("hopwatch_otlp_request_duration_seconds", 0.5)
	res.P99 = after.quantile("hopwatch_otlp_request_duration_seconds", 0.99)
	res.PeakRSS = peakRSS()
	if res.Spans == 0 {
		return res, errors.New("no spans were accepted; telemetrygen said:\n" + out.String())
	}

	proto := "gRPC"
	if o.HTTP {
		proto = "HTTP"
	}
	fmt.Fprintf(w, "telemetrygen %s, %d workers, rate %g/worker (0: unthrottled), batches of %d, %s, raw tier %v\n\n", proto, o.Workers, o.Rate, o.BatchSize, o.Duration, o.Raw)
	fmt.Fprintln(w, "| spans accepted/s | server CPU cores | server CPU µs/span | export p50 | export p99 | peak RSS | telemetrygen CPU cores | requests | refused spans |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|")
	fmt.Fprintf(w, "| %.0f | %.2f | %.2f | %.2f ms | %.2f ms | %.0f MiB | %.2f | %.0f | %.0f |\n",
		res.Spans/res.Seconds, res.ServerCPU/res.Seconds, res.ServerCPU/res.Spans*1e6, res.P50*1e3, res.P99*1e3,
		res.PeakRSS/(1<<20), res.GeneratorCPU/res.Seconds, res.Requests, res.RefusedSpans)
	return res, nil
}

// startNode runs a node on loopback ports with its data in a temporary
// directory, and waits until it is ready; stop shuts it down and removes
// the directory.
func startNode(name string, raw bool) (srv *server.Server, reg *prometheus.Registry, stop func(), err error) {
	return startConfiguredNode(name, slog.New(slog.DiscardHandler), func(c *server.Config) { c.RawEnabled = raw })
}

type families map[string]*dto.MetricFamily

func gather(reg *prometheus.Registry) families {
	mfs, _ := reg.Gather()
	out := families{}
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// counter sums a counter over all its label sets.
func (f families) counter(name string) float64 {
	var sum float64
	for _, m := range f[name].GetMetric() {
		sum += m.GetCounter().GetValue()
	}
	return sum
}

// quantile estimates q of a classic histogram summed over its label sets,
// interpolating linearly within the bucket, as histogram_quantile does.
func (f families) quantile(name string, q float64) float64 {
	type bucket struct{ upper, count float64 }
	var bs []bucket
	var total float64
	for _, m := range f[name].GetMetric() {
		h := m.GetHistogram()
		total += float64(h.GetSampleCount())
		for i, b := range h.GetBucket() {
			if i >= len(bs) {
				bs = append(bs, bucket{upper: b.GetUpperBound()})
			}
			bs[i].count += float64(b.GetCumulativeCount())
		}
	}
	if total == 0 {
		return math.NaN()
	}
	rank := q * total
	lower, prev := 0.0, 0.0
	for _, b := range bs {
		if b.count >= rank {
			return lower + (b.upper-lower)*(rank-prev)/math.Max(b.count-prev, 1)
		}
		lower, prev = b.upper, b.count
	}
	return math.Inf(1)
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

// peakRSS reads VmHWM, the peak resident set of this process.
func peakRSS() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return math.NaN()
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb * 1024
		}
	}
	return math.NaN()
}
