package ratelimit

import (
	"context"
	"fmt"
	"math"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
)

// testNode is one node of an in-process cluster: a limiter, an exchange,
// and a gRPC server on 127.0.0.1.
type testNode struct {
	id  string
	l   *Limiter
	e   *Exchange
	reg *prometheus.Registry
	srv *grpc.Server
	lis net.Listener
}

func (n *testNode) stop() {
	n.srv.Stop()
	n.e.conns.close()
}

// cluster is a set of test nodes on one fake clock; rounds are run by the
// test, one node after the other, as the nodes' tickers would.
type cluster struct {
	t     *testing.T
	clock *fakeClock
	ring  *Ring
	nodes map[string]*testNode
	lim   Limit
}

// newCluster starts nodes with the ring of all of them in place, as a
// cluster's members know each other before they serve.
func newCluster(t *testing.T, lim Limit, ids ...string) *cluster {
	c := &cluster{t: t, clock: newFakeClock(), ring: NewRing(nil), nodes: map[string]*testNode{}, lim: lim}
	lis := make([]net.Listener, len(ids))
	for i, id := range ids {
		lis[i] = c.listen(id)
	}
	for i, id := range ids {
		c.start(id, lis[i])
	}
	return c
}

func (c *cluster) listen(id string) net.Listener {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(c.t, err)
	c.ring.Set(append(c.ring.Members(), Member{ID: id, GRPCAddr: lis.Addr().String()}))
	return lis
}

// add starts a node and appends it to the ring.
func (c *cluster) add(id string) *testNode { return c.start(id, c.listen(id)) }

func (c *cluster) start(id string, lis net.Listener) *testNode {
	t := c.t
	var err error
	n := &testNode{id: id, reg: prometheus.NewPedanticRegistry(), srv: grpc.NewServer(), lis: lis}
	n.l, err = New(Options{Name: "spans", Default: c.lim, Clock: c.clock}, n.reg, nil)
	require.NoError(t, err)
	n.e, err = NewExchange(ExchangeOptions{Membership: c.ring.View(id), Limiters: []*Limiter{n.l}, Clock: c.clock}, n.reg, nil)
	require.NoError(t, err)
	n.e.RegisterGRPC(n.srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = n.srv.Serve(lis)
	}()
	t.Cleanup(func() {
		n.stop()
		<-done
	})
	c.nodes[id] = n
	return n
}

// drive offers each node its rate (units/s) of tenant for d, in batches
// every 10 ms, and returns what the cluster admitted.
func (c *cluster) drive(tenant string, rates map[string]float64, d time.Duration) int64 {
	var admitted int64
	owed := map[string]float64{}
	for range d / (10 * time.Millisecond) {
		c.clock.Step(10 * time.Millisecond)
		for id, r := range rates {
			owed[id] += r / 100
			n := math.Floor(owed[id])
			owed[id] -= n
			if c.nodes[id].l.AllowN(tenant, int64(n)).Allowed {
				admitted += int64(n)
			}
		}
	}
	return admitted
}

// round runs one exchange round on each of the nodes, in order.
func (c *cluster) round(ids ...string) {
	for _, id := range ids {
		c.nodes[id].e.round(context.Background())
	}
}

func (c *cluster) share(id, tenantID string) float64 {
	t := c.nodes[id].l.tenants.load(tenantID)
	require.NotNil(c.t, t, "%s knows %s", id, tenantID)
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.share
}

// tenantOwnedBy returns a tenant name that the ring places on id.
func (c *cluster) tenantOwnedBy(id string) string {
	ms := c.ring.Members()
	for i := 0; ; i++ {
		name := fmt.Sprint("tenant-", i)
		if o := Owner(name, ms); ms[o].ID == id {
			return name
		}
	}
}

