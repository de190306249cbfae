package query

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw"
)

// rawFixture is a raw tier on disk with random spans of three series over
// ten minutes from t0, cut into small chunks so that queries read encoded
// chunks, overlapping chunks and open samples.
func rawFixture(t testing.TB, seed uint64) (*raw.DB, time.Time) {
	t.Helper()
	opts := raw.DefaultOptions()
	opts.Dir = t.TempDir()
	opts.ChunkSize = 97
	db, err := raw.Open(opts, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })

	t0 := time.Unix(1_700_000_000, 0)
	rng := rand.New(rand.NewPCG(seed, 1))
	services := []string{"api", "db", "queue"}
	b := &sample.Batch{}
	for _, svc := range services {
		b.Series = append(b.Series, sample.Series{
			Family: sample.FamilySpan,
			Key:    svc,
			Labels: labels.FromStrings("service", svc, "span_name", "op", "span_kind", "SPAN_KIND_SERVER", "status_code", "STATUS_CODE_UNSET"),
		})
	}
	for range 40 {
		b.Samples = b.Samples[:0]
		for range 100 {
			// Ten minutes of spans, a batch spread over all of it, so
			// series receive samples out of order.
			start := t0.UnixNano() + rng.Int64N(int64(10*time.Minute))
			if rng.IntN(10) == 0 {
				start -= start % int64(time.Millisecond) // several spans in one ms
			}
			b.Samples = append(b.Samples, sample.Sample{
				Series:   uint32(rng.IntN(len(services))),
				Start:    start,
				Duration: int64(rng.ExpFloat64() * float64(5*time.Millisecond)),
				TraceID:  traceID(rng),
			})
		}
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	return db, t0
}

