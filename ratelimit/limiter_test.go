package ratelimit

import (
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// TestExactCounts: a bucket admits exactly its burst at once, then exactly
// rate × elapsed, counted on the fake monotonic clock, for rates from a
// fraction of a unit to a gigabyte per second.
func TestExactCounts(t *testing.T) {
	f := func(lim Limit, steps []time.Duration, want []int) {
		t.Helper()
		clock := newFakeClock()
		l := newTestLimiter(t, clock, lim)
		for i, d := range steps {
			clock.Step(d)
			// Ask for more than can be there, one unit at a time.
			got := admitN(l, "acme", int(lim.Burst)+10, 1)
			require.Equal(t, want[i], got, "rate %v burst %d, step %d (+%v)", lim.Rate, lim.Burst, i, d)
		}
	}
	f(Limit{Rate: 100, Burst: 10}, []time.Duration{0, 50 * time.Millisecond, 10 * time.Millisecond, time.Hour},
		[]int{10, 5, 1, 10})
	// 3 per second: 333.33 ms per unit, no drift over many steps.
	f(Limit{Rate: 3, Burst: 1},
		[]time.Duration{0, 333 * time.Millisecond, 334 * time.Millisecond, 333 * time.Millisecond, 333 * time.Millisecond, 334 * time.Millisecond},
		[]int{1, 0, 1, 1, 0, 1})
	// Half a unit per second.
	f(Limit{Rate: 0.5, Burst: 1}, []time.Duration{0, time.Second, time.Second, 1999 * time.Millisecond, time.Millisecond},
		[]int{1, 0, 1, 0, 1})
	// A gigabyte per second: a thousand bytes per microsecond, exactly.
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 1e9, Burst: 1e6})
	require.True(t, l.AllowN("acme", 1e6).Allowed)
	clock.Step(time.Microsecond)
	require.False(t, l.AllowN("acme", 1001).Allowed)
	require.True(t, l.AllowN("acme", 1000).Allowed)
	require.False(t, l.AllowN("acme", 1).Allowed)
}

// TestLongRun: over a simulated day of decisions every 10 ms, the admitted
// count is rate × time + burst, to the unit.
func TestLongRun(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 1234.5, Burst: 100})
	var total int64
	for range 24 * 3600 * 100 {
		clock.Step(10 * time.Millisecond)
		for {
			d := l.AllowN("acme", 7)
			if !d.Allowed {
				break
			}
			total += 7
		}
	}
	// The bucket is made full (100) at the first decision, 10 ms in:
	// 1234.5/s × 86399.99 s + 100 = 106,660,887.655; batches of 7 leave
	// less than 7.
	want := int64(106660887)
	require.LessOrEqual(t, total, want)
	require.Greater(t, total, want-7)
}

// TestFixedRate: token time never runs behind the exact figure and is at
// most one token ahead, for random rates and times.
func TestFixedRate(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		rate := math.Exp(r.Float64()*math.Log(maxRate/1e-3)) * 1e-3 // 0.001 to 1e12 per s
		d := r.Int64N(int64(time.Hour))
		b := newBucket(0, Limit{Rate: rate, Burst: 1}, Limit{Rate: rate, Burst: 1}, 0, 1)
		got := b.tokensAt(d)
		exact := new(big.Rat).Mul(new(big.Rat).SetFloat64(rate), big.NewRat(d, 1e9))
		floor := new(big.Int).Quo(exact.Num(), exact.Denom())
		require.True(t, floor.IsInt64())
		require.GreaterOrEqual(t, got, floor.Int64(), "rate %v d %v", rate, d)
		require.LessOrEqual(t, got, floor.Int64()+1+floor.Int64()>>50, "rate %v d %v", rate, d)
	}
}

// TestBurst: a quiet tenant takes its burst at once and then waits;
// RetryAfter says how long a batch of the same size waits; a batch larger
// than the burst never fits, and Local says so.
func TestBurst(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 10, Burst: 20})
	d := l.AllowN("acme", 15)
	require.True(t, d.Allowed)
	require.Zero(t, d.RetryAfter)
	require.Equal(t, Limit{Rate: 10, Burst: 20}, d.Global())
	require.Equal(t, Limit{Rate: 10, Burst: 20}, d.Local())

	d = l.AllowN("acme", 8) // 5 left: 3 missing at 10/s
	require.False(t, d.Allowed)
	require.Equal(t, 300*time.Millisecond, d.RetryAfter)
	clock.Step(299 * time.Millisecond)
	require.False(t, l.AllowN("acme", 8).Allowed)
	clock.Step(time.Millisecond)
	require.True(t, l.AllowN("acme", 8).Allowed)

	d = l.AllowN("acme", 21)
	require.False(t, d.Allowed)
	require.Greater(t, int64(21), d.Local().Burst)

	// Tenants have their own buckets.
	require.True(t, l.AllowN("other", 20).Allowed)
	// Zero and negative batches are admitted and cost nothing.
	require.True(t, l.AllowN("empty", 0).Allowed)
	require.True(t, l.AllowN("empty", -5).Allowed)
	require.True(t, l.AllowN("empty", 20).Allowed)
}