// TestExchangeResplit: three nodes over real gRPC split a tenant's limit
// in proportion to demand: with the load at 70/20/10 and then 10/20/70 of
// twice the limit, the cluster admits the limit within 5% in every second
// from the second exchange after a change on; the even split admits 27%
// less under the same load.
func TestExchangeResplit(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b", "c")
	const tenant = "acme"
	load := map[string]float64{"a": 1400, "b": 400, "c": 200}
	var perSecond []int64
	for range 6 {
		perSecond = append(perSecond, c.drive(tenant, load, time.Second))
		c.round("a", "b", "c")
	}
	t.Logf("70/20/10: admitted per second %v", perSecond)
	// The first second spends the full buckets (1000) besides the rate.
	for _, got := range perSecond[2:] {
		require.InDelta(t, 1000, got, 50)
	}
	require.InDelta(t, 0.7, c.share("a", tenant), 1e-9)
	require.InDelta(t, 0.2, c.share("b", tenant), 1e-9)
	require.InDelta(t, 0.1, c.share("c", tenant), 1e-9)

	load = map[string]float64{"a": 200, "b": 400, "c": 1400}
	perSecond = perSecond[:0]
	for range 6 {
		perSecond = append(perSecond, c.drive(tenant, load, time.Second))
		c.round("a", "b", "c")
	}
	t.Logf("10/20/70: admitted per second %v", perSecond)
	for _, got := range perSecond[2:] {
		require.InDelta(t, 1000, got, 50)
	}
	require.InDelta(t, 0.1, c.share("a", tenant), 1e-9)
	require.InDelta(t, 0.7, c.share("c", tenant), 1e-9)

	// The even split on the same load, once the buckets are drained:
	// 200 + 333 + 333.
	even := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b", "c")
	for range 10 {
		even.drive(tenant, load, time.Second)
	}
	require.InDelta(t, 200+1000.0*2/3, even.drive(tenant, load, time.Second), 5)
}

// TestExchangeSilentNode: a node that stops reporting (its exchange
// stopped, or it lost its load) loses its share after the timeout, and the
// others take it.
func TestExchangeSilentNode(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b", "c")
	tenant := c.tenantOwnedBy("a")
	load := map[string]float64{"a": 1000, "b": 500, "c": 500}
	for range 4 {
		c.drive(tenant, load, time.Second)
		c.round("a", "b", "c")
	}
	require.InDelta(t, 0.5, c.share("a", tenant), 1e-9)
	delete(load, "c")
	for range 4 {
		c.drive(tenant, load, time.Second)
		c.round("a", "b")
	}
	require.InDelta(t, 2.0/3, c.share("a", tenant), 1e-9)
	require.InDelta(t, 1.0/3, c.share("b", tenant), 1e-9)
	// Within a batch per node of the limit: tokens short of a batch at the
	// end of a second are spent in the next.
	require.InDelta(t, 1000, c.drive(tenant, load, time.Second), 20)
}

// TestExchangeOwnerChange: a node added to the ring becomes the owner of
// about a quarter of the tenants; they are split there from its first
// interval on, the old owner forgets them after the timeout, and the
// cluster's admitted rate stays at the limit.
func TestExchangeOwnerChange(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b", "c")
	var tenants []string
	for i := range 400 {
		tenants = append(tenants, fmt.Sprint("tenant-", i))
	}
	before := owners(tenants, c.ring.Members())
	// The tenant under load is one that moves to d.
	var tenant string
	after := owners(tenants, append(members("a", "b", "c"), Member{ID: "d"}))
	for i := range tenants {
		if before[i] != after[i] {
			require.Equal(t, "d", after[i])
			if tenant == "" {
				tenant = tenants[i]
			}
		}
	}
	require.InDelta(t, 0.25, movedFraction(before, after), 0.05)
	oldOwner := before[slices.Index(tenants, tenant)]

	load := map[string]float64{"a": 1400, "b": 400, "c": 200}
	for range 4 {
		c.drive(tenant, load, time.Second)
		for _, id := range []string{"a", "b", "c"} {
			for _, other := range tenants {
				c.nodes[id].l.AllowN(other, 1)
			}
		}
		c.round("a", "b", "c")
	}
	owned := func(id string) float64 { return testutil.ToFloat64(c.nodes[id].e.metrics.owned) }
	require.InDelta(t, 400, owned("a")+owned("b")+owned("c"), 0)

	c.add("d")
	var perSecond []int64
	for range 5 {
		perSecond = append(perSecond, c.drive(tenant, load, time.Second))
		c.round("a", "b", "c", "d")
	}
	t.Logf("admitted per second after d joined: %v", perSecond)
	for _, got := range perSecond[2:] {
		require.InDelta(t, 1000, got, 50)
	}
	require.InDelta(t, 0.7, c.share("a", tenant), 1e-9)
	// d owns the moved tenants; after the timeout the old owners forgot
	// them: every tenant is owned once.
	_, onD := c.nodes["d"].e.owner.tenants[ownedKey{"spans", tenant}]
	require.True(t, onD)
	_, onOld := c.nodes[oldOwner].e.owner.tenants[ownedKey{"spans", tenant}]
	require.False(t, onOld)
	require.InDelta(t, 100, owned("d"), 30)
}

