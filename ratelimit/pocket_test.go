package ratelimit

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// leasing is a limit whose buckets lease: 10^6 units per second lets the
// pockets hold 1,000 units together (one millisecond of the rate).
var leasing = Limit{Rate: 1e6, Burst: 10000}

func TestLeaseSize(t *testing.T) {
	require.Equal(t, int64(500), leaseSize(1e6, 10000, 2))
	require.Equal(t, int64(1000), leaseSize(1e6, 10000, 1))
	require.Equal(t, int64(25), leaseSize(1e6, 100, 1), "a quarter of the burst at most")
	require.Zero(t, leaseSize(999, 1e6, 1), "under a thousand units per second: no lease")
	require.Zero(t, leaseSize(1e9, 0, 4))
	for procs := 1; procs <= 64; procs++ {
		require.LessOrEqual(t, leaseSize(1e6, 1e9, procs)*int64(procs), int64(1000))
	}
}

// TestLeaseExact: with the clock stopped, decisions that lease still admit
// exactly the burst, from one goroutine and from many; tokens left in the
// pockets of goroutines that stopped are taken back by the next refusal.
func TestLeaseExact(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, leasing)
	require.Equal(t, 10000, admitN(l, "acme", 20000, 1))
	require.Equal(t, 1000, admitN(l, "acme", 1000, 0), "zero-unit batches always pass")
	clock.Step(time.Millisecond)
	require.Equal(t, 1000, admitN(l, "acme", 2000, 1))

	l = newTestLimiter(t, clock, leasing)
	var total atomic.Int64
	var wg sync.WaitGroup
	for range 64 {
		wg.Go(func() { total.Add(int64(admitN(l, "acme", 300, 1))) })
	}
	wg.Wait()
	require.LessOrEqual(t, total.Load(), int64(10000))
	total.Add(int64(admitN(l, "acme", 10000, 1))) // spends what the others left
	require.Equal(t, int64(10000), total.Load())
	a, r := l.tenants.load("acme").counts()
	require.Equal(t, int64(10000), a)
	require.Equal(t, int64(64*300+10000-10000), r)
}

// TestLeaseStranded: tokens leased by a processor that then stops deciding
// are not lost: a refusal elsewhere takes them back.
func TestLeaseStranded(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, leasing)
	require.True(t, l.Allow("acme").Allowed)
	tn := l.tenants.load("acme")
	// Move every leased token to the pocket of another processor than
	// this goroutine's (as far as the goroutine stays where it is; with
	// one processor, its own): the total is the burst all the same.
	var left int64
	for i := range tn.pockets {
		left += tn.pockets[i].tokens.Swap(0)
	}
	require.Positive(t, left)
	tn.pockets[(procHint()+1)%len(tn.pockets)].tokens.Store(left)
	require.Equal(t, 9999, admitN(l, "acme", 20000, 1))
}

// TestLeaseAfterPause: after a pause the pockets' tokens come on top of a
// full bucket, by at most one millisecond of the rate.
func TestLeaseAfterPause(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, leasing)
	var wg sync.WaitGroup
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Go(func() { admitN(l, "acme", 10, 1) }) // leases on every processor it runs on
	}
	wg.Wait()
	clock.Step(time.Hour)
	got := admitN(l, "acme", 20000, 1)
	require.GreaterOrEqual(t, got, 10000)
	require.LessOrEqual(t, got, 10000+1000)
}

// TestLeaseReconfigure: a lowered burst caps the pockets' tokens too.
func TestLeaseReconfigure(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, leasing)
	require.True(t, l.Allow("acme").Allowed)
	var pocketed int64
	tn := l.tenants.load("acme")
	for i := range tn.pockets {
		pocketed += tn.pockets[i].tokens.Load()
	}
	require.Positive(t, pocketed)
	require.NoError(t, l.SetTenantLimits(map[string]Limit{"acme": {Rate: 1e6, Burst: 100}}))
	require.Equal(t, 100, admitN(l, "acme", 1000, 1))
}

// TestNoLeaseNearLimit: a bucket that holds the batch but not a lease
// besides admits without leasing.
func TestNoLeaseNearLimit(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, leasing)
	require.True(t, l.AllowN("acme", 9800).Allowed)
	tn := l.tenants.load("acme")
	var pocketed int64
	for i := range tn.pockets {
		pocketed += tn.pockets[i].tokens.Swap(0)
	}
	require.Zero(t, pocketed, "200 left, a lease is %d", tn.b.Load().lease)
}