// TestDefaults: a zero default rate admits everything; a zero burst is
// one second of the rate.
func TestDefaults(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{})
	for range 1000 {
		require.True(t, l.AllowN("acme", 1e9).Allowed)
	}
	l = newTestLimiter(t, clock, Limit{Rate: 50})
	require.Equal(t, Limit{Rate: 50, Burst: 50}, l.Limit("acme"))
	require.Equal(t, 50, admitN(l, "acme", 100, 1))
}

// TestReturnN: units given back are there for the next batch, up to the
// burst.
func TestReturnN(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 10, Burst: 20})
	require.True(t, l.AllowN("acme", 20).Allowed)
	require.False(t, l.AllowN("acme", 5).Allowed)
	l.ReturnN("acme", 5)
	require.True(t, l.AllowN("acme", 5).Allowed)
	l.ReturnN("acme", 1000) // more than was taken: the bucket is just full
	require.Equal(t, 20, admitN(l, "acme", 30, 1))
	l.ReturnN("unknown", 5)
}

// TestWallClockJump: the wall clock jumps an hour back and forth while the
// monotonic clock moves as usual; the limiter admits exactly what it would
// without the jumps.
func TestWallClockJump(t *testing.T) {
	run := func(jump bool) []int {
		clock := newFakeClock()
		l := newTestLimiter(t, clock, Limit{Rate: 100, Burst: 10})
		var got []int
		for i := range 20 {
			if jump {
				clock.JumpWall(time.Duration(1-2*(i%2)) * time.Hour)
			}
			clock.Step(37 * time.Millisecond)
			got = append(got, admitN(l, "acme", 50, 1))
		}
		return got
	}
	clock := newFakeClock()
	before := clock.Wall()
	clock.JumpWall(-time.Hour)
	require.Equal(t, -time.Hour, clock.Wall().Sub(before), "the fake wall clock jumps")
	require.Equal(t, run(false), run(true))
	// 3.7 units per step: floor(3.7k) - floor(3.7(k-1)).
	require.Equal(t, []int{10, 3, 4, 4, 3, 4, 4, 3, 4, 4, 4, 3, 4, 4, 3, 4, 4, 3, 4, 4}, run(true))
}

// TestMonotonicClock: the real clock is read through time.Since, whose
// origin carries a monotonic reading; it never goes back.
func TestMonotonicClock(t *testing.T) {
	c := MonotonicClock().(monoClock)
	require.True(t, strings.Contains(c.start.String(), "m="), "the origin has a monotonic reading")
	prev := c.Now()
	for range 1000 {
		now := c.Now()
		require.GreaterOrEqual(t, now, prev)
		prev = now
	}
}

// TestLimitsAtRuntime: overrides apply to known and new tenants, keep the
// bucket's level (up to the new size), fall back to the default when
// removed, and an invalid one is refused by tenant name.
func TestLimitsAtRuntime(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 10, Burst: 10})
	require.Equal(t, 10, admitN(l, "acme", 20, 1))

	require.NoError(t, l.SetTenantLimits(map[string]Limit{"acme": {Rate: 100}, "beta": {Rate: 1, Burst: 3}}))
	require.Equal(t, Limit{Rate: 100, Burst: 10}, l.Limit("acme"))
	// acme's bucket was empty and stays empty: no free refill.
	require.Equal(t, 0, admitN(l, "acme", 20, 1))
	clock.Step(50 * time.Millisecond) // 5 at 100/s
	require.Equal(t, 5, admitN(l, "acme", 20, 1))
	// beta is new and starts full at its override.
	require.Equal(t, 3, admitN(l, "beta", 20, 1))

	// Lowered burst: the level is cut to it.
	clock.Step(time.Second)
	require.NoError(t, l.SetTenantLimits(map[string]Limit{"acme": {Rate: 100, Burst: 4}}))
	require.Equal(t, 4, admitN(l, "acme", 20, 1))
	// beta's override is gone: the default applies.
	require.Equal(t, Limit{Rate: 10, Burst: 10}, l.Limit("beta"))

	err := l.SetTenantLimits(map[string]Limit{"bad": {Rate: math.NaN()}, "neg": {Burst: -1}, "acme": {Rate: 1000}})
	require.ErrorIs(t, err, ErrInvalidLimit)
	require.ErrorContains(t, err, "tenant bad")
	require.ErrorContains(t, err, "tenant neg")
	require.Equal(t, Limit{Rate: 10, Burst: 10}, l.Limit("bad"))
	require.Equal(t, Limit{Rate: 1000, Burst: 10}, l.Limit("acme"))
}