// TestExchangeFallback: when a tenant's owner stops answering, the other
// nodes keep their last share for the timeout, then admit limit/n and say
// so in their metrics; once the ring marks the owner down, another node
// owns the tenant and the shares follow demand again.
func TestExchangeFallback(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b", "c")
	tenant := c.tenantOwnedBy("c")
	load := map[string]float64{"a": 1400, "b": 600}
	for range 4 {
		c.drive(tenant, load, time.Second)
		c.round("a", "b", "c")
	}
	require.InDelta(t, 0.7, c.share("a", tenant), 1e-9)

	c.nodes["c"].stop()
	gauge := func(id string) float64 { return testutil.ToFloat64(c.nodes[id].l.metrics.fallback) }
	for range 2 {
		c.drive(tenant, load, time.Second)
		c.round("a", "b")
		require.InDelta(t, 0.7, c.share("a", tenant), 1e-9, "the last share holds for the timeout")
		require.Zero(t, gauge("a"))
	}
	c.drive(tenant, load, 1500*time.Millisecond)
	c.round("a", "b")
	require.InDelta(t, 1.0/3, c.share("a", tenant), 1e-9)
	require.InDelta(t, 1.0/3, c.share("b", tenant), 1e-9)
	require.Equal(t, 1.0, gauge("a"))
	require.Equal(t, 1.0, gauge("b"))
	require.Equal(t, 1.0, testutil.ToFloat64(c.nodes["a"].e.metrics.unreachable))
	require.GreaterOrEqual(t, testutil.ToFloat64(c.nodes["a"].e.metrics.errors), 3.0)
	require.NoError(t, testutil.GatherAndCompare(c.nodes["a"].reg, stringsReader(`
# HELP hopwatch_ratelimit_fallback_tenants Tenants at the even split (limit / live nodes) because their owner did not answer the exchange.
# TYPE hopwatch_ratelimit_fallback_tenants gauge
hopwatch_ratelimit_fallback_tenants{limit="spans"} 1
`), "hopwatch_ratelimit_fallback_tenants"))

	// The cluster marks c down: two live members, a new owner.
	ms := c.ring.Members()
	ms[2].Down = true
	c.ring.Set(ms)
	for range 3 {
		c.drive(tenant, load, time.Second)
		c.round("a", "b")
	}
	require.InDelta(t, 0.7, c.share("a", tenant), 1e-9)
	require.InDelta(t, 0.3, c.share("b", tenant), 1e-9)
	require.Zero(t, gauge("a"))
	require.Zero(t, testutil.ToFloat64(c.nodes["a"].e.metrics.unreachable))
	require.Equal(t, 2.0, testutil.ToFloat64(c.nodes["a"].e.metrics.members))
}

