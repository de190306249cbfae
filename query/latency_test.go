package query

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	rawenc "github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

func TestLatencyMatchesPromQLPerSeries(t *testing.T) {
	db, t0 := rawFixture(t, 3)
	fast, _, _ := apiPair(t, db)
	start, end := float64(t0.Unix()-30), float64(t0.Unix()+630)
	qs := []string{"0.5", "0.9", "0.99"}
	lat := getJSON(t, fast.URL, "/api/v1/latency", url.Values{
		"match[]": {`{service=~"api|db"}`}, "quantile": qs, "window": {"1m"},
		"start": {fmt.Sprint(start)}, "end": {fmt.Sprint(end)}, "step": {"15"},
	})["data"].(map[string]any)
	require.Equal(t, 60.0, lat["window"])
	results := lat["result"].([]any)
	require.Len(t, results, 2)
	for j, q := range qs {
		prom := getJSON(t, fast.URL, "/api/v1/query_range", url.Values{
			"query": {`quantile_over_time(` + q + `, hopwatch_latency_raw_seconds{service=~"api|db"}[1m])`},
			"start": {fmt.Sprint(start)}, "end": {fmt.Sprint(end)}, "step": {"15"},
		})["data"].(map[string]any)["result"].([]any)
		require.Len(t, prom, 2)
		for i := range prom {
			pv := prom[i].(map[string]any)["values"].([]any)
			lv := results[i].(map[string]any)["values"].([]any)
			require.Equal(t, prom[i].(map[string]any)["metric"], results[i].(map[string]any)["metric"])
			require.Len(t, lv, len(pv))
			for k := range pv {
				p, l := pv[k].([]any), lv[k].([]any)
				require.Equal(t, p[0], l[0])
				want, _ := strconv.ParseFloat(p[1].(string), 64)
				got, _ := strconv.ParseFloat(l[1].([]any)[j].(string), 64)
				require.Equal(t, want, got, "q %s step %v", q, p[0])
			}
		}
	}
}

func TestLatencyGroupsMergeSamples(t *testing.T) {
	db, t0 := rawFixture(t, 4)
	fast, _, _ := apiPair(t, db)
	at := t0.Unix() + 200
	res := getJSON(t, fast.URL, "/api/v1/latency", url.Values{
		"match[]": {`hopwatch_latency_raw_seconds`}, "quantile": {"0.25,0.75"}, "window": {"2m"},
		"time": {fmt.Sprint(at)}, "by": {"span_name"},
	})["data"].(map[string]any)["result"].([]any)
	require.Len(t, res, 1)
	require.Equal(t, map[string]any{"span_name": "op"}, res[0].(map[string]any)["metric"])
	v := res[0].(map[string]any)["values"].([]any)[0].([]any)

	// Brute force: every sample of every series in (at−2m, at], as PromQL
	// sees the window (ms resolution).
	hi := (at*1000+1)*1_000_000 - 1
	lo := hi - 120*1_000_000_000
	var vals []float64
	var buf rawenc.Samples
	var d rawenc.Decoder
	for _, sr := range db.Select(lo+1, hi, labels.MustNewMatcher(labels.MatchRegexp, "service", ".+")) {
		for _, c := range sr.Chunks {
			_, err := d.DecodeValues(c, db.Bounds(), &buf)
			require.NoError(t, err)
			for k, ts := range buf.T {
				if ts > lo && ts <= hi {
					vals = append(vals, float64(buf.Latency[k])/1e9)
				}
			}
		}
		for k, ts := range sr.Open.T {
			if ts > lo && ts <= hi {
				vals = append(vals, float64(sr.Open.Latency[k])/1e9)
			}
		}
	}
	slices.Sort(vals)
	require.Equal(t, strconv.Itoa(len(vals)), v[2])
	for j, q := range []float64{0.25, 0.75} {
		got, _ := strconv.ParseFloat(v[1].([]any)[j].(string), 64)
		require.Equal(t, bruteQuantile(q, vals), got)
	}
}

func bruteQuantile(q float64, sorted []float64) float64 {
	n := float64(len(sorted))
	rank := q * (n - 1)
	lo := math.Max(0, math.Floor(rank))
	hi := math.Min(n-1, lo+1)
	w := rank - math.Floor(rank)
	if w == 0 {
		return sorted[int(lo)]
	}
	return sorted[int(lo)]*(1-w) + sorted[int(hi)]*w
}

func TestLatencyBadRequests(t *testing.T) {
	db, _ := rawFixture(t, 5)
	fast, _, _ := apiPair(t, db)
	for _, tc := range []struct {
		params url.Values
		msg    string
	}{
		{url.Values{}, "no match[]"},
		{url.Values{"match[]": {`{service=`}}, "invalid match[]"},
		{url.Values{"match[]": {`traces_spanmetrics_calls_total`}}, "selects no raw-tier series"},
		{url.Values{"match[]": {`{service="a"}`}, "quantile": {"1.5"}}, "invalid quantile"},
		{url.Values{"match[]": {`{service="a"}`}, "window": {"0s"}}, "invalid window"},
		{url.Values{"match[]": {`{service="a"}`}, "by": {"a"}, "without": {"b"}}, "not both"},
		{url.Values{"match[]": {`{service="a"}`}, "start": {"10"}, "end": {"5"}, "step": {"1"}}, "before start"},
		{url.Values{"match[]": {`{service="a"}`}, "start": {"0"}, "end": {"100000"}, "step": {"1"}}, "11,000 points"},
		{url.Values{"match[]": {`{service="a"}`}, "quantile": {strings.TrimSuffix(strings.Repeat("0.5,", 101), ",")}}, "101 quantiles asked, over the limit of 100"},
	} {
		body := getStatus(t, fast.URL+"/api/v1/latency?"+tc.params.Encode(), 400)
		require.Contains(t, body, tc.msg)
		require.Contains(t, body, `"errorType":"bad_data"`)
	}
}