// TestConcurrentExact: goroutines racing on one tenant with the clock
// stopped admit exactly the burst, never more (x/time/rate over-admits
// here: golang/go#71360), also while the tenant's limit changes under
// them.
func TestConcurrentExact(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 1000, Burst: 5000})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	stop := make(chan struct{})
	wg.Go(func() {
		// Bursts alternate between 5000 and 4000: the level only goes
		// down, so the total stays at most 5000.
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = l.SetTenantLimits(map[string]Limit{"acme": {Burst: int64(5000 - 1000*(i%2))}})
		}
	})
	var workers sync.WaitGroup
	for range 64 {
		workers.Go(func() {
			var n int64
			for range 500 {
				if l.AllowN("acme", 1).Allowed {
					n++
				}
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	workers.Wait()
	close(stop)
	wg.Wait()
	require.LessOrEqual(t, total, int64(5000))
	require.Positive(t, total)

	// Without reconfiguration: exactly the burst.
	l = newTestLimiter(t, clock, Limit{Rate: 1000, Burst: 5000})
	total = 0
	for range 64 {
		workers.Go(func() {
			n := int64(admitN(l, "acme", 500, 1))
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	workers.Wait()
	require.Equal(t, int64(5000), total)
}

// TestNoAllocs: a decision on a known tenant allocates nothing.
func TestNoAllocs(t *testing.T) {
	l := newTestLimiter(t, MonotonicClock(), Limit{Rate: 1e6, Burst: 1e6})
	l.Allow("acme")
	l.Allow("beta")
	require.Zero(t, testing.AllocsPerRun(1000, func() {
		l.AllowN("acme", 10)
		l.AllowN("beta", 1e9) // refused
		l.ReturnN("acme", 10)
	}))
}

// TestEviction: a tenant idle for the idle timeout is forgotten, with its
// series, once its bucket has refilled; a decision afterwards starts it
// again, full.
func TestEviction(t *testing.T) {
	clock := newFakeClock()
	reg := prometheus.NewPedanticRegistry()
	l, err := New(Options{Name: "spans", Default: Limit{Rate: 1, Burst: 100}, IdleTimeout: time.Minute, Clock: clock}, reg, nil)
	require.NoError(t, err)
	require.Equal(t, 100, admitN(l, "slow", 200, 1)) // empty: refills in 100 s
	require.True(t, l.Allow("quick").Allowed)        // refills in 1 s
	require.True(t, l.Allow("busy").Allowed)
	series := func() int {
		n, err := testutil.GatherAndCount(reg, "hopwatch_ratelimit_admitted_total")
		require.NoError(t, err)
		return n
	}
	require.Equal(t, 3, series())
	require.Equal(t, 3.0, testutil.ToFloat64(l.metrics.tenants))

	for range 6 {
		clock.Step(10 * time.Second)
		l.Allow("busy")
		l.sweep(clock.Now(), nil)
	}
	require.Equal(t, 3, series(), "60 s is the timeout, measured from the first sweep that saw no decision")
	clock.Step(10 * time.Second)
	l.Allow("busy")
	l.sweep(clock.Now(), nil)
	require.Equal(t, 2, series())
	require.Nil(t, l.tenants.load("quick"))
	require.NotNil(t, l.tenants.load("slow"), "slow's bucket is not full yet")
	clock.Step(30 * time.Second)
	l.sweep(clock.Now(), nil)
	require.Nil(t, l.tenants.load("slow"))
	require.Equal(t, 1.0, testutil.ToFloat64(l.metrics.tenants))
	require.Equal(t, 2.0, testutil.ToFloat64(l.metrics.evictions))

	// Back: a new, full bucket and new series.
	require.Equal(t, 100, admitN(l, "slow", 200, 1))
	require.Equal(t, 2, series())
	require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP hopwatch_ratelimit_refused_total Units of a tenant this node refused because the tenant was over its limit.
# TYPE hopwatch_ratelimit_refused_total counter
hopwatch_ratelimit_refused_total{limit="spans",tenant="busy"} 0
hopwatch_ratelimit_refused_total{limit="spans",tenant="slow"} 100
`), "hopwatch_ratelimit_refused_total"))
}

// TestEvictionRace: decisions racing evictions are never lost: each either
// lands in the record that is evicted (whose bucket was full) or in a new
// one.
func TestEvictionRace(t *testing.T) {
	clock := newFakeClock()
	l, err := New(Options{Name: "spans", Default: Limit{Rate: 1e9, Burst: 1e9}, IdleTimeout: time.Nanosecond, Clock: clock}, nil, nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 2000 {
				l.Allow(fmt.Sprint("t", i%2))
			}
		})
	}
	wg.Go(func() {
		for range 2000 {
			clock.Step(time.Second)
			l.sweep(clock.Now(), nil)
		}
	})
	wg.Wait()
}

// TestOptions: every invalid field is named.
func TestOptions(t *testing.T) {
	_, err := New(Options{Name: "Spans!", Default: Limit{Rate: -1, Burst: -1}, IdleTimeout: -1}, nil, nil)
	require.ErrorContains(t, err, "Name")
	require.ErrorContains(t, err, "Default rate")
	require.ErrorContains(t, err, "Default burst")
	require.ErrorContains(t, err, "IdleTimeout")
	o := DefaultOptions()
	l, err := New(o, nil, nil)
	require.NoError(t, err)
	require.Equal(t, "spans", l.Name())
	require.True(t, l.Allow("x").Allowed)
}

// TestLayout: the padding the comments promise.
func TestLayout(t *testing.T) {
	require.Equal(t, uintptr(2*cacheLine), unsafe.Sizeof(bucket{}))
	require.Equal(t, uintptr(cacheLine), unsafe.Offsetof(bucket{}.lim))
	require.Equal(t, uintptr(cacheLine), unsafe.Offsetof(tenant{}.mu))
	require.Equal(t, uintptr(cacheLine), unsafe.Sizeof(pocket{}))
	// Pocket arrays start on a line: their size classes are multiples of
	// 64 bytes.
	for procs := 1; procs <= 256; procs++ {
		ps := make([]pocket, procs)
		require.Zero(t, uintptr(unsafe.Pointer(&ps[0]))%cacheLine, "%d pockets", procs)
	}
}

// TestCountsAcrossReconfiguration: decisions racing reconfigurations are
// all counted, whichever bucket they were decided on.
func TestCountsAcrossReconfiguration(t *testing.T) {
	clock := newFakeClock()
	l := newTestLimiter(t, clock, Limit{Rate: 1e9, Burst: 1e9})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			_ = l.SetTenantLimits(map[string]Limit{"acme": {Rate: float64(1e9 + i%2)}})
			clock.Step(time.Millisecond)
		}
	})
	var workers sync.WaitGroup
	for range 8 {
		workers.Go(func() {
			for range 20000 {
				l.AllowN("acme", 3)
				l.AllowN("acme", 2e9) // refused: larger than the burst
			}
		})
	}
	workers.Wait()
	close(stop)
	wg.Wait()
	a, r := l.tenants.load("acme").counts()
	require.Equal(t, int64(8*20000*3), a)
	require.Equal(t, int64(8*20000*2e9), r)
	clock.Step(2 * time.Second)
	l.sweep(clock.Now(), nil)
	a, r = l.tenants.load("acme").counts()
	require.Equal(t, int64(8*20000*3), a)
	require.Equal(t, int64(8*20000*2e9), r)
}

// TestManyTenants: tenants created in a burst, from many goroutines, are
// each created once and all found; evicted ones leave the index.
func TestManyTenants(t *testing.T) {
	clock := newFakeClock()
	l, err := New(Options{Name: "spans", Default: Limit{Rate: 10, Burst: 10}, IdleTimeout: time.Second, Clock: clock}, nil, nil)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 5000 {
				l.AllowN(fmt.Sprint("t", (i*7+g)%5000), 1)
			}
		})
	}
	wg.Wait()
	seen := map[string]int{}
	l.tenants.each(func(t *tenant) { seen[t.id]++ })
	require.Len(t, seen, 5000)
	var total int64
	for i := range 5000 {
		total += l.Admitted(fmt.Sprint("t", i))
	}
	require.Equal(t, int64(8*5000), total, "each decision landed on the one record of its tenant")
	require.Equal(t, 5000.0, testutil.ToFloat64(l.metrics.tenants))

	clock.Step(time.Minute)
	l.sweep(clock.Now(), nil) // sees no decision since the first sweep
	clock.Step(time.Minute)
	l.sweep(clock.Now(), nil)
	require.Equal(t, 0.0, testutil.ToFloat64(l.metrics.tenants))
	require.Nil(t, l.tenants.load("t1"))
	require.True(t, l.Allow("t1").Allowed)
	require.NotNil(t, l.tenants.load("t1"))
}
