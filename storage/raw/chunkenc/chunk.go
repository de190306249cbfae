package chunkenc

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math"
	"math/bits"

	"github.com/hopwatch/hopwatch/internal/nativehist"
)

// chunkVersion is the first byte of every chunk.
const chunkVersion = 1

// MaxSamples is the most samples a chunk may hold. Decoding allocates for
// the count a chunk declares, and a column can take less than a byte a
// sample (a run of equal timestamps and latencies takes no bit at all), so
// the count is bounded by this constant, not by the chunk's size: a chunk
// decodes into at most 24 MiB of columns.
const MaxSamples = 1 << 20

// Chunk flags.
const (
	flagWeights   = 1 << 0
	flagExemplars = 1 << 1
)

// Exemplar marks one sample of a chunk with the trace it came from.
type Exemplar struct {
	Index   uint32 // position of the sample in the chunk
	TraceID [16]byte
}

// Samples are the columns of one chunk of one series, in time order.
type Samples struct {
	T       []int64 // Unix ns, non-decreasing
	Latency []int64 // ns, non-negative
	// Weight[i] is how many samples sample i stands for (sampled data); nil
	// means every weight is 1.
	Weight []uint64
	// Exemplars, ascending by Index.
	Exemplars []Exemplar
}

// Reset empties s and keeps its memory.
func (s *Samples) Reset() {
	s.T, s.Latency, s.Weight, s.Exemplars = s.T[:0], s.Latency[:0], s.Weight[:0], s.Exemplars[:0]
}

// Summary describes a chunk without decoding its columns.
type Summary struct {
	Count        uint64 // samples, weights counted
	SumHi, SumLo uint64 // 128-bit sum of latency × weight, ns
	Min, Max     int64  // ns
	MinT, MaxT   int64  // Unix ns
	// Histogram of the latencies in seconds, weights counted.
	Histogram *nativehist.Hist
}

