package nativehist

import (
	"fmt"
	"math"
	"sort"

	"github.com/prometheus/prometheus/model/histogram"
)

// Schemas outside this range are not exponential schemas Prometheus accepts.
const (
	MinSchema = -4
	MaxSchema = 8
)

// ZeroThreshold is the width of the zero bucket. It is client_golang's
// default (2^-128), so histograms from hopwatch and from instrumented Go
// programs merge without a zero-bucket conversion.
const ZeroThreshold = 2.938735877055719e-39

// Bounds holds the per-schema lookup table of bucket boundaries within one
// power of two; it is immutable once built and shared by every Hist of that
// schema.
type Bounds struct {
	schema int32
	// frac[j] = 2^(j/2^schema - 1): the upper bounds of the 2^schema buckets
	// in [0.5, 1), the range math.Frexp returns fractions in.
	frac []float64
}

// NewBounds returns the lookup table for schema.
func NewBounds(schema int32) (*Bounds, error) {
	if schema < MinSchema || schema > MaxSchema {
		return nil, fmt.Errorf("hopwatch/nativehist: schema %d outside [%d, %d]", schema, MinSchema, MaxSchema)
	}
	b := &Bounds{schema: schema}
	if schema > 0 {
		n := 1 << schema
		b.frac = make([]float64, n)
		for j := range n {
			b.frac[j] = math.Exp2(float64(j)/float64(n) - 1)
		}
	}
	return b, nil
}

// Schema returns the schema the table was built for.
func (b *Bounds) Schema() int32 { return b.schema }

// Key returns the index of the bucket v (> 0) falls in: the bucket whose
// upper bound is 2^(key * 2^-schema), lower bound exclusive, upper inclusive.
func (b *Bounds) Key(v float64) int32 {
	frac, exp := math.Frexp(v)
	if b.schema > 0 {
		return int32(sort.SearchFloat64s(b.frac, frac) + (exp-1)*len(b.frac))
	}
	key := exp
	if frac == 0.5 {
		key--
	}
	// Ceiling division by 2^-schema; the arithmetic shift floors negative keys.
	return int32((key + (1 << -b.schema) - 1) >> -b.schema)
}

// UpperBound returns the inclusive upper bound of bucket key.
func (b *Bounds) UpperBound(key int32) float64 {
	return math.Exp2(float64(key) * math.Exp2(-float64(b.schema)))
}

// Hist is a native histogram of non-negative observations with dense
// positive buckets. Counts are cumulative since the Hist was created, as
// Prometheus expects of a counter histogram. The zero value is not usable;
// create it with New.
type Hist struct {
	bounds    *Bounds
	count     uint64
	zeroCount uint64
	sum       float64
	// counts[i] is the count of bucket offset+i. Dense, because latency
	// observations of one series cluster within a few powers of two, so a
	// slice beats a map on both memory and time.
	offset int32
	counts []uint64
}

// New returns an empty histogram on the given bucket table.
func New(b *Bounds) *Hist { return &Hist{bounds: b} }

// Observe adds one observation of value v, counted n times.
// Negative values and NaN go to the zero bucket: latencies are never negative
// once validated, and a histogram must not lose a count.
func (h *Hist) Observe(v float64, n uint64) {
	h.count += n
	h.sum += v * float64(n)
	if !(v > ZeroThreshold) {
		h.zeroCount += n
		return
	}
	key := h.bounds.Key(v)
	switch {
	case len(h.counts) == 0:
		h.offset = key
		h.counts = append(h.counts, 0)
	case key < h.offset:
		grow := int(h.offset - key)
		h.counts = append(h.counts, make([]uint64, grow)...)
		copy(h.counts[grow:], h.counts[:len(h.counts)-grow])
		clear(h.counts[:grow])
		h.offset = key
	case int(key-h.offset) >= len(h.counts):
		h.counts = append(h.counts, make([]uint64, int(key-h.offset)-len(h.counts)+1)...)
	}
	h.counts[key-h.offset] += n
}

// Schema returns the histogram's schema.
func (h *Hist) Schema() int32 { return h.bounds.schema }

// Count returns the number of observations.
func (h *Hist) Count() uint64 { return h.count }

// Sum returns the sum of observations.
func (h *Hist) Sum() float64 { return h.sum }

// Buckets calls f for every non-empty positive bucket in ascending order.
func (h *Hist) Buckets(f func(key int32, count uint64)) {
	for i, c := range h.counts {
		if c != 0 {
			f(h.offset+int32(i), c)
		}
	}
}

// ZeroCount returns the count of the zero bucket.
func (h *Hist) ZeroCount() uint64 { return h.zeroCount }

// Restore sets the histogram's state, as read back from a checkpoint.
func (h *Hist) Restore(count, zeroCount uint64, sum float64, offset int32, counts []uint64) {
	h.count, h.zeroCount, h.sum, h.offset = count, zeroCount, sum, offset
	h.counts = append(h.counts[:0], counts...)
}

// Dense returns the bucket offset and the dense counts; the slice is the
// histogram's own and must not be modified.
func (h *Hist) Dense() (offset int32, counts []uint64) { return h.offset, h.counts }

// maxGap is the longest run of empty buckets kept inside one span: a span
// costs two varints, an empty bucket one delta, so short gaps are cheaper
// inline (the same trade-off client_golang makes).
const maxGap = 2

// AppendTo writes the histogram into dst, reusing dst's slices, in the
// layout tsdb expects: spans plus delta-encoded absolute counts.
func (h *Hist) AppendTo(dst *histogram.Histogram) {
	dst.CounterResetHint = histogram.UnknownCounterReset
	dst.Schema = h.bounds.schema
	dst.ZeroThreshold = ZeroThreshold
	dst.ZeroCount = h.zeroCount
	dst.Count = h.count
	dst.Sum = h.sum
	dst.PositiveSpans = dst.PositiveSpans[:0]
	dst.PositiveBuckets = dst.PositiveBuckets[:0]
	dst.NegativeSpans = dst.NegativeSpans[:0]
	dst.NegativeBuckets = dst.NegativeBuckets[:0]
	dst.CustomValues = nil

	var (
		prevCount int64
		lastKey   int32 // key of the last bucket written
		started   bool
	)
	for i := 0; i < len(h.counts); i++ {
		c := h.counts[i]
		if c == 0 {
			continue
		}
		key := h.offset + int32(i)
		switch {
		case !started:
			dst.PositiveSpans = append(dst.PositiveSpans, histogram.Span{Offset: key, Length: 1})
			started = true
		case key-lastKey-1 <= maxGap:
			// Keep the gap inside the current span as explicit zeros.
			for range key - lastKey - 1 {
				dst.PositiveBuckets = append(dst.PositiveBuckets, -prevCount)
				prevCount = 0
			}
			dst.PositiveSpans[len(dst.PositiveSpans)-1].Length += uint32(key - lastKey)
		default:
			dst.PositiveSpans = append(dst.PositiveSpans, histogram.Span{Offset: key - lastKey - 1, Length: 1})
		}
		dst.PositiveBuckets = append(dst.PositiveBuckets, int64(c)-prevCount)
		prevCount = int64(c)
		lastKey = key
	}
}
