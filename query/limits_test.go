package query

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/storage/raw"
)

func limitedAPI(t *testing.T, db *raw.DB, set func(*Options)) (*API, *httptest.Server, *prometheus.Registry) {
	t.Helper()
	opts := DefaultOptions()
	set(&opts)
	reg := prometheus.NewRegistry()
	a, err := New(opts, StorageFunc(func(string) Queryable { return nil }), RawStorageFunc(func(string) RawQueryable { return db }),
		func() bool { return true }, reg, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(srv.Close)
	return a, srv, reg
}

func refusedCount(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_query_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestQueryLimits(t *testing.T) {
	db, t0 := rawFixture(t, 6)
	rangeParams := func(q string) url.Values {
		return url.Values{"query": {q}, "start": {fmt.Sprint(t0.Unix())}, "end": {fmt.Sprint(t0.Unix() + 600)}, "step": {"10"}}
	}
	exact := `quantile_over_time(0.9, hopwatch_latency_raw_seconds[1m])`
	engine := `count_over_time(hopwatch_latency_raw_seconds[1m])`

	t.Run("max series", func(t *testing.T) {
		_, srv, reg := limitedAPI(t, db, func(o *Options) { o.MaxSeries = 2 })
		for _, q := range []string{exact, engine} {
			body := getStatus(t, srv.URL+"/api/v1/query_range?"+rangeParams(q).Encode(), http.StatusUnprocessableEntity)
			require.Contains(t, body, "max number of series limit (limit: 2 series)")
			require.Contains(t, body, `"errorType":"execution"`)
		}
		body := getStatus(t, srv.URL+"/api/v1/latency?"+url.Values{"match[]": {"{}"}, "time": {fmt.Sprint(t0.Unix() + 60)}}.Encode(), http.StatusUnprocessableEntity)
		require.Contains(t, body, "--query.max-series")
		require.Equal(t, 3.0, refusedCount(t, reg, reasonSeries))
		// Within the limit the same query runs.
		getStatus(t, srv.URL+"/api/v1/query_range?"+rangeParams(`quantile_over_time(0.9, hopwatch_latency_raw_seconds{service="api"}[1m])`).Encode(), http.StatusOK)
	})
	t.Run("max length", func(t *testing.T) {
		_, srv, reg := limitedAPI(t, db, func(o *Options) { o.MaxLength = 5 * time.Minute })
		for _, path := range []string{"/api/v1/query_range?" + rangeParams(exact).Encode(),
			"/api/v1/latency?" + url.Values{"match[]": {"{}"}, "start": {"0"}, "end": {"600"}, "step": {"60"}}.Encode()} {
			body := getStatus(t, srv.URL+path, http.StatusBadRequest)
			require.Contains(t, body, "the query time range exceeds the limit (query length: 10m0s, limit: 5m0s)")
		}
		require.Equal(t, 2.0, refusedCount(t, reg, reasonLength))
	})
	t.Run("max samples", func(t *testing.T) {
		_, srv, reg := limitedAPI(t, db, func(o *Options) { o.MaxSamples = 100 })
		body := getStatus(t, srv.URL+"/api/v1/query_range?"+rangeParams(exact).Encode(), http.StatusUnprocessableEntity)
		require.Contains(t, body, "too many samples")
		require.Equal(t, 1.0, refusedCount(t, reg, reasonSamples))
		body = getStatus(t, srv.URL+"/api/v1/query_range?"+rangeParams(engine).Encode(), http.StatusUnprocessableEntity)
		require.Contains(t, body, "too many samples")
		require.Equal(t, 2.0, refusedCount(t, reg, reasonSamples))
	})
	t.Run("timeout", func(t *testing.T) {
		_, srv, reg := limitedAPI(t, db, func(o *Options) { o.Timeout = time.Nanosecond })
		body := getStatus(t, srv.URL+"/api/v1/query_range?"+rangeParams(exact).Encode(), http.StatusServiceUnavailable)
		require.Contains(t, body, `"errorType":"timeout"`)
		require.Equal(t, 1.0, refusedCount(t, reg, reasonTimeout))
	})
	t.Run("max concurrency", func(t *testing.T) {
		a, srv, reg := limitedAPI(t, db, func(o *Options) { o.MaxConcurrent = 1 })
		release, err := a.limits.acquire(context.Background())
		require.NoError(t, err)
		// The only slot is taken: a request queues until it gives up.
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/api/v1/query_range?"+rangeParams(exact).Encode(), nil)
		require.NoError(t, err)
		_, err = http.DefaultClient.Do(req)
		require.Error(t, err)
		require.Eventually(t, func() bool { return refusedCount(t, reg, reasonConcurrency) == 1 }, 5*time.Second, 10*time.Millisecond)
		release()
		getStatus(t, srv.URL+"/api/v1/query_range?"+rangeParams(exact).Encode(), http.StatusOK)
	})
}
