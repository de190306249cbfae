package ratelimit

import (
	"sync/atomic"
	_ "unsafe" // go:linkname
)

// Per-processor pockets.
//
// A decision that read the clock and took its units from the tenant's one
// bucket word would move that word's cache line to its core every time:
// under contention the line, not the arithmetic, is the cost, and with one
// goroutine the clock read is. So each tenant has one pocket per
// processor (a Go P): a cache line holding tokens leased from the bucket
// and the counts of the decisions made there. A decision first spends
// from its processor's pocket: one compare-and-swap on a line no other
// core writes, no clock read. Only when the pocket cannot cover the batch
// does it go to the bucket, reading the clock, and then it takes the batch
// plus a lease for the pocket in the same compare-and-swap, if the bucket
// holds that much.
//
// What leasing changes, and bounds:
//   - Counts stay exact: tokens only move between the bucket and pockets,
//     and every admitted unit was a token.
//   - Leased tokens count as taken from the bucket's point of view, which
//     goes on refilling up to its burst meanwhile: after a pause, the
//     pockets' tokens come on top of a full bucket. Leases are small to
//     bound this: all pockets together hold at most one millisecond of the
//     bucket's rate (and a quarter of its burst), so a window of any
//     length admits at most rate × window + burst + rate × 1 ms.
//   - Tokens left in the pocket of a processor that stops deciding for the
//     tenant would be refused to the others: a decision that the bucket
//     refuses first takes every pocket's tokens back into the bucket (once
//     per decision, and only if a lease was made since the last time).
//   - A reconfiguration takes the pockets' tokens back into the old
//     bucket's level before building the new bucket, so caps apply to
//     them; an eviction empties them.
//   - Leases are made only when the bucket holds the batch and a whole
//     lease besides, so near the limit (decisions alternating between
//     admitted and refused) every decision goes to the bucket, exactly as
//     without pockets.
//
// Buckets whose rate is below a thousand units per second per processor
// never lease (a lease would be under one unit): every decision on them is
// exact to the token and to the nanosecond.

// pocket is one processor's part of a tenant. Its line is written by the
// decisions made on that processor, read by scrapes and sweeps, and
// emptied by reclaims (a refusal, a reconfiguration, an eviction).
type pocket struct {
	tokens   atomic.Int64 // leased from the bucket and not spent
	admitted atomic.Int64 // units admitted by decisions made here
	refused  atomic.Int64 // units refused by decisions made here
	_        [cacheLine - 24]byte
}

// leaseWindow bounds the tokens all of a tenant's pockets hold: this much
// of its bucket's rate, in nanoseconds.
const leaseWindow = int64(1e6)

// leaseSize returns the tokens one lease adds to a pocket for a bucket of
// rate perSec and the given burst, with procs pockets.
func leaseSize(perSec float64, burst int64, procs int) int64 {
	p := int64(max(procs, 1))
	byRate := int64(perSec * float64(leaseWindow) / 1e9 / float64(p))
	return max(0, min(byRate, burst/(4*p)))
}

// spend takes n tokens from the pocket if it holds them.
func (p *pocket) spend(n int64) bool {
	for {
		v := p.tokens.Load()
		if v < n {
			return false
		}
		if p.tokens.CompareAndSwap(v, v-n) {
			return true
		}
	}
}

// pocket returns the pocket of the processor running the caller. The
// goroutine may move to another processor right after: the pocket is then
// shared for a moment, which the atomics make safe and costs only speed.
func (t *tenant) pocket() *pocket {
	p := procHint()
	if uint(p) >= uint(len(t.pockets)) { // GOMAXPROCS raised since
		p %= len(t.pockets)
	}
	return &t.pockets[p]
}

// reclaim empties every pocket and returns the tokens they held. The hint
// is cleared first: a lease racing the reclaim sets it again after adding
// its tokens, so tokens are never in a pocket with the hint clear.
func (t *tenant) reclaim() int64 {
	t.leased.Store(false)
	var sum int64
	for i := range t.pockets {
		sum += t.pockets[i].tokens.Swap(0)
	}
	return sum
}

// procHint returns the index of the processor (P) the goroutine runs on,
// in [0, GOMAXPROCS). runtime.procPin is the runtime's own way to get it
// (sync.Pool uses it); the runtime keeps it reachable by linkname for
// packages outside the standard library. Pinning and unpinning at once
// costs about 3 ns, against 15 ns or more for sync.Pool's Get and Put.
func procHint() int {
	p := runtime_procPin()
	runtime_procUnpin()
	return p
}

//go:linkname runtime_procPin runtime.procPin
func runtime_procPin() int

//go:linkname runtime_procUnpin runtime.procUnpin
func runtime_procUnpin()
