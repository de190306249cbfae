package query

import (
	"encoding/json"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
)

// The fuzz targets of the HTTP API's parameters. `go test` runs each over
// its seeds; `go test -fuzz FuzzX -run '^$' ./query/` explores further.
// Every request must be answered with a Prometheus envelope and a status
// that is not 500 (a panic recovered by the API answers 500), whatever its
// parameters.

// FuzzParseTime: any text is a time or an error, never a panic, and a
// number of seconds is that time to the millisecond.
func FuzzParseTime(f *testing.F) {
	for _, s := range []string{"0", "1700000000", "1700000000.123", "-1.5", "1e300", "NaN", "+Inf", "-Inf",
		"2026-11-23T10:00:00Z", "2026-11-23T10:00:00.123456789+02:00", "9999-12-31T23:59:59Z", "", "abc", "0x10", "1_000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := parseTime(s)
		if err != nil {
			return
		}
		if v, perr := strconv.ParseFloat(s, 64); perr == nil && math.Abs(v) < 1e11 {
			require.InDelta(t, math.Round(v*1000), float64(ts.UnixMilli()), 1, s)
		}
	})
}

// FuzzParseDuration: any text is a duration or an error, never a panic;
// a number of seconds is that duration.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"1", "0.5", "-1", "1e300", "NaN", "Inf", "1m", "1h30m", "10y", "0s", "5", "1ms", "", "m", "1.5m", "9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := parseDuration(s)
		if err != nil {
			return
		}
		if v, perr := strconv.ParseFloat(s, 64); perr == nil && math.Abs(v) < 1e9 {
			require.InDelta(t, v*1e9, float64(d), 1e-6*math.Abs(v*1e9)+1, s)
		}
	})
}

// fuzzAPI serves a small raw tier through the API with short limits, so
// that fuzzed queries finish fast.
func fuzzAPI(f *testing.F) string {
	f.Helper()
	db, _ := rawFixture(f, 9)
	opts := DefaultOptions()
	opts.Timeout = 2 * time.Second
	opts.MaxSamples = 100_000
	opts.MaxSubquerySteps = 10_000
	a, err := New(opts, StorageFunc(func(string) Queryable { return nil }), RawStorageFunc(func(string) RawQueryable { return db }),
		func() bool { return true }, prometheus.NewRegistry(), nil)
	if err != nil {
		f.Fatal(err)
	}
	srv := httptest.NewServer(a.Handler())
	f.Cleanup(srv.Close)
	return srv.URL
}

// answered requires an answer in the Prometheus envelope, with a body,
// and no internal error.
func answered(t *testing.T, method, u string, form url.Values) {
	t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodPost {
		resp, err = http.PostForm(u, form)
	} else {
		resp, err = http.Get(u + "?" + form.Encode())
	}
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NotEqual(t, http.StatusInternalServerError, resp.StatusCode, "%s %v: %s", u, form, body)
	require.NotEmpty(t, body)
	if resp.StatusCode != http.StatusOK {
		var env envelope
		require.NoError(t, json.Unmarshal(body, &env), "%s %v: %s", u, form, body)
		require.Equal(t, "error", env.Status)
		require.NotEmpty(t, env.Error)
	}
}

// FuzzQueryParams: /api/v1/query and /api/v1/query_range with any query,
// time, start, end and step.
func FuzzQueryParams(f *testing.F) {
	base := fuzzAPI(f)
	t0 := "1700000000"
	for _, s := range [][5]string{
		{`quantile_over_time(0.9, hopwatch_latency_raw_seconds[1m])`, "1700000300", t0, "1700000600", "10"},
		{`count_over_time(hopwatch_latency_raw_seconds[1m])`, "", t0, "1700000600", "1m"},
		{`max_over_time(sum(hopwatch_latency_raw_seconds)[2m:])`, "1700000300", t0, t0, "0.001"},
		{`sum_over_time(vector(1)[365d:1ms])`, "1e300", "-1e300", "1e300", "1e-300"},
		{`absent(quantile_over_time(0.5, hopwatch_latency_raw_seconds{service="x"}[1m] @ 1700000300))`, "NaN", "Inf", "-Inf", "-1"},
		{`quantile_over_time(0.5, hopwatch_latency_raw_seconds[1m] offset -1y)`, "9999999999", "0", "9223372036854775807", "9223372036854775807"},
		{`((((1))))`, "2026-11-23T10:00:00Z", "2026-11-23T10:00:00Z", "2026-11-23T09:00:00Z", "1h"},
		{`{__hopwatch_ref__="0"}`, "", "", "", ""},
		{`hopwatch_latency_raw_seconds{service=~"(a+)+$"}`, t0, t0, "1700000001", "0.0001"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4])
	}
	f.Fuzz(func(t *testing.T, q, at, start, end, step string) {
		answered(t, http.MethodGet, base+"/api/v1/query", url.Values{"query": {q}, "time": {at}})
		answered(t, http.MethodPost, base+"/api/v1/query_range", url.Values{"query": {q}, "start": {start}, "end": {end}, "step": {step}})
	})
}

