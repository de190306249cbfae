// Package window computes exact quantiles of raw latency samples over
// sliding time windows: for every step t of a range, the q-quantiles of the
// samples in (t−window, t], weights honoured.
//
// The definition is Prometheus's quantile_over_time: the window's n values
// sorted, rank = q·(n−1), linear interpolation between the values at
// floor(rank) and floor(rank)+1. A sample of weight w counts as w samples
// of its value, so an unweighted window gives exactly what
// quantile_over_time gives on the same values.
//
// The algorithm cuts time into panes at every window edge (each step t
// contributes t−window and t), so that each window is a run of whole panes
// and each sample belongs to one pane. A pane is sorted once, when the first
// window that needs it is computed, and released when the last one has
// passed. A quantile of a window is then found by searching the value
// domain, counting the values at or below a candidate with a binary search
// per pane: the cost per step is O(quantiles · panes · log(pane) · 64), not
// O(window size), and no window is re-sorted. Runs (chunks) are read in the
// order of their first timestamp and only when the computation reaches it,
// so memory holds the current window and the runs overlapping it, never the
// whole range.
package window

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"

	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// Errors.
var (
	// ErrTooManySamples: the samples held at once exceed Computer.MaxSamples.
	ErrTooManySamples = errors.New("hopwatch/window: query processing would load too many samples into memory")
	// errRunOrder: a run held samples before its MinT; a bug in the caller.
	errRunOrder = errors.New("hopwatch/window: run holds a sample before its MinT")
)

// Range is the evaluation grid, in Unix nanoseconds: one window
// (t−Window, t] for each t = Start, Start+Step, ... ≤ End.
type Range struct {
	Start, End, Step, Window int64
}

// Validate reports what makes r unusable.
func (r Range) Validate() error {
	var errs []error
	if r.End < r.Start {
		errs = append(errs, fmt.Errorf("end %d before start %d", r.End, r.Start))
	}
	if r.Step <= 0 {
		errs = append(errs, fmt.Errorf("step %d must be positive", r.Step))
	}
	if r.Window <= 0 {
		errs = append(errs, fmt.Errorf("window %d must be positive", r.Window))
	}
	return errors.Join(errs...)
}

// Steps is the number of evaluation times.
func (r Range) Steps() int {
	if r.Step <= 0 || r.End < r.Start {
		return 0
	}
	return int((r.End-r.Start)/r.Step) + 1
}

// Run is a piece of a series: samples sorted by time within [MinT, MaxT].
// Runs of one computation may overlap in time and come from many series
// (a group's windows hold the samples of all its series).
type Run struct {
	MinT, MaxT int64
	// Load appends the run's samples to dst (dst is reset by the caller).
	// It is called at most once, when the computation reaches MinT.
	Load func(dst *chunkenc.Samples) error
}

// Computer evaluates window quantiles. It keeps its scratch memory between
// calls; it is not safe for concurrent use. The zero value is ready.
type Computer struct {
	// MaxSamples bounds the samples held at once (0: no bound).
	MaxSamples int

	bounds []int64 // pane boundaries: pane j is (bounds[j-1], bounds[j]]
	lo, hi []int32 // per step: the window is panes lo+1..hi
	used   []bool  // pane j lies in some window
	panes  []pane
	order  []int
	buf    chunkenc.Samples
	free   []pane
	held   int
	sorter sorter
}

// pane holds the samples of one pane: appended in arrival order, sorted by
// value before the first window using it is evaluated. w is nil while every
// weight is 1; once sorted it holds cumulative weights.
type pane struct {
	v      []int64
	w      []uint64
	sorted bool
}

func (p *pane) count() uint64 {
	if len(p.v) == 0 {
		return 0
	}
	if p.w != nil {
		return p.w[len(p.w)-1]
	}
	return uint64(len(p.v))
}

// countLE returns the weight of the values ≤ x.
func (p *pane) countLE(x int64) uint64 {
	i := upperBound(p.v, x)
	if i == 0 {
		return 0
	}
	if p.w != nil {
		return p.w[i-1]
	}
	return uint64(i)
}

