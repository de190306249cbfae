package raw

import (
	"cmp"
	"container/heap"
	"fmt"
	"slices"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// recutter puts the chunks of one series in time order with no two
// overlapping, as a block's index needs: head chunks overlap whenever
// samples arrive out of order, and share a timestamp whenever an SDK
// stamps in ms. Each run of chunks whose time ranges overlap (or touch at
// one timestamp) is decoded, merged in time order and cut again; a chunk
// that overlaps nothing is kept as it is. Nothing is dropped: equal
// timestamps and exact duplicates all stay, and so does every trace id the
// source chunks kept.
//
// The merge is k-way over the run's chunks sorted by start, decoding a
// chunk only when the merge reaches its first sample, so memory follows
// how many chunks overlap one instant, not the length of the run.
type recutter struct {
	bounds    *nativehist.Bounds
	chunkSize int
	// maxSamples bounds a chunk cut here (chunkenc.MaxSamples). A run of
	// one timestamp longer than that spans several chunks sharing it,
	// which writeBlock puts under one index entry.
	maxSamples int
	// cutAt, when set (above minTime), also cuts between the last sample
	// before it and the first at or after it.
	cutAt int64

	dec     chunkenc.Decoder
	enc     chunkenc.Encoder
	out     chunkenc.Samples
	weights []uint64
	heap    cursorHeap
	free    []*cursor
}

func (db *DB) newRecutter() *recutter {
	return &recutter{bounds: db.bounds, chunkSize: db.opts.ChunkSize, maxSamples: chunkenc.MaxSamples, cutAt: minTime}
}

// cursor walks the samples of one decoded chunk.
type cursor struct {
	s   chunkenc.Samples
	pos int // next sample
	ex  int // next exemplar
	seq int // opening order: ties go to the chunk opened first
}

func (c *cursor) t() int64 { return c.s.T[c.pos] }

type cursorHeap []*cursor

func (h cursorHeap) Len() int { return len(h) }
func (h cursorHeap) Less(i, j int) bool {
	if a, b := h[i].t(), h[j].t(); a != b {
		return a < b
	}
	return h[i].seq < h[j].seq
}
func (h cursorHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *cursorHeap) Push(x any)   { *h = append(*h, x.(*cursor)) }
func (h *cursorHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return c
}

// overlapRun returns the end (exclusive) of the run of chunks starting at
// cs[i] that overlap one another, and the run's last time; cs is sorted
// by start.
func overlapRun(cs []headChunk, i int) (j int, end int64) {
	j, end = i+1, cs[i].maxT
	for j < len(cs) && cs[j].minT <= end {
		end = max(end, cs[j].maxT)
		j++
	}
	return j, end
}

// recut returns chunks (of one series) sorted by start and re-cut where
// they overlap. The input is not modified; chunks that overlap nothing
// are returned as they are.
func (r *recutter) recut(chunks []headChunk) ([]headChunk, error) {
	sorted := slices.Clone(chunks)
	slices.SortStableFunc(sorted, func(a, b headChunk) int {
		if c := cmp.Compare(a.minT, b.minT); c != 0 {
			return c
		}
		return cmp.Compare(a.maxT, b.maxT)
	})
	out := make([]headChunk, 0, len(sorted))
	for i := 0; i < len(sorted); {
		j, _ := overlapRun(sorted, i)
		if j == i+1 {
			out = append(out, sorted[i])
			i = j
			continue
		}
		var err error
		if out, err = r.merge(out, sorted[i:j]); err != nil {
			return nil, err
		}
		i = j
	}
	return out, nil
}

// merge appends to dst the samples of run (sorted by start) in time
// order, cut into chunks of about chunkSize samples that never split a
// timestamp unless it alone holds more than maxSamples.
func (r *recutter) merge(dst []headChunk, run []headChunk) ([]headChunk, error) {
	r.out.Reset()
	r.out.Weight = nil
	r.weights = r.weights[:0]
	r.heap = r.heap[:0]
	next := 0
	for {
		// Open every chunk that may hold the next sample in time order.
		for next < len(run) && (len(r.heap) == 0 || run[next].minT <= r.heap[0].t()) {
			c := r.cursor(next)
			if _, err := r.dec.DecodeChunk(run[next].data, r.bounds, &c.s); err != nil {
				r.free = append(r.free, c)
				return nil, fmt.Errorf("hopwatch/raw: re-cut chunk [%d, %d]: %w", run[next].minT, run[next].maxT, err)
			}
			next++
			if len(c.s.T) == 0 {
				r.free = append(r.free, c)
				continue
			}
			heap.Push(&r.heap, c)
		}
		if len(r.heap) == 0 {
			break
		}
		c := r.heap[0]
		t := c.t()
		if n := len(r.out.T); n >= r.maxSamples || n >= r.chunkSize && t != r.out.T[n-1] || n > 0 && t >= r.cutAt && r.out.T[n-1] < r.cutAt {
			var err error
			if dst, err = r.flush(dst); err != nil {
				return nil, err
			}
		}
		if c.ex < len(c.s.Exemplars) && int(c.s.Exemplars[c.ex].Index) == c.pos {
			r.out.Exemplars = append(r.out.Exemplars, chunkenc.Exemplar{Index: uint32(len(r.out.T)), TraceID: c.s.Exemplars[c.ex].TraceID})
			c.ex++
		}
		w := uint64(1)
		if c.s.Weight != nil {
			w = c.s.Weight[c.pos]
		}
		r.out.T = append(r.out.T, t)
		r.out.Latency = append(r.out.Latency, c.s.Latency[c.pos])
		r.weights = append(r.weights, w)
		c.pos++
		if c.pos == len(c.s.T) {
			heap.Pop(&r.heap)
			r.free = append(r.free, c)
		} else {
			heap.Fix(&r.heap, 0)
		}
	}
	return r.flush(dst)
}

func (r *recutter) cursor(seq int) *cursor {
	var c *cursor
	if n := len(r.free); n > 0 {
		c, r.free = r.free[n-1], r.free[:n-1]
	} else {
		c = &cursor{}
	}
	c.pos, c.ex, c.seq = 0, 0, seq
	return c
}

// flush encodes the samples gathered so far as one chunk.
func (r *recutter) flush(dst []headChunk) ([]headChunk, error) {
	n := len(r.out.T)
	if n == 0 {
		return dst, nil
	}
	r.out.Weight = nil
	for _, w := range r.weights {
		if w != 1 {
			r.out.Weight = r.weights
			break
		}
	}
	data, err := r.enc.AppendChunk(nil, &r.out, r.bounds)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/raw: re-cut chunk: %w", err)
	}
	dst = append(dst, headChunk{data: data, minT: r.out.T[0], maxT: r.out.T[n-1]})
	r.out.Reset()
	r.out.Weight = nil
	r.weights = r.weights[:0]
	return dst, nil
}

// split returns the samples of c before at and those from at on, each as
// chunks.
func (r *recutter) split(c headChunk, at int64) (before, after []headChunk, err error) {
	r.cutAt = at
	out, err := r.merge(nil, []headChunk{c})
	r.cutAt = minTime
	if err != nil {
		return nil, nil, err
	}
	for _, o := range out {
		if o.maxT < at {
			before = append(before, o)
		} else {
			after = append(after, o)
		}
	}
	return before, after, nil
}
