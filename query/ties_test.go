package query

import (
	"fmt"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw"
)

// TestEveryPathSeesEverySampleOfAMillisecond: several spans of a series in
// one millisecond (the same nanosecond, or the same millisecond), on the
// millisecond a window ends on, all count, on the query's steps, in
// subqueries and with @ (Prometheus's engine keeps one of them there: its
// iterators assume distinct timestamps, so count_over_time undercounted).
func TestEveryPathSeesEverySampleOfAMillisecond(t *testing.T) {
	opts := raw.DefaultOptions()
	opts.Dir = t.TempDir()
	opts.ChunkSize = 50
	db, err := raw.Open(opts, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	b := &sample.Batch{Series: []sample.Series{{Family: sample.FamilySpan, Key: "api",
		Labels: labels.FromStrings("service", "api", "span_name", "op", "span_kind", "SPAN_KIND_SERVER", "status_code", "STATUS_CODE_UNSET")}}}
	type span struct{ ns, dur int64 }
	var spans []span
	for s := int64(0); s < 120; s++ {
		at := t0 + s*int64(time.Second)
		// On every second, where windows end: two spans in the same ns
		// and one later in the same ms, the slowest of their window;
		// and one in between.
		for _, sp := range []span{{at, 900 + s}, {at, 800 + s}, {at + 500_000, 700 + s}, {at + 300*int64(time.Millisecond), 10}} {
			spans = append(spans, sp)
			b.Samples = append(b.Samples, sample.Sample{Series: 0, Start: sp.ns, Duration: sp.dur * int64(time.Microsecond)})
		}
	}
	_, err = db.Append(b)
	require.NoError(t, err)

	// count and max of the spans whose millisecond is in (t−r, t].
	brute := func(tms, rms int64) (int, float64) {
		n, mx := 0, 0.0
		for _, sp := range spans {
			if ms := sp.ns / 1e6; ms > tms-rms && ms <= tms {
				n++
				mx = max(mx, float64(sp.dur)/1e6)
			}
		}
		return n, mx
	}
	fast, _, _ := apiPair(t, db)
	start := t0/1e6 + 20_000
	end := start + 60_000
	value := func(v any) float64 {
		f, err := strconv.ParseFloat(v.([]any)[1].(string), 64)
		require.NoError(t, err)
		return f
	}
	rangeValues := func(q string) map[int64]float64 {
		res := getJSON(t, fast.URL, "/api/v1/query_range", url.Values{"query": {q}, "start": {fmt.Sprint(start / 1e3)}, "end": {fmt.Sprint(end / 1e3)}, "step": {"10"}})
		out := map[int64]float64{}
		for _, s := range res["data"].(map[string]any)["result"].([]any) {
			for _, v := range s.(map[string]any)["values"].([]any) {
				out[int64(v.([]any)[0].(float64)*1e3)] = value(v)
			}
		}
		return out
	}
	instant := func(q string, tms int64) float64 {
		res := getJSON(t, fast.URL, "/api/v1/query", url.Values{"query": {q}, "time": {fmt.Sprint(float64(tms) / 1e3)}})
		r := res["data"].(map[string]any)["result"].([]any)
		require.Len(t, r, 1, q)
		return value(r[0].(map[string]any)["value"])
	}

	counts := rangeValues(`count_over_time(hopwatch_latency_raw_seconds[10s])`)
	maxes := rangeValues(`quantile_over_time(1, hopwatch_latency_raw_seconds[10s])`)
	maxOverTime := rangeValues(`max_over_time(hopwatch_latency_raw_seconds[10s])`)
	require.Len(t, counts, 7)
	for tms := start; tms <= end; tms += 10_000 {
		n, mx := brute(tms, 10_000)
		require.Equal(t, float64(n), counts[tms], "count at %d", tms)
		require.Equal(t, mx, maxes[tms], "max at %d", tms)
		require.Equal(t, mx, maxOverTime[tms], "max_over_time at %d", tms)
		require.Equal(t, float64(n), instant(`count_over_time(hopwatch_latency_raw_seconds[10s])`, tms))
		// With @, from any evaluation time.
		require.Equal(t, float64(n), instant(fmt.Sprintf(`count_over_time(hopwatch_latency_raw_seconds[10s] @ %.3f)`, float64(tms)/1e3), end))
		// In a subquery at 5s steps: the largest count of its windows.
		want := 0
		for st := tms - 30_000 + 5_000; st <= tms; st += 5_000 {
			c, _ := brute(st, 5_000)
			want = max(want, c)
		}
		require.Equal(t, float64(want), instant(`max_over_time(count_over_time(hopwatch_latency_raw_seconds[5s])[30s:5s])`, tms))
	}
}

// TestMinMaxOverTimeSeeEveryTie: min_over_time and max_over_time over the
// raw tier are answered by the exact path (quantiles 0 and 1), so a
// window's extreme that shares the window's last millisecond with other
// spans counts, where the engine keeps one span of that millisecond.
func TestMinMaxOverTimeSeeEveryTie(t *testing.T) {
	opts := raw.DefaultOptions()
	opts.Dir = t.TempDir()
	db, err := raw.Open(opts, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	t0 := time.Unix(1_700_000_000, 0).UnixNano()
	b := &sample.Batch{Series: []sample.Series{{Family: sample.FamilySpan, Key: "api",
		Labels: labels.FromStrings("service", "api", "span_name", "op", "span_kind", "SPAN_KIND_SERVER", "status_code", "STATUS_CODE_UNSET")}}}
	// Every second, three spans in one ns whose durations grow with the
	// second: a window's fastest and slowest are both in its last second.
	for s := int64(0); s < 60; s++ {
		for _, d := range []int64{500, 900, 100} {
			b.Samples = append(b.Samples, sample.Sample{Series: 0, Start: t0 + s*int64(time.Second), Duration: (d - s) * int64(time.Microsecond)})
		}
	}
	_, err = db.Append(b)
	require.NoError(t, err)

	fast, engine, _ := apiPair(t, db)
	instant := func(srv, q string, tms int64) float64 {
		res := getJSON(t, srv, "/api/v1/query", url.Values{"query": {q}, "time": {fmt.Sprint(float64(tms) / 1e3)}})
		r := res["data"].(map[string]any)["result"].([]any)
		require.Len(t, r, 1, q)
		f, err := strconv.ParseFloat(r[0].(map[string]any)["value"].([]any)[1].(string), 64)
		require.NoError(t, err)
		return f
	}
	const last = 30 // the window (20s, 30s] ends on second 30's spans
	tms := t0/1e6 + last*1e3
	require.Equal(t, float64(100-last)/1e6, instant(fast.URL, `min_over_time(hopwatch_latency_raw_seconds[10s])`, tms))
	require.Equal(t, float64(900-21)/1e6, instant(fast.URL, `max_over_time(hopwatch_latency_raw_seconds[10s])`, tms))
	// The data tells the paths apart: the engine misses the last second's
	// fastest span.
	require.NotEqual(t, float64(100-last)/1e6, instant(engine.URL, `min_over_time(hopwatch_latency_raw_seconds[10s])`, tms))
}