// FuzzLatencyParams: /api/v1/latency with any selector, quantiles, window,
// range, time and grouping.
func FuzzLatencyParams(f *testing.F) {
	base := fuzzAPI(f)
	for _, s := range [][9]string{
		{`{service="api"}`, "0.5,0.9,0.99", "1m", "1700000000", "1700000600", "10", "", "service", ""},
		{`hopwatch_latency_raw_seconds`, "", "", "", "", "", "1700000300", "", "span_name"},
		{`{}`, "2", "1ms", "-1e300", "1e300", "1e-300", "", "", ""},
		{`up`, "NaN", "-1m", "1700000000", "1700000000", "0", "Inf", "a,b", "c"},
		{`{service=~".*"}`, "0,1", "365d", "0", "9223372036854775807", "1ms", "", ",,,", ""},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8])
	}
	f.Fuzz(func(t *testing.T, match, quantile, window, start, end, step, at, by, without string) {
		form := url.Values{"match[]": {match}}
		for k, v := range map[string]string{"quantile": quantile, "window": window, "start": start, "end": end, "step": step, "time": at} {
			if v != "" {
				form.Set(k, v)
			}
		}
		if by != "" {
			form.Set("by", by)
		}
		if without != "" {
			form.Set("without", without)
		}
		answered(t, http.MethodGet, base+"/api/v1/latency", form)
	})
}

// FuzzSelectorParams: the endpoints that take match[] selectors, a time
// range and a limit: series, labels, label values, exemplars, metadata.
func FuzzSelectorParams(f *testing.F) {
	base := fuzzAPI(f)
	for _, s := range [][6]string{
		{`{service="api"}`, `hopwatch_latency_raw_seconds`, "1700000000", "1700000600", "10", "service"},
		{`{__name__=~".+"}`, `{__hopwatch_ref__="0"}`, "", "", "-1", "__name__"},
		{`{a=~"(((((((((a*)*)*)*)*)*)*)*)*)"}`, `{}`, "1e300", "-1e300", "9223372036854775808", "__hopwatch_ref__"},
		{`up{`, `{x!~""}`, "NaN", "Inf", "abc", "a%2Fb"},
	} {
		f.Add(s[0], s[1], s[2], s[3], s[4], s[5])
	}
	f.Fuzz(func(t *testing.T, m1, m2, start, end, limit, name string) {
		form := url.Values{"match[]": {m1, m2}, "start": {start}, "end": {end}, "limit": {limit}}
		answered(t, http.MethodGet, base+"/api/v1/series", form)
		answered(t, http.MethodPost, base+"/api/v1/labels", form)
		if name != "" { // an empty name is another path, which the router answers 404
			answered(t, http.MethodGet, base+"/api/v1/label/"+url.PathEscape(name)+"/values", form)
		}
		answered(t, http.MethodGet, base+"/api/v1/query_exemplars", url.Values{"query": {m1}, "start": {start}, "end": {end}})
		answered(t, http.MethodGet, base+"/api/v1/metadata", url.Values{"metric": {name}, "limit": {limit}})
		answered(t, http.MethodGet, base+"/api/v1/format_query", url.Values{"query": {m2}})
		answered(t, http.MethodGet, base+"/api/v1/parse_query", url.Values{"query": {strings.TrimSpace(m1)}})
	})
}