// Sum returns the latency sum in seconds.
func (s *Summary) Sum() float64 {
	return (float64(s.SumHi)*math.Exp2(64) + float64(s.SumLo)) / 1e9
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// AppendChunk encodes s, with a summary histogram on bounds, and appends
// the chunk to dst.
//
// Layout: version, n, summary, flags, then each column with its length,
// then a CRC32 (Castagnoli) of everything before it.
func (e *Encoder) AppendChunk(dst []byte, s *Samples, bounds *nativehist.Bounds) ([]byte, error) {
	n := len(s.T)
	if len(s.Latency) != n || s.Weight != nil && len(s.Weight) != n {
		return dst, errColumnLengths(n, len(s.Latency), len(s.Weight))
	}
	if n > MaxSamples {
		return dst, fmt.Errorf("hopwatch/chunkenc: %d samples in one chunk, at most %d", n, MaxSamples)
	}
	start := len(dst)
	dst = append(dst, chunkVersion)
	dst = appendUvarint(dst, uint64(n))

	sum := e.summarize(s, bounds)
	dst = appendSummary(dst, &sum)

	var flags byte
	if s.Weight != nil {
		flags |= flagWeights
	}
	if len(s.Exemplars) > 0 {
		flags |= flagExemplars
	}
	dst = append(dst, flags)

	var err error
	e.col = e.AppendTimestamps(e.col[:0], s.T)
	dst = appendUvarint(dst, uint64(len(e.col)))
	dst = append(dst, e.col...)
	e.col, err = e.AppendLatencies(e.col[:0], s.Latency)
	if err != nil {
		return dst[:start], err
	}
	dst = appendUvarint(dst, uint64(len(e.col)))
	dst = append(dst, e.col...)
	if s.Weight != nil {
		e.us = e.us[:0]
		for _, w := range s.Weight {
			e.us = append(e.us, w-1) // weights are ≥ 1; store w-1 so 1 costs one bit
		}
		c, p, _ := bestIntCoder(e.us)
		e.col = appendInts(e.col[:0], e.us, c, p)
		dst = appendUvarint(dst, uint64(len(e.col)))
		dst = append(dst, e.col...)
	}
	if len(s.Exemplars) > 0 {
		dst = appendUvarint(dst, uint64(len(s.Exemplars)))
		prev := uint32(0)
		for _, ex := range s.Exemplars {
			dst = appendUvarint(dst, uint64(ex.Index-prev))
			dst = append(dst, ex.TraceID[:]...)
			prev = ex.Index
		}
	}
	return appendChecksum(dst, start), nil
}

// appendChecksum appends the CRC32 of dst[start:].
func appendChecksum(dst []byte, start int) []byte {
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

func (e *Encoder) summarize(s *Samples, bounds *nativehist.Bounds) Summary {
	sum := Summary{Histogram: nativehist.New(bounds), Min: math.MaxInt64, Max: math.MinInt64, MinT: math.MaxInt64, MaxT: math.MinInt64}
	if len(s.T) == 0 {
		sum.Min, sum.Max, sum.MinT, sum.MaxT = 0, 0, 0, 0
		return sum
	}
	for i, v := range s.Latency {
		w := uint64(1)
		if s.Weight != nil {
			w = s.Weight[i]
		}
		sum.Count += w
		hi, lo := bits.Mul64(uint64(v), w)
		var c uint64
		sum.SumLo, c = bits.Add64(sum.SumLo, lo, 0)
		sum.SumHi += hi + c
		sum.Min, sum.Max = min(sum.Min, v), max(sum.Max, v)
		sum.Histogram.Observe(float64(v)/1e9, w)
	}
	for _, t := range s.T {
		sum.MinT, sum.MaxT = min(sum.MinT, t), max(sum.MaxT, t)
	}
	return sum
}

func appendSummary(dst []byte, s *Summary) []byte {
	dst = appendUvarint(dst, s.Count)
	dst = appendUvarint(dst, s.SumHi)
	dst = appendUvarint(dst, s.SumLo)
	dst = appendVarint(dst, s.Min)
	dst = appendVarint(dst, s.Max)
	dst = appendVarint(dst, s.MinT)
	dst = appendVarint(dst, s.MaxT-s.MinT)
	h := s.Histogram
	dst = appendVarint(dst, int64(h.Schema()))
	dst = appendUvarint(dst, h.ZeroCount())
	off, counts := h.Dense()
	dst = appendVarint(dst, int64(off))
	dst = appendUvarint(dst, uint64(len(counts)))
	for _, c := range counts {
		dst = appendUvarint(dst, c)
	}
	return dst
}

// ReadSummary decodes the summary of chunk b without touching its columns.
// The histogram uses bounds, which must have the schema the chunk was
// written with.
func ReadSummary(b []byte, bounds *nativehist.Bounds) (Summary, error) {
	if err := checkCRC(b); err != nil {
		return Summary{}, err
	}
	s, _, _, err := readHead(b[:len(b)-4], bounds, true)
	return s, err
}

func checkCRC(b []byte) error {
	if len(b) < 5 {
		return corrupt("chunk of %d bytes is too short", len(b))
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return corrupt("chunk checksum mismatch (%d bytes)", len(b))
	}
	return nil
}

// readHead reads version, count and summary; it returns the rest. The
// summary's histogram is built only when withHist is set.
func readHead(b []byte, bounds *nativehist.Bounds, withHist bool) (Summary, int, []byte, error) {
	h := header{b: b}
	if v := h.byte("chunk version"); h.err == nil && v != chunkVersion {
		return Summary{}, 0, nil, corrupt("chunk version %d, want %d", v, chunkVersion)
	}
	n := h.uvarint("sample count")
	var s Summary
	s.Count = h.uvarint("summary count")
	s.SumHi = h.uvarint("summary sum")
	s.SumLo = h.uvarint("summary sum")
	s.Min = h.varint("summary min")
	s.Max = h.varint("summary max")
	s.MinT = h.varint("summary min time")
	s.MaxT = s.MinT + h.varint("summary time span")
	schema := h.varint("summary schema")
	zero := h.uvarint("summary zero count")
	off := h.varint("summary bucket offset")
	nb := h.uvarint("summary bucket count")
	if h.err != nil {
		return s, 0, nil, h.err
	}
	if n > MaxSamples {
		return s, 0, nil, corrupt("sample count %d above %d", n, MaxSamples)
	}
	if nb > uint64(len(h.b)) {
		return s, 0, nil, corrupt("bucket count %d too large for %d bytes", nb, len(h.b))
	}
	if schema != int64(bounds.Schema()) {
		return s, 0, nil, corrupt("summary schema %d, reader expects %d", schema, bounds.Schema())
	}
	if off < math.MinInt32 || off > math.MaxInt32 {
		return s, 0, nil, corrupt("summary bucket offset %d", off)
	}
	var counts []uint64
	if withHist {
		counts = make([]uint64, nb)
	}
	for i := range nb {
		c := h.uvarint("summary bucket")
		if withHist {
			counts[i] = c
		}
	}
	if h.err != nil {
		return s, 0, nil, h.err
	}
	if withHist {
		s.Histogram = nativehist.New(bounds)
		s.Histogram.Restore(s.Count, zero, s.Sum(), int32(off), counts)
	}
	return s, int(n), h.b, nil
}

// DecodeChunk decodes every column of chunk b into out (reusing its
// memory). The summary it returns has no Histogram; ReadSummary has it.
func (d *Decoder) DecodeChunk(b []byte, bounds *nativehist.Bounds, out *Samples) (Summary, error) {
	return d.decode(b, bounds, out, true)
}

// DecodeValues is DecodeChunk without the exemplar rows: timestamps,
// latencies and weights, what a quantile needs.
func (d *Decoder) DecodeValues(b []byte, bounds *nativehist.Bounds, out *Samples) (Summary, error) {
	return d.decode(b, bounds, out, false)
}

// ReadTimeRange reads the sample count and time range of chunk b from its
// header, without checking the checksum (decoding does) or reading the
// summary histogram.
func ReadTimeRange(b []byte) (minT, maxT int64, n int, err error) {
	h := header{b: b}
	if v := h.byte("chunk version"); h.err == nil && v != chunkVersion {
		return 0, 0, 0, corrupt("chunk version %d, want %d", v, chunkVersion)
	}
	cnt := h.uvarint("sample count")
	for _, what := range [...]string{"summary count", "summary sum", "summary sum"} {
		h.uvarint(what)
	}
	h.varint("summary min")
	h.varint("summary max")
	minT = h.varint("summary min time")
	maxT = minT + h.varint("summary time span")
	if h.err != nil {
		return 0, 0, 0, h.err
	}
	if cnt > MaxSamples {
		return 0, 0, 0, corrupt("sample count %d above %d", cnt, MaxSamples)
	}
	return minT, maxT, int(cnt), nil
}

func (d *Decoder) decode(b []byte, bounds *nativehist.Bounds, out *Samples, exemplars bool) (Summary, error) {
	out.Reset()
	if err := checkCRC(b); err != nil {
		return Summary{}, err
	}
	s, n, rest, err := readHead(b[:len(b)-4], bounds, false)
	if err != nil {
		return s, err
	}
	h := header{b: rest}
	flags := h.byte("chunk flags")
	col := func(what string) []byte {
		l := h.uvarint(what + " length")
		if h.err != nil {
			return nil
		}
		if l > uint64(len(h.b)) {
			h.err = corrupt("%s of %d bytes in %d", what, l, len(h.b))
			return nil
		}
		c := h.b[:l]
		h.b = h.b[l:]
		return c
	}
	tsCol, latCol := col("timestamp column"), col("latency column")
	if h.err != nil {
		return s, h.err
	}
	if out.T, err = d.DecodeTimestamps(out.T, tsCol, n); err != nil {
		return s, err
	}
	if out.Latency, err = d.DecodeLatencies(out.Latency, latCol, n); err != nil {
		return s, err
	}
	if flags&flagWeights != 0 {
		wCol := col("weight column")
		if h.err != nil {
			return s, h.err
		}
		if d.us, err = readInts(d.us[:0], wCol, n); err != nil {
			return s, err
		}
		for _, u := range d.us {
			out.Weight = append(out.Weight, u+1)
		}
	} else {
		out.Weight = nil
	}
	if exemplars && flags&flagExemplars != 0 {
		ne := h.uvarint("exemplar count")
		if h.err == nil && ne > uint64(len(h.b)/17) {
			return s, corrupt("%d exemplars cannot fit in %d bytes", ne, len(h.b))
		}
		idx := uint64(0)
		for range ne {
			idx += h.uvarint("exemplar index")
			id := h.bytes(16, "exemplar trace id")
			if h.err != nil {
				return s, h.err
			}
			if idx >= uint64(n) {
				return s, corrupt("exemplar index %d of %d samples", idx, n)
			}
			out.Exemplars = append(out.Exemplars, Exemplar{Index: uint32(idx), TraceID: [16]byte(id)})
		}
	}
	return s, h.err
}

func errColumnLengths(n, l, w int) error {
	return fmt.Errorf("hopwatch/chunkenc: column lengths differ: %d timestamps, %d latencies, %d weights", n, l, w)
}
