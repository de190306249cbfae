package admin

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/ratelimit"
	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/agg"
)

// batch is one span sample on each of the named series.
func batch(series ...string) *sample.Batch {
	var b sample.Batch
	start := time.Now().Add(-time.Minute).UnixNano()
	for i, name := range series {
		ls := labels.FromStrings("service", "api", "span_name", name)
		b.Series = append(b.Series, sample.Series{Key: ls.String(), Labels: ls})
		b.Samples = append(b.Samples, sample.Sample{Series: uint32(i), Start: start, Duration: 1_000_000})
	}
	return &b
}

// TestApplyLimits: a tenant's max-series override, written through the
// admin API on a real node, reaches storage/agg within a second of its
// commit and refuses the next new series; a change raises it, a deletion
// returns the tenant to the flag's value.
func TestApplyLimits(t *testing.T) {
	a := startAPI(t, nil)
	opts := agg.DefaultOptions()
	opts.Dir = t.TempDir()
	opts.MaxSeriesPerTenant = 100
	store, err := agg.Open(opts, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, store.Close()) })

	// A tenant whose override exists before the loop starts.
	a.do("PUT", Prefix+"/early", `{"limits":{"max_series_per_tenant":2}}`).ok(t, 201, nil)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ApplyLimits(ctx, a.node, store, testLogger())
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	require.Eventually(t, func() bool { return store.MaxSeries("early") == 2 }, waitFor, tick)

	appendRefused := func(tenantID string, series ...string) int {
		t.Helper()
		b := batch(series...)
		require.NoError(t, store.Append(context.Background(), tenantID, b))
		return b.Refused.Spans
	}
	require.Zero(t, appendRefused("acme", "s1", "s2"))

	// Within a second of the commit (PUT returns once it is committed).
	a.do("PUT", Prefix+"/acme", `{"limits":{"max_series_per_tenant":2}}`).ok(t, 201, nil)
	committed := time.Now()
	require.Eventually(t, func() bool { return store.MaxSeries("acme") == 2 }, time.Second, time.Millisecond,
		"the override did not reach storage within a second of its commit")
	t.Logf("override in force %v after the commit", time.Since(committed))
	require.Equal(t, 1, appendRefused("acme", "s1", "s2", "s3"), "a third series passed a limit of 2")
	require.Zero(t, appendRefused("acme", "s1", "s2"), "known series must go on")

	// Raised by PATCH: the next new series is taken.
	a.do("PATCH", Prefix+"/acme", `{"limits":{"max_series_per_tenant":3}}`).ok(t, 200, nil)
	require.Eventually(t, func() bool { return store.MaxSeries("acme") == 3 }, time.Second, time.Millisecond)
	require.Zero(t, appendRefused("acme", "s3"))

	// Only the limits that are enforced count: a rate change leaves the
	// series limit, and 0 returns to the flag.
	a.do("PATCH", Prefix+"/acme", `{"limits":{"ingestion_rate_spans":10,"max_series_per_tenant":0}}`).ok(t, 200, nil)
	require.Eventually(t, func() bool { return store.MaxSeries("acme") == 100 }, time.Second, time.Millisecond)

	// Deleted: back to the flag's value.
	a.do("DELETE", Prefix+"/early", "").ok(t, 200, nil)
	require.Eventually(t, func() bool { return store.MaxSeries("early") == 100 }, time.Second, time.Millisecond)

	// The cluster's default replaces the flag's for every tenant without
	// an override, so every node enforces one value.
	a.do("PATCH", Prefix+"/acme", `{"limits":{"max_series_per_tenant":3}}`).ok(t, 200, nil)
	_, err = a.node.SetDefaultLimits(context.Background(), cluster.Limits{MaxSeriesPerTenant: 1}, false)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return store.MaxSeries("early") == 1 }, time.Second, time.Millisecond)
	require.Equal(t, 3, store.MaxSeries("acme"), "an override outranks the cluster's default")
	require.Equal(t, 1, appendRefused("other", "s1", "s2"), "a second series passed the cluster's default of 1")
}

// TestApplyRateLimits: a tenant's ingestion rate overrides, written through
// the admin API on a real node, reach the spans and bytes limiters; a zero
// field keeps the flag's value, a deletion returns the tenant to the flags.
func TestApplyRateLimits(t *testing.T) {
	a := startAPI(t, nil)
	newLimiter := func(name string, def ratelimit.Limit) *ratelimit.Limiter {
		l, err := ratelimit.New(ratelimit.Options{Name: name, Default: def}, nil, nil)
		require.NoError(t, err)
		return l
	}
	spans := newLimiter("spans", ratelimit.Limit{Rate: 1000, Burst: 2000})
	bytes := newLimiter("bytes", ratelimit.Limit{Rate: 1e6})

	a.do("PUT", Prefix+"/early", `{"limits":{"ingestion_burst_spans":50}}`).ok(t, 201, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		ApplyRateLimits(ctx, a.node, spans, bytes, testLogger())
	}()
	defer func() {
		cancel()
		wg.Wait()
	}()
	require.Eventually(t, func() bool { return spans.Limit("early") == ratelimit.Limit{Rate: 1000, Burst: 50} }, waitFor, tick)

	a.do("PUT", Prefix+"/acme", `{"limits":{"ingestion_rate_spans":10,"ingestion_rate_bytes":500,"max_series_per_tenant":5}}`).ok(t, 201, nil)
	require.Eventually(t, func() bool {
		return spans.Limit("acme") == ratelimit.Limit{Rate: 10, Burst: 2000} && bytes.Limit("acme") == ratelimit.Limit{Rate: 500, Burst: 500}
	}, waitFor, tick)

	a.do("DELETE", Prefix+"/acme", "").ok(t, 200, nil)
	require.Eventually(t, func() bool {
		return spans.Limit("acme") == ratelimit.Limit{Rate: 1000, Burst: 2000} && bytes.Limit("acme") == ratelimit.Limit{Rate: 1e6, Burst: 1e6}
	}, waitFor, tick)
	require.Equal(t, ratelimit.Limit{Rate: 1000, Burst: 50}, spans.Limit("early"))
}
