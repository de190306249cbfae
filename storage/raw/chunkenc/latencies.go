package chunkenc

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"

	"github.com/klauspost/compress/fse"

	"github.com/hopwatch/hopwatch/storage/raw/bitio"
)

// LatEncoding is how a latency column is stored.
type LatEncoding uint8

// The latency encodings.
const (
	// LatExpMantissa splits each value (divided by the column's step) into
	// a symbol, its bit length and the m bits after the leading one,
	// entropy-coded with FSE, and the remaining low bits, stored raw. Latency
	// distributions are smooth within a quarter octave, so the low bits are
	// near uniform and raw is their optimal code; all the shape is in the
	// symbol.
	LatExpMantissa LatEncoding = 1
	// LatInts stores the values with an IntCoder (Rice or fixed width):
	// better for narrow or tiny columns where a symbol table does not pay.
	LatInts LatEncoding = 2
)

func (l LatEncoding) String() string {
	switch l {
	case LatExpMantissa:
		return "exp-mantissa"
	case LatInts:
		return "ints"
	}
	return fmt.Sprintf("LatEncoding(%d)", uint8(l))
}

// Symbol storage modes of LatExpMantissa.
const (
	symRaw byte = 0 // one byte per symbol
	symFSE byte = 1
	symRLE byte = 2 // every symbol equal: one byte
)

// Encoder holds scratch space for encoding columns; reuse it to encode
// without allocating. The zero value is ready. Not safe for concurrent use.
type Encoder struct {
	col  []byte
	us   []uint64
	syms []byte
	fse  fse.Scratch
	tmp  []byte
}

// Decoder holds scratch space for decoding columns; reuse it. The zero
// value is ready. Not safe for concurrent use.
type Decoder struct {
	us  []uint64
	fse fse.Scratch
}

// latencyStep returns the common divisor of the values (1 if none).
func latencyStep(vs []int64) uint64 {
	var g uint64
	for _, v := range vs {
		g = gcd(g, uint64(v))
		if g == 1 {
			break
		}
	}
	return max(g, 1)
}

// AppendLatencies encodes vs (non-negative) with the cheapest encoding.
func (e *Encoder) AppendLatencies(dst []byte, vs []int64) ([]byte, error) {
	for i, v := range vs {
		if v < 0 {
			return dst, fmt.Errorf("hopwatch/chunkenc: latency %d at index %d is negative", v, i)
		}
	}
	start := len(dst)
	var err error
	// The exponent/mantissa split wins on every realistic distribution;
	// the integer coders only on narrow ones, which are cheap to check.
	dst, err = e.appendLatencies(dst, vs, LatExpMantissa)
	if err != nil {
		return dst, err
	}
	e.tmp, err = e.appendLatencies(e.tmp[:0], vs, LatInts)
	if err != nil {
		return dst, err
	}
	if len(e.tmp) < len(dst)-start {
		dst = append(dst[:start], e.tmp...)
	}
	return dst, nil
}

// AppendLatenciesWith encodes vs with encoding enc.
func (e *Encoder) AppendLatenciesWith(dst []byte, vs []int64, enc LatEncoding) ([]byte, error) {
	for i, v := range vs {
		if v < 0 {
			return dst, fmt.Errorf("hopwatch/chunkenc: latency %d at index %d is negative", v, i)
		}
	}
	return e.appendLatencies(dst, vs, enc)
}

func (e *Encoder) appendLatencies(dst []byte, vs []int64, enc LatEncoding) ([]byte, error) {
	step := latencyStep(vs)
	e.us = e.us[:0]
	for _, v := range vs {
		e.us = append(e.us, uint64(v)/step)
	}
	dst = append(dst, byte(enc))
	dst = appendUvarint(dst, step)
	switch enc {
	case LatInts:
		c, p, _ := bestIntCoder(e.us)
		return appendInts(dst, e.us, c, p), nil
	case LatExpMantissa:
		return e.appendExpMantissa(dst), nil
	}
	return dst, fmt.Errorf("hopwatch/chunkenc: unknown latency encoding %d", enc)
}

// mantissaBits is how many bits after the leading one go into the symbol.
// Two keep the symbol in a byte for every value below 2^63 and capture the
// shape of a smooth density to within a few thousandths of a bit.
const mantissaBits = 2

func symbolOf(u uint64) (sym byte, low uint64, nlow uint) {
	if u == 0 {
		return 0, 0, 0
	}
	l := uint(bits.Len64(u))
	if l-1 >= mantissaBits {
		nlow = l - 1 - mantissaBits
		top := (u >> nlow) & (1<<mantissaBits - 1)
		return byte(l<<mantissaBits | uint(top)), u & (1<<nlow - 1), nlow
	}
	top := (u & (1<<(l-1) - 1)) << (mantissaBits - (l - 1))
	return byte(l<<mantissaBits | uint(top)), 0, 0
}

