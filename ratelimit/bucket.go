package ratelimit

import (
	"math"
	"math/bits"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"
)

// cacheLine is the unit of padding between fields written by different
// decisions. 64 bytes on amd64 and most arm64; where lines are 128 bytes
// (Apple M-series) two hot fields may share one, which costs speed only.
const cacheLine = 64

// retired marks a bucket that a reconfiguration has replaced: a decision
// that reads it loads the tenant's current bucket again. Live values of
// bucket.full are never negative.
const retired = math.MinInt64

// bucket is one tenant's token bucket on this node, in the form of the
// generic cell rate algorithm: the whole state is one word, full, the token
// time at which the bucket will be full again, so a decision is one
// compare-and-swap and can never check and then set non-atomically.
//
// Token time is the number of tokens accrued since the bucket's epoch at
// its rate: an integer, computed from the monotonic clock with a 128-bit
// fixed-point product (no division, no float rounding), so counts are
// exact and do not drift. The bucket holds burst - max(0, full - now)
// tokens at token time now.
//
// A bucket never changes its rate or burst: a new limit or share builds a
// new bucket and retires the old one by swapping retired into its full
// word, which yields the final state atomically (see tenant.reconfigure).
//
// Layout: full and the constants a decision reads share the first cache
// line: decisions that reach the bucket need the line anyway, and most
// decisions do not reach it (they spend from their processor's pocket,
// pocket.go), so the line is rarely written; a refusal only reads it. The
// limits that Decisions point to have the second line. Buckets are 128
// bytes, a size class whose objects are 128-byte aligned. The counts of
// decisions are kept in the pockets, on the deciding core's line.
type bucket struct {
	full atomic.Int64
	bucketConst
	_   [cacheLine - 8 - unsafe.Sizeof(bucketConst{})]byte
	lim limits
	_   [cacheLine - unsafe.Sizeof(limits{})]byte
}

// bucketConst is what a decision reads of a bucket; it never changes
// after construction.
type bucketConst struct {
	epoch int64  // monotonic ns at token time 0
	rate  uint64 // tokens per ns, fixed point with shift fractional bits, rounded up
	shift uint8
	// unlimited buckets admit everything; gone is the bucket of an evicted
	// tenant, whose decisions look the tenant up again.
	unlimited, gone bool
	lease           int64   // tokens a pocket leases with a decision (leaseSize)
	burst           int64   // lim.local.Burst
	perSec          float64 // lim.local.Rate
}

// limits are a bucket's local and global limits; Decisions point to them.
type limits struct {
	// local is the rate (tokens per second) and burst of this bucket: the
	// global limit for an unlimited bucket.
	local  Limit
	global Limit
}

// newBucket makes a bucket admitting local.Rate per second with room for
// local.Burst, holding level tokens at monotonic time now, for a tenant
// with procs pockets.
func newBucket(now int64, local, global Limit, level int64, procs int) *bucket {
	b := &bucket{bucketConst: bucketConst{epoch: now, burst: local.Burst, perSec: local.Rate}, lim: limits{local: local, global: global}}
	if global.Unlimited() {
		b.unlimited = true
		b.lim.local = global
		return b
	}
	b.rate, b.shift = fixedRate(local.Rate)
	b.lease = leaseSize(local.Rate, local.Burst, procs)
	b.full.Store(local.Burst - min(max(level, 0), local.Burst))
	return b
}

// fixedRate returns rate/1e9 (tokens per ns) as fixed point with as many
// fractional bits as keep the value below 2^52, where float64 holds
// integers exactly; rounded up, so that token time is never behind the
// exact figure and lands on integers where the exact figure does. It is
// ahead by less than one token plus one in 2^50 of the tokens accrued (at
// most three tokens at maxRate over the hour between re-basings).
func fixedRate(rate float64) (uint64, uint8) {
	if rate <= 0 {
		return 0, 0
	}
	_, exp := math.Frexp(rate / 1e9) // rate/1e9 < 2^exp
	shift := min(63, 52-exp)
	x := math.Ldexp(rate/1e9, shift)
	return uint64(math.Ceil(x)) + 1, uint8(shift)
}

// tokensAt returns the token time at monotonic time now: tokens accrued
// since the epoch. A clock reading taken before the epoch (by a decision
// that raced a reconfiguration) counts as the epoch.
func (b *bucket) tokensAt(now int64) int64 {
	d := now - b.epoch
	if d <= 0 {
		return 0
	}
	hi, lo := bits.Mul64(uint64(d), b.rate)
	return int64(hi<<(64-b.shift) | lo>>b.shift)
}

// level returns the tokens in the bucket given its full word.
func (b *bucket) level(full, tokenNow int64) int64 {
	return b.burst - max(0, full-tokenNow)
}

// wait returns how long until need more tokens have accrued; never, at a
// rate of 0 (a share of 0), reported as ifNever.
func (b *bucket) wait(need int64, ifNever time.Duration) time.Duration {
	if b.perSec <= 0 {
		return ifNever
	}
	return time.Duration(math.Ceil(float64(need) * 1e9 / b.perSec))
}

// outcome of one attempt on a bucket.
type outcome uint8

const (
	admitted outcome = iota
	refused
	stale // the bucket was retired: load the tenant's current one
)

// take admits n tokens at monotonic time now if the bucket holds them,
// and extra tokens more (a pocket's lease) if it holds those as well. It
// returns the extra tokens taken, and on refusal how many tokens are
// missing. It spins only while another decision's compare-and-swap wins,
// which means that decision made progress (lock-free); the backoff keeps
// many cores from storming one line. A refusal writes nothing. The
// caller admits on an unlimited bucket without reading the clock, so b is
// limited here.
func (b *bucket) take(now, n, extra int64) (o outcome, got, missing int64) {
	t := b.tokensAt(now)
	for spins := 0; ; spins++ {
		f := b.full.Load()
		if f == retired {
			return stale, 0, 0
		}
		base := max(f, t)
		held := t + b.burst - base
		if held < n {
			return refused, 0, n - held
		}
		e := int64(0)
		if extra > 0 && held-n >= extra {
			e = extra
		}
		if b.full.CompareAndSwap(f, base+n+e) {
			return admitted, e, 0
		}
		backoff(spins)
	}
}

// give returns n tokens taken by take (a batch admitted here and refused
// by another limit). The bucket never holds more than its burst.
func (b *bucket) give(now, n int64) outcome {
	if b.unlimited {
		return admitted
	}
	t := b.tokensAt(now)
	for spins := 0; ; spins++ {
		f := b.full.Load()
		if f == retired {
			return stale
		}
		if f <= t {
			return admitted // already full
		}
		if b.full.CompareAndSwap(f, max(f-n, t)) {
			return admitted
		}
		backoff(spins)
	}
}

// retire ends the bucket and returns its level at monotonic time now.
func (b *bucket) retire(now int64) int64 {
	f := b.full.Swap(retired)
	if b.unlimited || f == retired {
		return math.MaxInt64
	}
	return b.level(f, b.tokensAt(now))
}

// backoff after a lost compare-and-swap: nothing for the first few (on a
// few cores a retry almost always wins), then yield the processor so that
// a burst of goroutines on one tenant does not turn into a CAS storm.
// Measured on 2 vCPU (BenchmarkAllowN/contended): fewer than one retry per
// hundred decisions, so the yield is for larger machines.
func backoff(spins int) {
	if spins >= 4 {
		runtime.Gosched()
	}
}
