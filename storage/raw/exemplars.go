package raw

import (
	"math/rand/v2"
	"slices"

	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// ExemplarPolicy says which samples of a chunk keep their trace id.
type ExemplarPolicy struct {
	// All keeps every trace id.
	All bool
	// Slowest keeps the trace ids of the k slowest samples: the ones a
	// latency investigation starts from.
	Slowest int
	// Reservoir keeps a uniform sample of this many more, so that typical
	// requests have traces too.
	Reservoir int
}

// selectExemplars appends to dst the exemplar rows of a chunk whose samples
// are lat (latencies) with trace ids ids, in index order. rng drives the
// reservoir; idx is scratch space.
func selectExemplars(dst []chunkenc.Exemplar, lat []int64, ids [][16]byte, p ExemplarPolicy, rng *rand.Rand, idx []int) ([]chunkenc.Exemplar, []int) {
	n := len(lat)
	if p.All || p.Slowest+p.Reservoir >= n {
		for i := range n {
			if ids[i] != ([16]byte{}) {
				dst = append(dst, chunkenc.Exemplar{Index: uint32(i), TraceID: ids[i]})
			}
		}
		return dst, idx
	}
	// The k slowest, by a min-heap of size k on (latency, -index), so that
	// ties keep the earlier sample: O(n log k) instead of sorting the chunk.
	idx = idx[:0]
	less := func(a, b int) bool { return lat[a] < lat[b] || lat[a] == lat[b] && a > b }
	for i := range n {
		if len(idx) < p.Slowest {
			idx = append(idx, i)
			heapUp(idx, len(idx)-1, less)
			continue
		}
		if p.Slowest > 0 && less(idx[0], i) {
			idx[0] = i
			heapDown(idx, 0, less)
		}
	}
	// The rest, as candidates for the reservoir.
	chosen := make(map[int]bool, p.Slowest)
	for _, i := range idx {
		chosen[i] = true
	}
	k := len(idx)
	for i := range n {
		if !chosen[i] {
			idx = append(idx, i)
		}
	}
	rest := idx[k:]
	// Reservoir: a uniform choice among the rest (partial Fisher-Yates).
	for i := 0; i < p.Reservoir && i < len(rest); i++ {
		j := i + rng.IntN(len(rest)-i)
		rest[i], rest[j] = rest[j], rest[i]
	}
	picked := idx[:k+min(p.Reservoir, len(rest))]
	slices.Sort(picked)
	for _, i := range picked {
		if ids[i] != ([16]byte{}) {
			dst = append(dst, chunkenc.Exemplar{Index: uint32(i), TraceID: ids[i]})
		}
	}
	return dst, idx
}

func heapUp(h []int, i int, less func(a, b int) bool) {
	for i > 0 {
		p := (i - 1) / 2
		if !less(h[i], h[p]) {
			return
		}
		h[i], h[p] = h[p], h[i]
		i = p
	}
}

func heapDown(h []int, i int, less func(a, b int) bool) {
	for {
		l, m := 2*i+1, i
		if l < len(h) && less(h[l], h[m]) {
			m = l
		}
		if r := l + 1; r < len(h) && less(h[r], h[m]) {
			m = r
		}
		if m == i {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}