// symbolEntry is what a symbol decodes to: the value with its low bits
// clear, and how many low bits follow in the raw stream.
type symbolEntry struct {
	base uint64
	nlow uint8
}

// symbolTable maps every symbol byte to its entry; read-only once built.
var symbolTable = func() (t [256]symbolEntry) {
	for s := range 256 {
		l := uint(s >> mantissaBits)
		top := uint64(s & (1<<mantissaBits - 1))
		switch {
		case l == 0:
			t[s] = symbolEntry{}
		case l-1 >= mantissaBits:
			nlow := l - 1 - mantissaBits
			t[s] = symbolEntry{base: 1<<(l-1) | top<<nlow, nlow: uint8(nlow)}
		default:
			t[s] = symbolEntry{base: 1<<(l-1) | top>>(mantissaBits-(l-1))}
		}
	}
	return t
}()

func (e *Encoder) appendExpMantissa(dst []byte) []byte {
	e.syms = e.syms[:0]
	for _, u := range e.us {
		s, _, _ := symbolOf(u)
		e.syms = append(e.syms, s)
	}
	mode, payload := symRaw, e.syms
	if len(e.syms) > 0 {
		e.fse.Out = e.fse.Out[:0]
		out, err := fse.Compress(e.syms, &e.fse)
		switch {
		case err == nil && len(out) < len(e.syms):
			mode, payload = symFSE, out
		case errors.Is(err, fse.ErrUseRLE):
			mode, payload = symRLE, e.syms[:1]
		}
	}
	dst = append(dst, mode)
	dst = appendUvarint(dst, uint64(len(payload)))
	dst = append(dst, payload...)
	w := bitio.NewWriter(dst)
	for _, u := range e.us {
		_, low, nlow := symbolOf(u)
		w.WriteBits(low, nlow)
	}
	return w.Bytes()
}

// DecodeLatencies appends the n latencies of column b to dst.
func (d *Decoder) DecodeLatencies(dst []int64, b []byte, n int) ([]int64, error) {
	h := header{b: b}
	enc := LatEncoding(h.byte("latency encoding"))
	step := h.uvarint("latency step")
	if h.err != nil {
		return dst, h.err
	}
	if step == 0 || step > math.MaxInt64 {
		return dst, corrupt("latency step %d", step)
	}
	switch enc {
	case LatInts:
		var err error
		d.us, err = readInts(d.us[:0], h.b, n)
		if err != nil {
			return dst, err
		}
		for _, u := range d.us {
			v, ok := mulStep(u, step)
			if !ok {
				return dst, corrupt("latency %d × step %d overflows", u, step)
			}
			dst = append(dst, v)
		}
		return dst, nil
	case LatExpMantissa:
		return d.decodeExpMantissa(dst, h, n, step)
	}
	return dst, corrupt("unknown latency encoding %d", enc)
}

func mulStep(u, step uint64) (int64, bool) {
	hi, lo := bits.Mul64(u, step)
	if hi != 0 || lo > math.MaxInt64 {
		return 0, false
	}
	return int64(lo), true
}

func (d *Decoder) decodeExpMantissa(dst []int64, h header, n int, step uint64) ([]int64, error) {
	mode := h.byte("symbol mode")
	plen := h.uvarint("symbol length")
	if h.err != nil {
		return dst, h.err
	}
	if plen > uint64(len(h.b)) {
		return dst, corrupt("symbol payload of %d bytes in %d", plen, len(h.b))
	}
	payload, rest := h.b[:plen], h.b[plen:]
	var syms []byte
	switch mode {
	case symRaw:
		syms = payload
	case symRLE:
		if len(payload) != 1 {
			return dst, corrupt("RLE symbol payload of %d bytes", len(payload))
		}
	case symFSE:
		d.fse.DecompressLimit = n
		d.fse.Out = d.fse.Out[:0]
		out, err := fse.Decompress(payload, &d.fse)
		if err != nil {
			return dst, corrupt("symbols: %v", err)
		}
		syms = out
	default:
		return dst, corrupt("unknown symbol mode %d", mode)
	}
	if mode != symRLE && len(syms) != n {
		return dst, corrupt("%d symbols for %d values", len(syms), n)
	}
	r := bitio.NewReader(rest)
	dst = slices.Grow(dst, n)
	maxU := uint64(math.MaxInt64) / step
	for i := range n {
		var sym byte
		if mode == symRLE {
			sym = payload[0]
		} else {
			sym = syms[i]
		}
		e := symbolTable[sym]
		u := e.base
		if e.nlow > 0 {
			low, err := r.ReadBits(uint(e.nlow))
			if err != nil {
				return dst, corrupt("low bits of value %d: %v", i, err)
			}
			u |= low
		}
		// Symbols decode below 2^63, so with step 1 nothing can overflow;
		// otherwise one compare against the precomputed bound.
		if u > maxU {
			return dst, corrupt("latency %d × step %d overflows", u, step)
		}
		dst = append(dst, int64(u*step))
	}
	return dst, nil
}
