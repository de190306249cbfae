package server_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/storage/raw"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// TestRawSamplingKeepsAggregatesExact pins the raw tier at one trace in
// four, as overload would, and sends spans over OTLP: the span metrics
// count and sum every span, while the raw tier holds exactly the spans of
// the traces the level keeps, each weighing 4.
func TestRawSamplingKeepsAggregatesExact(t *testing.T) {
	const (
		n     = 1500 // below the SDK's span queue of 2048, which drops beyond it
		level = 2
	)
	reg := prometheus.NewRegistry()
	srv, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.Raw.ChunkSize = 100
		c.Raw.Exemplars = raw.ExemplarPolicy{All: true} // every kept trace id can be checked
	})
	server.PinRawSampling(srv, level)

	rng := rand.New(rand.NewPCG(8, 8))
	set := &spanSet{service: "checkout", name: "GET /cart", kind: trace.SpanKindServer, durations: lognormalDurations(rng, n, 20*time.Millisecond, 0.8)}
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure())
	require.NoError(t, err)
	emit(t, exp, []*spanSet{set})

	// The aggregates: every span.
	c := promClient(t, addrs.Web, "")
	waitFor(t, "all spans counted", func() bool {
		v, ok := queryScalar(t, c, "sum(traces_spanmetrics_calls_total)")
		return ok && v == n
	})
	count, ok := queryScalar(t, c, "traces_spanmetrics_latency_count"+set.selector())
	require.True(t, ok)
	require.Equal(t, float64(n), count)
	sum, ok := queryScalar(t, c, "traces_spanmetrics_latency_sum"+set.selector())
	require.True(t, ok)
	require.Equal(t, set.sumSeconds(), sum)

	// The raw tier: the sampled traces, weighted.
	want := map[trace.TraceID]bool{}
	for _, h := range set.traceIDs {
		id, err := trace.TraceIDFromHex(h)
		require.NoError(t, err)
		if raw.SampledIn(id, level) {
			want[id] = true
		}
	}
	bounds, err := nativehist.NewBounds(server.DefaultConfig().Raw.Schema)
	require.NoError(t, err)
	var (
		d        chunkenc.Decoder
		s        chunkenc.Samples
		kept     int
		weights  uint64
		exemplar int
	)
	res := server.RawStore(srv).DB("anonymous").Select(math.MinInt64, math.MaxInt64)
	require.Len(t, res, 1)
	for _, c := range res[0].Chunks {
		_, err := d.DecodeChunk(c, bounds, &s)
		require.NoError(t, err)
		kept += len(s.T)
		for _, w := range s.Weight {
			require.Equal(t, uint64(1)<<level, w)
			weights += w
		}
		for _, ex := range s.Exemplars {
			require.True(t, want[ex.TraceID], "trace %x is not one level %d keeps", ex.TraceID, level)
			exemplar++
		}
	}
	kept += len(res[0].Open.T)
	for _, w := range res[0].Open.Weight {
		require.Equal(t, uint64(1)<<level, w)
		weights += w
	}
	require.Positive(t, exemplar)
	require.Equal(t, len(want), kept, "exactly the spans of the kept traces")
	require.Equal(t, uint64(kept)<<level, weights, "every kept sample is weighted")
	// The weights estimate the span count: its standard deviation is
	// sqrt(n(1-p)/p).
	require.InDelta(t, n, float64(weights), 5*math.Sqrt(n*0.75*4))

	tenant := map[string]string{"tenant": "anonymous"}
	require.Equal(t, float64(kept), counter(t, reg, "hopwatch_raw_samples_appended_total", tenant))
	require.Equal(t, float64(n-kept), counter(t, reg, "hopwatch_raw_samples_sampled_out_total", tenant))
	require.Equal(t, 0.25, counter(t, reg, "hopwatch_raw_sampling_probability", nil))
}

func TestRawSamplingConfigIsValidated(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.RawSampling.MaxCPU = 2
	cfg.RawSampling.MaxLevel = raw.MaxSamplingLevel + 1
	_, err := server.New(cfg, nil, nil)
	require.ErrorContains(t, err, "storage.raw.sampling: MaxCPU 2 outside (0, 1]")
	require.ErrorContains(t, err, "storage.raw.sampling: MaxLevel 21 above the raw tier's 20")

	cfg.RawSamplingEnabled = false
	_, err = server.New(cfg, nil, nil)
	require.NoError(t, err, "settings of sampling that is off are not checked")
}