// TestExchangeOptions: every invalid field is named.
func TestExchangeOptions(t *testing.T) {
	l := newTestLimiter(t, newFakeClock(), Limit{})
	_, err := NewExchange(ExchangeOptions{Limiters: []*Limiter{l, l, nil}, Interval: time.Second, Timeout: time.Millisecond, RequestTimeout: 2 * time.Second}, nil, nil)
	for _, want := range []string{"Membership", "Limiters[1]", "Limiters[2]", "Timeout", "RequestTimeout"} {
		require.ErrorContains(t, err, want)
	}
}

// TestExchangeClock: an exchange reads its limiters' clock unless told
// otherwise, and refuses a clock other than theirs: a share applied at a
// time from another clock would date the rebuilt bucket in the past (or
// future) and refill it by the difference. MonotonicClock is one clock
// however often it is asked for.
func TestExchangeClock(t *testing.T) {
	require.Equal(t, MonotonicClock(), MonotonicClock())
	fake := newFakeClock()
	l := newTestLimiter(t, fake, Limit{})
	m := StaticMembers{SelfID: "a"}
	e, err := NewExchange(ExchangeOptions{Membership: m, Limiters: []*Limiter{l}}, nil, nil)
	require.NoError(t, err)
	require.Equal(t, Clock(fake), e.clock)

	_, err = NewExchange(ExchangeOptions{Membership: m, Limiters: []*Limiter{l}, Clock: MonotonicClock()}, nil, nil)
	require.ErrorContains(t, err, `Limiters[0] ("spans") reads another clock than the exchange`)
	other := newTestLimiter(t, newFakeClock(), Limit{})
	other.name = "bytes"
	_, err = NewExchange(ExchangeOptions{Membership: m, Limiters: []*Limiter{l, other}}, nil, nil)
	require.ErrorContains(t, err, `Limiters[1] ("bytes") reads another clock`)

	// Made apart, as the server makes them: one clock.
	a, err := New(Options{Name: "spans"}, nil, nil)
	require.NoError(t, err)
	b, err := New(Options{Name: "bytes"}, nil, nil)
	require.NoError(t, err)
	_, err = NewExchange(ExchangeOptions{Membership: m, Limiters: []*Limiter{a, b}, Clock: MonotonicClock()}, nil, nil)
	require.NoError(t, err)
}

// TestRun: Run exchanges on its ticker until its context ends, and leaves
// no goroutine or connection behind (goleak in TestMain).
func TestRun(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000}, "a", "b")
	for _, n := range c.nodes {
		n.e.opts.Interval = time.Millisecond
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range c.nodes {
		wg.Go(func() { n.e.Run(ctx) })
	}
	c.nodes["a"].l.Allow("acme")
	c.nodes["b"].l.Allow("acme")
	require.Eventually(t, func() bool {
		return testutil.CollectAndCount(c.nodes["a"].e.metrics.duration)+testutil.CollectAndCount(c.nodes["b"].e.metrics.duration) > 0 &&
			testutil.ToFloat64(c.nodes["a"].e.metrics.members) == 2
	}, 30*time.Second, 5*time.Millisecond)
	cancel()
	wg.Wait()
}

// TestExchangeBatchFloor: a node's burst is its share of the tenant's
// burst, but at least two of the largest batches it was offered (never
// past the tenant's burst): a batch larger than its share grows the bucket
// at once, keeping its level, so that the batch waits for the units it
// lacks rather than being refused at any load.
func TestExchangeBatchFloor(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b", "c")
	const tenant = "acme"
	for range 3 {
		c.drive(tenant, map[string]float64{"a": 1800, "b": 100, "c": 100}, time.Second)
		c.round("a", "b", "c")
	}
	require.InDelta(t, 0.05, c.share("b", tenant), 1e-9)
	require.Equal(t, int64(50), c.nodes["b"].l.AllowN(tenant, 0).Local().Burst, "b's share of the burst")
	d := c.nodes["b"].l.AllowN(tenant, 300)
	require.False(t, d.Allowed, "b's bucket, drained by its load, keeps its level")
	require.Equal(t, Limit{Rate: 1000, Burst: 1000}, d.Global())
	require.Equal(t, int64(600), d.Local().Burst, "two batches")
	c.clock.Step(d.RetryAfter)
	require.True(t, c.nodes["b"].l.AllowN(tenant, 300).Allowed)
	// Larger than the tenant's burst: never.
	d = c.nodes["b"].l.AllowN(tenant, 1001)
	require.False(t, d.Allowed)
	require.Equal(t, int64(600), d.Local().Burst)
	c.clock.Step(time.Second)
	c.round("a", "b", "c")
	require.Equal(t, int64(1000), c.nodes["b"].l.AllowN(tenant, 1001).Local().Burst, "at most the tenant's burst")
}

