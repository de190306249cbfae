package window

import (
	"math/bits"
	"slices"
)

// Sorting a pane is most of the exact path's cost. Latencies are integers
// spanning a few dozen bits, so an LSD radix sort on the offset from the
// pane's minimum, 11 bits a pass, beats a comparison sort past a few
// hundred values.
const (
	radixBits      = 11
	radixBuckets   = 1 << radixBits
	radixThreshold = 256
)

// sorter holds the scratch memory of radix sorts.
type sorter struct {
	tmpV   []int64
	tmpW   []uint64
	counts [][radixBuckets]int
}

// sort orders v ascending, permuting w (when not nil) alongside. It
// returns the sorted slices, which may be the sorter's scratch: the
// caller's slices become the scratch in exchange.
func (s *sorter) sort(v []int64, w []uint64) ([]int64, []uint64) {
	n := len(v)
	if n < radixThreshold {
		if w == nil {
			slices.Sort(v)
		} else {
			insertionSortPairs(v, w)
		}
		return v, w
	}
	lo, hi := v[0], v[0]
	for _, x := range v[1:] {
		lo, hi = min(lo, x), max(hi, x)
	}
	span := uint64(hi) - uint64(lo)
	if hi-lo < 0 { // the range does not fit in 63 bits
		if w == nil {
			slices.Sort(v)
		} else {
			sortPairs(v, w)
		}
		return v, w
	}
	passes := (bits.Len64(span) + radixBits - 1) / radixBits
	if passes == 0 {
		return v, w
	}
	if cap(s.counts) < passes {
		s.counts = make([][radixBuckets]int, passes)
	}
	counts := s.counts[:passes]
	clear(counts)
	for _, x := range v {
		k := uint64(x) - uint64(lo)
		for p := range counts {
			counts[p][(k>>(p*radixBits))&(radixBuckets-1)]++
		}
	}
	s.tmpV = slices.Grow(s.tmpV[:0], n)[:n]
	src, dst := v, s.tmpV
	var srcW, dstW []uint64
	if w != nil {
		s.tmpW = slices.Grow(s.tmpW[:0], n)[:n]
		srcW, dstW = w, s.tmpW
	}
	for p := range counts {
		c := &counts[p]
		if c[0] == n {
			continue // every value has the digit of the minimum: nothing moves
		}
		sum := 0
		for i := range c {
			c[i], sum = sum, sum+c[i]
		}
		shift := uint(p * radixBits)
		if srcW == nil {
			for _, x := range src {
				d := ((uint64(x) - uint64(lo)) >> shift) & (radixBuckets - 1)
				dst[c[d]] = x
				c[d]++
			}
		} else {
			for i, x := range src {
				d := ((uint64(x) - uint64(lo)) >> shift) & (radixBuckets - 1)
				dst[c[d]] = x
				dstW[c[d]] = srcW[i]
				c[d]++
			}
			srcW, dstW = dstW, srcW
		}
		src, dst = dst, src
	}
	// src holds the result; the other buffer becomes the scratch.
	s.tmpV = dst
	if w != nil {
		s.tmpW = dstW
	}
	return src, srcW
}

type pair struct {
	v int64
	w uint64
}

// sortPairs is the rare path for weighted values spanning more than 63
// bits.
func sortPairs(v []int64, w []uint64) {
	ps := make([]pair, len(v))
	for i := range v {
		ps[i] = pair{v[i], w[i]}
	}
	slices.SortFunc(ps, func(a, b pair) int { return cmpInt64(a.v, b.v) })
	for i, p := range ps {
		v[i], w[i] = p.v, p.w
	}
}

func insertionSortPairs(v []int64, w []uint64) {
	for i := 1; i < len(v); i++ {
		x, y := v[i], w[i]
		j := i
		for ; j > 0 && v[j-1] > x; j-- {
			v[j], w[j] = v[j-1], w[j-1]
		}
		v[j], w[j] = x, y
	}
}
