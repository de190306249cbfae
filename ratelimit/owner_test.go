package ratelimit

import (
	"math/rand/v2"
	"testing"
	"time"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/stretchr/testify/require"
)

// ownerFixture is an owner table for one tenant with limit 1000/s over
// three live members, with the default timings (interval 1 s).
type ownerFixture struct {
	t        *testing.T
	table    *ownerTable
	ms       []Member
	limiters map[string]*Limiter
	now      int64
	capped   bool // the last report's answer
}

func newOwnerFixture(t *testing.T) *ownerFixture {
	l := newTestLimiter(t, newFakeClock(), Limit{Rate: 1000, Burst: 1000})
	return &ownerFixture{
		t:        t,
		table:    &ownerTable{timeout: int64(3 * time.Second), warmup: int64(1500 * time.Millisecond), tenants: map[ownedKey]*owned{}},
		ms:       members("a", "b", "c"),
		limiters: map[string]*Limiter{"spans": l},
		now:      int64(time.Hour),
	}
}

// report sends node's demand (units/s) and returns its share.
func (f *ownerFixture) report(node string, rate float64) float64 {
	f.t.Helper()
	s, capped := f.table.report(f.now, node, []*hopwatchv1.TenantDemand{{Limit: "spans", Tenant: "acme", Rate: rate}}, f.ms, f.limiters)
	require.Len(f.t, s, 1)
	f.capped = capped
	return s[0]
}

func (f *ownerFixture) step(d time.Duration) { f.now += int64(d) }

// TestShareInProportion: over the limit, each node gets the limit in
// proportion to its demand, and the shares add up to 1.
func TestShareInProportion(t *testing.T) {
	f := newOwnerFixture(t)
	f.report("a", 1400)
	f.report("b", 400)
	f.report("c", 200)
	f.step(2 * time.Second) // past the warm-up
	sa, sb, sc := f.report("a", 1400), f.report("b", 400), f.report("c", 200)
	require.InDelta(t, 0.7, sa, 1e-12)
	require.InDelta(t, 0.2, sb, 1e-12)
	require.InDelta(t, 0.1, sc, 1e-12)

	// The load shifts to 10/20/70. a and b report before c: they see
	// c's old demand, the total under the limit, and get room; c, capped
	// by what the others can admit with theirs (their demand), gets the
	// rest: 1 - 0.2 - 0.4.
	f.step(time.Second)
	sa = f.report("a", 200)
	require.InDelta(t, (200+200.0/3)/1000, sa, 1e-12)
	require.False(t, f.capped)
	sb = f.report("b", 400)
	require.InDelta(t, (400+200.0/3)/1000, sb, 1e-12)
	require.False(t, f.capped)
	sc = f.report("c", 1400)
	require.InDelta(t, 0.4, sc, 1e-12)
	require.True(t, f.capped, "0.7 by demand, 0.4 by what a and b hold")
	// One interval later every node's demand is current.
	f.step(time.Second)
	sa, sb, sc = f.report("a", 200), f.report("b", 400), f.report("c", 1400)
	require.InDelta(t, 0.1, sa, 1e-12)
	require.InDelta(t, 0.2, sb, 1e-12)
	require.InDelta(t, 0.7, sc, 1e-12)
	require.False(t, f.capped)
}

// TestShareCappedBySilentNode: a share capped by what a silent node still
// holds (until the timeout) is not marked capped: asking again would not
// release it.
func TestShareCappedBySilentNode(t *testing.T) {
	f := newOwnerFixture(t)
	for range 3 {
		f.report("a", 300)
		f.report("b", 1700)
		f.report("c", 0)
		f.step(time.Second)
	}
	f.report("a", 1700)
	require.True(t, f.capped, "b holds 0.85 and reports on time")
	f.step(time.Second) // b is 2 s silent: past the warm-up (1.5 s), within the timeout (3 s)
	f.report("c", 0)
	require.Less(t, f.report("a", 1700), 0.2, "b's hold still counts")
	require.False(t, f.capped)
}

