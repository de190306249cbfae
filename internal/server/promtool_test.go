package server_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/trace"
)

var (
	promtoolOnce sync.Once
	promtoolBin  string
	promtoolErr  error
)

// promtool returns the real promtool of the Prometheus version go.mod
// requires: $HOPWATCH_PROMTOOL (what scripts/test builds), or else built once
// into the user's cache directory.
func promtool(t *testing.T) string {
	t.Helper()
	promtoolOnce.Do(func() {
		if p := os.Getenv("HOPWATCH_PROMTOOL"); p != "" {
			promtoolBin = p
			return
		}
		dir, err := os.UserCacheDir()
		if err != nil {
			promtoolErr = err
			return
		}
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}}", "github.com/prometheus/prometheus").Output()
		if err != nil {
			promtoolErr = err
			return
		}
		promtoolBin = filepath.Join(dir, "hopwatch", "promtool-"+strings.TrimSpace(string(out)))
		if _, err := os.Stat(promtoolBin); err == nil {
			return
		}
		t.Logf("building %s (set HOPWATCH_PROMTOOL to skip this)", promtoolBin)
		cmd := exec.Command("go", "build", "-o", promtoolBin, "github.com/prometheus/prometheus/cmd/promtool")
		if out, err := cmd.CombinedOutput(); err != nil {
			promtoolErr = err
			t.Logf("%s", out)
		}
	})
	require.NoError(t, promtoolErr, "promtool unavailable")
	return promtoolBin
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, promtool(t), args...).CombinedOutput()
	require.NoError(t, err, "promtool %v: %s", args, out)
	return string(out)
}

func TestPromtoolQueriesHopwatch(t *testing.T) {
	_, addrs := startServer(t, nil)
	ctx := context.Background()
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addrs.OTLPGRPC), otlptracegrpc.WithInsecure())
	require.NoError(t, err)
	set := &spanSet{service: "frontend", name: "GET /", kind: trace.SpanKindServer,
		durations: []time.Duration{time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond, 5 * time.Millisecond, 8 * time.Millisecond}}
	emit(t, exp, []*spanSet{set})

	c := promClient(t, addrs.Web, "")
	waitFor(t, "spans counted", func() bool {
		v, ok := queryScalar(t, c, "sum(traces_spanmetrics_calls_total)")
		return ok && v == 5
	})

	url := "http://" + addrs.Web
	out := runPromtool(t, "query", "instant", url, "traces_spanmetrics_calls_total")
	// promtool prints: name{labels} => value @[timestamp]
	re := regexp.MustCompile(`traces_spanmetrics_calls_total\{(.*)\} => (\S+) @\[`)
	m := re.FindStringSubmatch(out)
	require.NotNil(t, m, "unexpected promtool output: %s", out)
	require.Contains(t, m[1], `service="frontend"`)
	require.Contains(t, m[1], `span_name="GET /"`)
	require.Contains(t, m[1], `span_kind="SPAN_KIND_SERVER"`)
	require.Contains(t, m[1], `status_code="STATUS_CODE_UNSET"`)
	v, err := strconv.ParseFloat(m[2], 64)
	require.NoError(t, err)
	require.Equal(t, 5.0, v)

	out = runPromtool(t, "query", "instant", url, `traces_spanmetrics_latency_sum{service="frontend"}`)
	require.Contains(t, out, "=> 0.019 @[", "1+2+3+5+8 ms")

	now := time.Now()
	out = runPromtool(t, "query", "range", "--start="+strconv.FormatInt(now.Add(-30*time.Second).Unix(), 10),
		"--end="+strconv.FormatInt(now.Add(time.Second).Unix(), 10), "--step=1s", url, `sum(traces_spanmetrics_latency_count)`)
	require.Contains(t, out, "5 @[", "range output: %s", out)

	out = runPromtool(t, "query", "labels", url, "span_kind")
	require.Equal(t, "SPAN_KIND_SERVER", strings.TrimSpace(out))
}
