package raw

import (
	"bytes"
	"slices"
	"sort"
	"sync"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// Series is what a query sees of one series: its labels, its encoded
// chunks overlapping the query range (immutable, safe to keep), and the
// samples of its open chunk within the range, sorted by time.
type Series struct {
	Labels labels.Labels
	// Chunks are encoded chunks; chunkenc.ReadSummary reads their summary
	// without decoding, chunkenc.Decoder.DecodeChunk their columns. Their
	// time ranges may overlap, and a chunk may hold samples outside
	// [mint, maxt]: readers filter.
	Chunks [][]byte
	// Open holds the samples not yet in a chunk, within [mint, maxt]. Its
	// Weight is nil when every one of them has weight 1 (not sampled).
	Open chunkenc.Samples
}

// Select returns the series matching every matcher that have samples in
// [mint, maxt], sorted by labels. The chunks of blocks are copied, so the
// result stays valid whatever compaction does.
func (db *DB) Select(mint, maxt int64, ms ...*labels.Matcher) []Series {
	out, _ := db.selectSeries(mint, maxt, false, ms...)
	return out
}

// SelectPinned is Select without copying: block chunks view the mapped
// files, and the blocks they come from are not deleted (by compaction or
// retention) before release is called. Call release once, when done with
// the chunks.
func (db *DB) SelectPinned(mint, maxt int64, ms ...*labels.Matcher) (series []Series, release func()) {
	return db.selectSeries(mint, maxt, true, ms...)
}

func (db *DB) selectSeries(mint, maxt int64, pin bool, ms ...*labels.Matcher) ([]Series, func()) {
	// Held across head and blocks: compaction moves chunks from one to
	// the other under the write lock, so a query sees each sample once.
	db.blocksMtx.RLock()
	defer db.blocksMtx.RUnlock()
	db.mtx.RLock()
	var matched []*memSeries
	for _, s := range db.series {
		if matchAll(s.lset, ms) {
			matched = append(matched, s)
		}
	}
	db.mtx.RUnlock()

	var out []Series
	// By labels: head series sharing a label set under different keys
	// answer as one, and so do their block series.
	bySeries := map[string]int{}
	for _, s := range matched {
		var sr Series
		s.mtx.Lock()
		for _, c := range s.chunks {
			if c.maxT >= mint && c.minT <= maxt {
				sr.Chunks = append(sr.Chunks, c.data)
			}
		}
		var idx []int
		for i, t := range s.t {
			if t >= mint && t <= maxt {
				idx = append(idx, i)
			}
		}
		sort.SliceStable(idx, func(a, b int) bool { return s.t[idx[a]] < s.t[idx[b]] })
		weighted := false
		for _, i := range idx {
			sr.Open.T = append(sr.Open.T, s.t[i])
			sr.Open.Latency = append(sr.Open.Latency, s.lat[i])
			weighted = weighted || len(s.wt) > 0 && s.wt[i] != 1
		}
		if weighted {
			for _, i := range idx {
				sr.Open.Weight = append(sr.Open.Weight, uint64(s.wt[i]))
			}
		}
		s.mtx.Unlock()
		if len(sr.Chunks) == 0 && len(sr.Open.T) == 0 {
			continue
		}
		sr.Labels = s.lset
		k := s.lset.String()
		if i, ok := bySeries[k]; ok {
			out[i].Chunks = append(out[i].Chunks, sr.Chunks...)
			out[i].Open = mergeOpen(out[i].Open, sr.Open)
			continue
		}
		bySeries[k] = len(out)
		out = append(out, sr)
	}
	// Blocks: their chunks are copied out, so that a block deleted by
	// compaction or retention never pulls memory from under a reader.
	var pinned []*Block
	for _, b := range db.blocks {
		bsr, err := b.selectSeries(mint, maxt, ms...)
		if err != nil {
			db.logger.Error("reading raw block failed", "ulid", b.meta.ULID, "err", err)
			continue
		}
		for _, sr := range bsr {
			k := sr.Labels.String()
			i, ok := bySeries[k]
			if !ok {
				i = len(out)
				bySeries[k] = i
				out = append(out, Series{Labels: sr.Labels.Copy()})
			}
			for _, c := range sr.Chunks {
				if !pin {
					c = bytes.Clone(c)
				}
				out[i].Chunks = append(out[i].Chunks, c)
			}
		}
		if pin && len(bsr) > 0 {
			b.readers.Add(1)
			pinned = append(pinned, b)
		}
	}
	slices.SortFunc(out, func(a, b Series) int { return labels.Compare(a.Labels, b.Labels) })
	var once sync.Once
	return out, func() {
		once.Do(func() {
			for _, b := range pinned {
				b.readers.Done()
			}
		})
	}
}

// LabelSets returns the labels of the series matching every matcher: head
// series whatever their time range, block series with chunks in
// [mint, maxt]. No chunk is read.
func (db *DB) LabelSets(mint, maxt int64, ms ...*labels.Matcher) []labels.Labels {
	var out []labels.Labels
	db.blocksMtx.RLock()
	defer db.blocksMtx.RUnlock()
	db.mtx.RLock()
	for _, s := range db.series {
		if matchAll(s.lset, ms) {
			out = append(out, s.lset)
		}
	}
	db.mtx.RUnlock()
	// Head series are keyed by sample.Series.Key, block series only by
	// labels: compare by labels from here on (two keys may share labels).
	byLabels := make(map[string]bool, len(out))
	out = slices.DeleteFunc(out, func(l labels.Labels) bool {
		k := l.String()
		dup := byLabels[k]
		byLabels[k] = true
		return dup
	})
	for _, b := range db.blocks {
		lsets, err := b.labelSets(mint, maxt, ms...)
		if err != nil {
			db.logger.Error("reading raw block failed", "ulid", b.meta.ULID, "err", err)
			continue
		}
		for _, l := range lsets {
			if k := l.String(); !byLabels[k] {
				byLabels[k] = true
				out = append(out, l)
			}
		}
	}
	slices.SortFunc(out, labels.Compare)
	return out
}

// Bounds is the histogram schema of the DB's chunk summaries.
func (db *DB) Bounds() *nativehist.Bounds { return db.bounds }

func matchAll(lset labels.Labels, ms []*labels.Matcher) bool {
	for _, m := range ms {
		if !m.Matches(lset.Get(m.Name)) {
			return false
		}
	}
	return true
}

// Blocks returns the metas of the DB's blocks, oldest first.
func (db *DB) Blocks() []BlockMeta {
	db.blocksMtx.RLock()
	defer db.blocksMtx.RUnlock()
	out := make([]BlockMeta, len(db.blocks))
	for i, b := range db.blocks {
		out[i] = b.meta
	}
	return out
}

// mergeOpen merges two sets of open samples, each sorted by time.
func mergeOpen(a, b chunkenc.Samples) chunkenc.Samples {
	var out chunkenc.Samples
	weighted := a.Weight != nil || b.Weight != nil
	w := func(s *chunkenc.Samples, i int) uint64 {
		if s.Weight == nil {
			return 1
		}
		return s.Weight[i]
	}
	i, j := 0, 0
	for i < len(a.T) || j < len(b.T) {
		src, k := &a, i
		if i == len(a.T) || j < len(b.T) && b.T[j] < a.T[i] {
			src, k = &b, j
			j++
		} else {
			i++
		}
		out.T = append(out.T, src.T[k])
		out.Latency = append(out.Latency, src.Latency[k])
		if weighted {
			out.Weight = append(out.Weight, w(src, k))
		}
	}
	return out
}