// TestShareNeverOverOne: whatever the order of the reports within an
// interval and the demands, what the nodes can admit with the shares in
// force (each its share, or its demand where smaller) adds up to at most
// the limit.
func TestShareNeverOverOne(t *testing.T) {
	f := newOwnerFixture(t)
	r := rand.New(rand.NewPCG(3, 4))
	usable := map[string]float64{}
	for range 10000 {
		for _, i := range r.Perm(3) {
			node := f.ms[i].ID
			d := r.Float64() * r.Float64() * 3000
			usable[node] = min(f.report(node, d), d/1000)
			require.LessOrEqual(t, usable["a"]+usable["b"]+usable["c"], 1+1e-9)
			f.step(time.Duration(r.Int64N(int64(300 * time.Millisecond))))
		}
	}
}

// TestShareUnused: under the limit, each node gets its demand and an even
// part of what is left, so unused share goes where demand appears.
func TestShareUnused(t *testing.T) {
	f := newOwnerFixture(t)
	f.report("a", 500)
	f.report("b", 100)
	f.report("c", 0)
	f.step(2 * time.Second)
	sa, sb, sc := f.report("a", 500), f.report("b", 100), f.report("c", 0)
	// 400 left: 133.3 each.
	require.InDelta(t, (500+400.0/3)/1000, sa, 1e-12)
	require.InDelta(t, (100+400.0/3)/1000, sb, 1e-12)
	require.InDelta(t, (400.0/3)/1000, sc, 1e-12)
	require.InDelta(t, 1, sa+sb+sc, 1e-12)
}

// TestShareWarmup: the first report of a tenant does not take the whole
// limit: members not heard from yet count as limit/n until the warm-up
// ends; after it, a tenant seen by one node alone gets all of it there.
func TestShareWarmup(t *testing.T) {
	f := newOwnerFixture(t)
	// 2000 + 2 × 333.3 silent.
	require.InDelta(t, 2000/(2000+2000.0/3), f.report("a", 2000), 1e-12)
	f.step(time.Second)
	require.InDelta(t, 2000/(2000+1000.0/3), f.report("b", 0)+f.report("a", 2000)-f.report("b", 0), 1e-12)
	f.step(time.Second)
	require.InDelta(t, 1, f.report("a", 2000), 1e-12)
}

// TestShareSilentNode: a node that stops reporting loses its share after
// the timeout, and the others' shares grow to fill the limit.
func TestShareSilentNode(t *testing.T) {
	f := newOwnerFixture(t)
	for range 3 {
		f.report("a", 1000)
		f.report("b", 500)
		f.report("c", 500)
		f.step(time.Second)
	}
	require.InDelta(t, 0.5, f.report("a", 1000), 1e-12)
	// c goes silent: its last report counts for the timeout (3 s).
	for range 3 {
		f.step(time.Second)
		f.report("b", 500)
		require.Less(t, f.report("a", 1000), 0.7)
	}
	f.step(time.Second)
	f.report("b", 500)
	require.InDelta(t, 2.0/3, f.report("a", 1000), 1e-12)
	require.InDelta(t, 1.0/3, f.report("b", 500), 1e-12)
	require.Equal(t, 1, f.table.expire(f.now))
	f.step(4 * time.Second)
	require.Equal(t, 0, f.table.expire(f.now), "a tenant without reports is forgotten")
}

// TestShareOddInput: unknown limits get the even split; unlimited tenants
// and garbage rates are handled.
func TestShareOddInput(t *testing.T) {
	f := newOwnerFixture(t)
	s, _ := f.table.report(f.now, "a", []*hopwatchv1.TenantDemand{
		{Limit: "bytes", Tenant: "acme", Rate: 5},
		{Limit: "spans", Tenant: "acme", Rate: -5},
	}, f.ms, f.limiters)
	// An unknown limit: the even split. A negative rate counts as 0: the
	// node gets an even part of what the silent members (warm-up) leave.
	require.InDelta(t, 1.0/3, s[0], 1e-12)
	require.InDelta(t, (1000-2000.0/3)/3/1000, s[1], 1e-12)
	require.NoError(t, f.limiters["spans"].SetTenantLimits(map[string]Limit{}))
	l := newTestLimiter(t, newFakeClock(), Limit{})
	s, _ = f.table.report(f.now, "a", []*hopwatchv1.TenantDemand{{Limit: "spans", Tenant: "acme", Rate: 5}}, f.ms, map[string]*Limiter{"spans": l})
	require.Equal(t, []float64{1}, s)
}