// TestExchangeZeroShare: a node whose share is 0 (no demand there while
// the others take the whole limit) refuses with RetryAfter = the interval,
// and gets its share within two exchanges once it has demand (at the
// first, a reports before b and still sees b's old demand).
func TestExchangeZeroShare(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b")
	const tenant = "acme"
	c.nodes["b"].l.AllowN(tenant, 1)
	for range 3 {
		c.drive(tenant, map[string]float64{"a": 2000}, time.Second)
		c.round("a", "b")
	}
	require.Zero(t, c.share("b", tenant))
	d := c.nodes["b"].l.AllowN(tenant, 10)
	require.False(t, d.Allowed)
	require.Equal(t, time.Second, d.RetryAfter)
	for range 2 {
		c.drive(tenant, map[string]float64{"a": 2000, "b": 2000}, time.Second)
		c.round("a", "b")
	}
	require.InDelta(t, 0.5, c.share("b", tenant), 1e-9)
}

// TestExchangeMetrics: the per-tenant share and counters and the
// exchange's own series, as a scrape sees them.
func TestExchangeMetrics(t *testing.T) {
	c := newCluster(t, Limit{Rate: 1000, Burst: 1000}, "a", "b")
	tenant := c.tenantOwnedBy("b")
	for range 3 {
		c.drive(tenant, map[string]float64{"a": 1500, "b": 500}, time.Second)
		c.round("a", "b")
	}
	reg := c.nodes["a"].reg
	require.NoError(t, testutil.GatherAndCompare(reg, stringsReader(fmt.Sprintf(`
# HELP hopwatch_ratelimit_share Fraction of the tenant's cluster-wide limit this node admits until the next exchange.
# TYPE hopwatch_ratelimit_share gauge
hopwatch_ratelimit_share{limit="spans",tenant=%q} 0.75
# HELP hopwatch_ratelimit_live_members Live members of the ring: n in the even split limit/n.
# TYPE hopwatch_ratelimit_live_members gauge
hopwatch_ratelimit_live_members 2
# HELP hopwatch_ratelimit_owned_tenants Tenant limits this node owns: it splits them among the nodes that report demand.
# TYPE hopwatch_ratelimit_owned_tenants gauge
hopwatch_ratelimit_owned_tenants 0
# HELP hopwatch_ratelimit_tenants Tenants the limiter holds a bucket for.
# TYPE hopwatch_ratelimit_tenants gauge
hopwatch_ratelimit_tenants{limit="spans"} 1
`, tenant)), "hopwatch_ratelimit_share", "hopwatch_ratelimit_live_members", "hopwatch_ratelimit_owned_tenants", "hopwatch_ratelimit_tenants"))
	require.Equal(t, 1.0, testutil.ToFloat64(c.nodes["b"].e.metrics.owned))
	// a's reports went over gRPC to b: three timed, none failed.
	require.Equal(t, 1, testutil.CollectAndCount(c.nodes["a"].e.metrics.duration))
	require.Zero(t, testutil.ToFloat64(c.nodes["a"].e.metrics.errors))
	n, err := testutil.GatherAndCount(reg, "hopwatch_ratelimit_admitted_total", "hopwatch_ratelimit_refused_total")
	require.NoError(t, err)
	require.Equal(t, 2, n)
	a := c.nodes["a"].l.Admitted(tenant)
	require.InDelta(t, 1000+750+750, a, 40, "a's part of the limit over 3 s (1000 as the first-second burst and rate)")
}
