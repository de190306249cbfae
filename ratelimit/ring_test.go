package ratelimit

import (
	"context"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// TestRunRoundOnRingChange: an exchange over a Watcher runs a round as
// soon as the ring changes, not at its next tick (an hour away here), and
// not for a signal that changed nothing.
func TestRunRoundOnRingChange(t *testing.T) {
	ring := NewRing([]Member{{ID: "a"}})
	l, err := New(Options{Name: "spans", Default: Limit{Rate: 1000, Burst: 1000}}, nil, nil)
	require.NoError(t, err)
	reg := prometheus.NewRegistry()
	e, err := NewExchange(ExchangeOptions{Membership: ring.View("a"), Limiters: []*Limiter{l}, Interval: time.Hour}, reg, nil)
	require.NoError(t, err)
	e.recheckAfter = 200 * time.Millisecond // the least gap between rounds (Interval/20 otherwise): the changes below come sooner
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { e.Run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()

	live := func() float64 { return testutil.ToFloat64(e.metrics.members) }
	require.Eventually(t, func() bool { return live() == 1 }, 10*time.Second, time.Millisecond, "the first round runs at once")
	ring.Set([]Member{{ID: "a"}, {ID: "b"}})
	require.Eventually(t, func() bool { return live() == 2 }, 10*time.Second, time.Millisecond, "a join starts a round")
	require.Equal(t, 2, l.conf.Load().nodes, "the limiter splits by two (set before the gauge)")

	ring.Set([]Member{{ID: "a"}, {ID: "b", Down: true}})
	require.Eventually(t, func() bool { return live() == 1 }, 10*time.Second, time.Millisecond, "a member down starts a round")
	ring.Set(ring.Members()) // no change
	ring.Set([]Member{{ID: "a"}, {ID: "b"}, {ID: "c"}})
	require.Eventually(t, func() bool { return live() == 3 }, 10*time.Second, time.Millisecond)
	require.Equal(t, 3.0, testutil.ToFloat64(e.metrics.ringChanges), "three changes, one signal that changed nothing")
}

// TestDemandOverHalfAnInterval: a round that comes early (a ring change)
// keeps the last demand; the next measures over the whole span since the
// last figure.
func TestDemandOverHalfAnInterval(t *testing.T) {
	clock := newFakeClock()
	l, err := New(Options{Name: "spans", Default: Limit{Rate: 1e6, Burst: 1e6}, Clock: clock}, nil, nil)
	require.NoError(t, err)
	demand := func() float64 {
		ds := l.sweep(clock.Now(), nil)
		require.Len(t, ds, 1)
		return ds[0].demand
	}
	require.Equal(t, 10, admitN(l, "acme", 10, 10))
	clock.Step(time.Second)
	require.Equal(t, 100.0, demand(), "the first figure: 100 over 1 s")
	require.Equal(t, 10, admitN(l, "acme", 10, 10))
	clock.Step(10 * time.Millisecond)
	require.Equal(t, 100.0, demand(), "10 ms is too short a span: the last figure stays")
	clock.Step(490 * time.Millisecond)
	require.Equal(t, 200.0, demand(), "100 over the 500 ms since the last figure")

	// Idle, then one batch: an early round does not read it as a rate.
	clock.Step(time.Second)
	require.Zero(t, demand())
	require.True(t, l.AllowN("acme", 10).Allowed)
	clock.Step(10 * time.Millisecond)
	require.Zero(t, demand(), "10 units over 10 ms is not 1000/s")
	clock.Step(990 * time.Millisecond)
	require.Equal(t, 10.0, demand())
}

// TestRunRecheckCapped: an answer capped by what another node still holds
// is asked again within the interval (never, here: it is an hour), and
// the share rises once the other node has reported its lower demand.
func TestRunRecheckCapped(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b")
	tenant := c.tenantOwnedBy("b") // a's answers come over gRPC
	for range 3 {
		c.drive(tenant, map[string]float64{"a": 300, "b": 1700}, time.Second)
		c.round("a", "b")
	}
	require.InDelta(t, 0.15, c.share("a", tenant), 1e-9)

	// The load moves to a; b has not reported it yet and holds 0.85.
	c.drive(tenant, map[string]float64{"a": 1700, "b": 300}, time.Second)
	a := c.nodes["a"]
	// No tick, a second before the first recheck (then 2 s, 4 s, 8 s):
	// room for a slow machine between the steps below.
	a.e.opts.Interval, a.e.opts.RequestTimeout = time.Hour, 10*time.Second
	a.e.recheckAfter = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.e.Run(ctx) })
	defer func() {
		cancel()
		wg.Wait()
	}()
	rechecks := func() float64 { return testutil.ToFloat64(a.e.metrics.rechecks) }
	require.Eventually(t, func() bool { return rechecks() >= 1 }, 30*time.Second, time.Millisecond, "a's first answer is capped and asked again")
	require.InDelta(t, 0.15, c.share("a", tenant), 1e-9, "capped by b's 0.85")

	c.round("b") // b reports 300: 0.15, and releases the rest
	require.Eventually(t, func() bool { return math.Abs(c.share("a", tenant)-0.85) < 1e-9 }, 30*time.Second, time.Millisecond,
		"a asks again and gets its part, 1700 of 2000")
	require.LessOrEqual(t, rechecks(), float64(maxRechecks))
}