// upperBound returns the number of values ≤ x in sorted v.
func upperBound(v []int64, x int64) int {
	lo, hi := 0, len(v)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if v[m] <= x {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Quantiles computes, for every step of r, the qs-quantiles of the samples
// of runs in the step's window, in seconds. It appends len(qs) values per
// step to vals (step-major) and the window's total weight per step to
// counts; a window without samples gets NaN values and count 0.
func (c *Computer) Quantiles(ctx context.Context, r Range, qs []float64, runs []Run, vals []float64, counts []uint64) ([]float64, []uint64, error) {
	if err := r.Validate(); err != nil {
		return vals, counts, fmt.Errorf("hopwatch/window: invalid range: %w", err)
	}
	defer c.reset()
	c.grid(r)
	c.order = c.order[:0]
	for i := range runs {
		c.order = append(c.order, i)
	}
	slices.SortFunc(c.order, func(a, b int) int { return cmpInt64(runs[a].MinT, runs[b].MinT) })
	if cap(c.panes) < len(c.bounds) {
		c.panes = make([]pane, len(c.bounds))
	}
	c.panes = c.panes[:len(c.bounds)]

	next, retired := 0, 1
	for i := range c.lo {
		if i&63 == 0 {
			if err := ctx.Err(); err != nil {
				return vals, counts, err
			}
		}
		lo, hi := int(c.lo[i]), int(c.hi[i])
		for next < len(c.order) && runs[c.order[next]].MinT <= c.bounds[hi] {
			if err := c.load(&runs[c.order[next]], retired); err != nil {
				return vals, counts, err
			}
			next++
		}
		for ; retired <= lo; retired++ {
			c.release(retired)
		}
		var total uint64
		for j := lo + 1; j <= hi; j++ {
			p := &c.panes[j]
			if !p.sorted {
				c.sortPane(p)
			}
			total += p.count()
		}
		counts = append(counts, total)
		for _, q := range qs {
			vals = append(vals, c.quantile(q, lo+1, hi+1, total))
		}
	}
	return vals, counts, nil
}

// grid computes the pane boundaries and each step's panes.
func (c *Computer) grid(r Range) {
	n := r.Steps()
	c.bounds = c.bounds[:0]
	// Merge the two ascending sequences t−Window and t.
	i, j := 0, 0
	for i < n || j < n {
		var b int64
		ti := r.Start + int64(i)*r.Step - r.Window
		tj := r.Start + int64(j)*r.Step
		if j >= n || i < n && ti <= tj {
			b = ti
			i++
		} else {
			b = tj
			j++
		}
		if len(c.bounds) == 0 || c.bounds[len(c.bounds)-1] != b {
			c.bounds = append(c.bounds, b)
		}
	}
	c.lo, c.hi = c.lo[:0], c.hi[:0]
	c.used = slices.Grow(c.used[:0], len(c.bounds))[:len(c.bounds)]
	clear(c.used)
	a, b := 0, 0
	for k := range n {
		t := r.Start + int64(k)*r.Step
		for c.bounds[a] < t-r.Window {
			a++
		}
		for c.bounds[b] < t {
			b++
		}
		c.lo, c.hi = append(c.lo, int32(a)), append(c.hi, int32(b))
		for p := a + 1; p <= b; p++ {
			c.used[p] = true
		}
	}
}

// load reads one run and scatters its samples into their panes. Samples in
// no window are dropped; none may fall in a pane already retired.
func (c *Computer) load(run *Run, retired int) error {
	c.buf.Reset()
	if err := run.Load(&c.buf); err != nil {
		return err
	}
	ts, lat, wt := c.buf.T, c.buf.Latency, c.buf.Weight
	if len(lat) != len(ts) || wt != nil && len(wt) != len(ts) {
		return fmt.Errorf("hopwatch/window: run columns differ: %d timestamps, %d latencies, %d weights", len(ts), len(lat), len(wt))
	}
	first, last := c.bounds[0], c.bounds[len(c.bounds)-1]
	j := 0
	for k, t := range ts {
		if t <= first || t > last {
			continue
		}
		// Runs are sorted by time, so the pane only moves forward; an
		// unsorted run costs a binary search per step back.
		if j == 0 || t <= c.bounds[j-1] {
			j = sort.Search(len(c.bounds), func(x int) bool { return c.bounds[x] >= t })
		}
		for c.bounds[j] < t {
			j++
		}
		if !c.used[j] {
			continue
		}
		if j < retired {
			return errRunOrder
		}
		p := &c.panes[j]
		if p.sorted {
			return errRunOrder
		}
		if len(p.v) == 0 && cap(p.v) == 0 && len(c.free) > 0 {
			f := c.free[len(c.free)-1]
			c.free = c.free[:len(c.free)-1]
			p.v, p.w = f.v[:0], nil
		}
		var w uint64 = 1
		if wt != nil {
			w = wt[k]
		}
		if w != 1 && p.w == nil {
			p.w = make([]uint64, len(p.v), cap(p.v))
			for x := range p.w {
				p.w[x] = 1
			}
		}
		p.v = append(p.v, lat[k])
		if p.w != nil {
			p.w = append(p.w, w)
		}
		c.held++
	}
	if c.MaxSamples > 0 && c.held > c.MaxSamples {
		return fmt.Errorf("%w (limit %d)", ErrTooManySamples, c.MaxSamples)
	}
	return nil
}

// release frees a pane no later window needs.
func (c *Computer) release(j int) {
	p := &c.panes[j]
	c.held -= len(p.v)
	if cap(p.v) > 0 {
		c.free = append(c.free, pane{v: p.v[:0]})
	}
	*p = pane{}
}

func (c *Computer) reset() {
	for j := range c.panes {
		c.release(j)
	}
	c.held = 0
	// Keep a bounded number of free buffers between calls.
	if len(c.free) > 64 {
		clear(c.free[64:])
		c.free = c.free[:64]
	}
}

// sortPane orders the pane by value; weights become cumulative.
func (c *Computer) sortPane(p *pane) {
	p.sorted = true
	p.v, p.w = c.sorter.sort(p.v, p.w)
	var acc uint64
	for i, w := range p.w {
		acc += w
		p.w[i] = acc
	}
}

// quantile computes the q-quantile of the panes [from, to) holding total
// weight, with quantile_over_time's arithmetic.
func (c *Computer) quantile(q float64, from, to int, total uint64) float64 {
	if total == 0 || math.IsNaN(q) {
		return math.NaN()
	}
	if q < 0 {
		return math.Inf(-1)
	}
	if q > 1 {
		return math.Inf(+1)
	}
	n := float64(total)
	rank := q * (n - 1)
	lowerIndex := math.Max(0, math.Floor(rank))
	upperIndex := math.Min(n-1, lowerIndex+1)
	weight := rank - math.Floor(rank)
	panes := c.panes[from:to]
	k := uint64(lowerIndex)
	lower, le := kth(panes, k)
	if weight == 0 {
		return seconds(lower)
	}
	upper := lower
	if ku := uint64(upperIndex); ku >= le {
		upper = successor(panes, lower)
	}
	return seconds(lower)*(1-weight) + seconds(upper)*weight
}

// seconds converts ns to the float the raw tier shows PromQL, so that both
// paths do the same arithmetic on the same float64 values.
func seconds(ns int64) float64 { return float64(ns) / 1e9 }

// kth returns the smallest value x with more than k weight at or below it
// (the value at 0-based rank k), and that weight.
func kth(panes []pane, k uint64) (int64, uint64) {
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for i := range panes {
		if v := panes[i].v; len(v) > 0 {
			lo, hi = min(lo, v[0]), max(hi, v[len(v)-1])
		}
	}
	le := func(x int64) uint64 {
		var n uint64
		for i := range panes {
			n += panes[i].countLE(x)
		}
		return n
	}
	for lo < hi {
		mid := lo + int64(uint64(hi-lo)>>1)
		if le(mid) > k {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo, le(lo)
}

// successor returns the smallest value greater than x in the panes.
func successor(panes []pane, x int64) int64 {
	best := int64(math.MaxInt64)
	for i := range panes {
		v := panes[i].v
		if j := upperBound(v, x); j < len(v) {
			best = min(best, v[j])
		}
	}
	return best
}

func cmpInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