// apiPair serves the same raw tier through two APIs, one with the exact
// path and one that leaves every query to Prometheus's engine.
func apiPair(t *testing.T, db *raw.DB) (fast, engine *httptest.Server, reg *prometheus.Registry) {
	t.Helper()
	rawSrc := RawStorageFunc(func(string) RawQueryable { return db })
	noAgg := StorageFunc(func(string) Queryable { return nil })
	ready := func() bool { return true }
	reg = prometheus.NewRegistry()
	opts := DefaultOptions()
	fa, err := New(opts, noAgg, rawSrc, ready, reg, nil)
	require.NoError(t, err)
	opts.DisableExactPath = true
	ea, err := New(opts, noAgg, rawSrc, ready, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	fast, engine = httptest.NewServer(fa.Handler()), httptest.NewServer(ea.Handler())
	t.Cleanup(fast.Close)
	t.Cleanup(engine.Close)
	return fast, engine, reg
}

func getJSON(t *testing.T, base, path string, params url.Values) map[string]any {
	t.Helper()
	resp, err := http.Get(base + path + "?" + params.Encode())
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	var out map[string]any
	require.NoError(t, json.Unmarshal(body, &out))
	return out
}

func TestExactPathMatchesEngine(t *testing.T) {
	db, t0 := rawFixture(t, 1)
	fast, engine, reg := apiPair(t, db)
	start := float64(t0.Unix())
	queries := []string{
		`quantile_over_time(0.99, hopwatch_latency_raw_seconds[1m])`,
		`quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="api"}[45s])`,
		`quantile_over_time(0, hopwatch_latency_raw_seconds[7s])`,
		`quantile_over_time(1, {__name__="hopwatch_latency_raw_seconds", service=~"db|queue"}[90s])`,
		`quantile_over_time(0.9, hopwatch_latency_raw_seconds[1m] offset 30s)`,
		`max by (span_name) (quantile_over_time(0.9, hopwatch_latency_raw_seconds[2m])) * 1000`,
		`quantile_over_time(0.5, hopwatch_latency_raw_seconds[30s]) > bool quantile_over_time((0.25), hopwatch_latency_raw_seconds[1m])`,
	}
	for _, q := range queries {
		for _, step := range []string{"10", "7.5", "61"} {
			params := url.Values{"query": {q}, "start": {fmt.Sprint(start - 60)}, "end": {fmt.Sprint(start + 11*60)}, "step": {step}}
			want := getJSON(t, engine.URL, "/api/v1/query_range", params)
			got := getJSON(t, fast.URL, "/api/v1/query_range", params)
			require.NotEmpty(t, want["data"].(map[string]any)["result"], q)
			require.Equal(t, want["data"].(map[string]any)["result"], got["data"].(map[string]any)["result"], "%s step %s", q, step)
		}
		params := url.Values{"query": {q}, "time": {strconv.FormatFloat(start+300.5, 'f', 3, 64)}}
		want := getJSON(t, engine.URL, "/api/v1/query", params)
		got := getJSON(t, fast.URL, "/api/v1/query", params)
		require.Equal(t, want["data"], got["data"], q)
	}
	// Every query above went through the exact path on the fast API.
	require.Equal(t, float64(4*len(queries)), counterValue(t, reg, "hopwatch_query_exact_path_total"))
}

// TestExactPathTakesCountsSubqueriesAndAt: count_over_time, calls inside
// subqueries and calls with @ take the exact path too, and agree with the
// engine (on data without several samples in the millisecond a window
// ends on; TestEveryPathSeesEverySampleOfAMillisecond has those); a
// quantile outside [0, 1] is left to the engine.
func TestExactPathTakesCountsSubqueriesAndAt(t *testing.T) {
	db, t0 := rawFixture(t, 2)
	fast, engine, reg := apiPair(t, db)
	start := float64(t0.Unix())
	for _, q := range []string{
		`count_over_time(hopwatch_latency_raw_seconds[1m])`,
		`max_over_time(quantile_over_time(0.9, hopwatch_latency_raw_seconds[1m])[5m:1m])`, // subquery
		`quantile_over_time(0.9, hopwatch_latency_raw_seconds[1m] @ ` + fmt.Sprint(start+120) + `)`,
		`sum_over_time(count_over_time(hopwatch_latency_raw_seconds[45s] offset 10s)[3m:])`,
		`quantile_over_time(2, hopwatch_latency_raw_seconds[1m])`, // the engine warns
	} {
		params := url.Values{"query": {q}, "start": {fmt.Sprint(start)}, "end": {fmt.Sprint(start + 600)}, "step": {"30"}}
		want := getJSON(t, engine.URL, "/api/v1/query_range", params)
		got := getJSON(t, fast.URL, "/api/v1/query_range", params)
		require.Equal(t, want, got, q)
		params = url.Values{"query": {q}, "time": {fmt.Sprint(start + 300)}}
		require.Equal(t, getJSON(t, engine.URL, "/api/v1/query", params), getJSON(t, fast.URL, "/api/v1/query", params), q)
	}
	require.Equal(t, 8.0, counterValue(t, reg, "hopwatch_query_exact_path_total"))
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("metric %s not registered", name)
	return 0
}

// getStatus GETs u, requires the status, and returns the body.
func getStatus(t *testing.T, u string, status int) string {
	t.Helper()
	resp, err := http.Get(u)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, status, resp.StatusCode, string(body))
	return string(body)
}

func TestRawExemplars(t *testing.T) {
	db, t0 := rawFixture(t, 7)
	fast, _, _ := apiPair(t, db)
	res := getJSON(t, fast.URL, "/api/v1/query_exemplars", url.Values{
		"query": {`hopwatch_latency_raw_seconds{service="api"}`},
		"start": {fmt.Sprint(t0.Unix())}, "end": {fmt.Sprint(t0.Unix() + 600)},
	})["data"].([]any)
	require.Len(t, res, 1)
	series := res[0].(map[string]any)
	require.Equal(t, "api", series["seriesLabels"].(map[string]any)["service"])
	exs := series["exemplars"].([]any)
	// Every chunk keeps its 8 slowest samples and 4 at random.
	require.GreaterOrEqual(t, len(exs), 8)
	for _, e := range exs {
		e := e.(map[string]any)
		require.Len(t, e["labels"].(map[string]any)["trace_id"], 32)
	}
}

func traceID(rng *rand.Rand) (id [16]byte) {
	for i := range id {
		id[i] = byte(rng.Uint32())
	}
	return id
}
