package chunkenc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/hopwatch/hopwatch/storage/raw/bitio"
)

// IntCoder is how a column stores its sequence of unsigned integers after
// the column's transform.
type IntCoder uint8

// The integer coders.
const (
	// CoderRice writes each value as a Rice code with parameter k: near
	// optimal for geometric (exponential-gap) data.
	CoderRice IntCoder = 1
	// CoderFixed writes each value in w bits: optimal for uniform data.
	CoderFixed IntCoder = 2
)

func (c IntCoder) String() string {
	switch c {
	case CoderRice:
		return "rice"
	case CoderFixed:
		return "fixed"
	}
	return fmt.Sprintf("IntCoder(%d)", uint8(c))
}

// Errors of the decoders. Every decoding error wraps ErrCorrupt.
var (
	ErrCorrupt = errors.New("hopwatch/chunkenc: corrupt column")
)

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// maxRiceQuotient bounds a Rice quotient on decode; the encoder never
// writes a larger one (it picks fixed width instead), so a larger one is
// corruption, refused before it can spin.
const maxRiceQuotient = 1 << 16

// intCost is the cost in bits of the best coder for us, and its parameter.
func bestIntCoder(us []uint64) (IntCoder, uint, uint64) {
	if len(us) == 0 {
		return CoderFixed, 0, 0
	}
	var sum, maxv uint64
	for _, u := range us {
		sum += u
		maxv = max(maxv, u)
	}
	w := uint(bits.Len64(maxv))
	best, bestParam, bestCost := CoderFixed, w, uint64(len(us))*uint64(w)
	// The optimal Rice parameter for a geometric distribution of mean m is
	// near log2(m·ln 2); try the neighbourhood.
	mean := float64(sum) / float64(len(us))
	k0 := 0
	if mean*0.6931 >= 1 {
		k0 = bits.Len64(uint64(mean*0.6931)) - 1
	}
	for k := max(k0-2, 0); k <= min(k0+2, 63); k++ {
		cost := uint64(len(us)) * uint64(k+1)
		ok := true
		for _, u := range us {
			q := u >> uint(k)
			if q > maxRiceQuotient {
				ok = false
				break
			}
			cost += q
		}
		if ok && cost < bestCost {
			best, bestParam, bestCost = CoderRice, uint(k), cost
		}
	}
	return best, bestParam, bestCost
}

// appendInts writes us with coder c and parameter p: a header byte for p,
// then the bit stream.
func appendInts(dst []byte, us []uint64, c IntCoder, p uint) []byte {
	dst = append(dst, byte(c), byte(p))
	w := bitio.NewWriter(dst)
	switch c {
	case CoderRice:
		for _, u := range us {
			w.WriteRice(u, p)
		}
	case CoderFixed:
		for _, u := range us {
			w.WriteBits(u, p)
		}
	}
	return w.Bytes()
}

// readInts decodes n integers written by appendInts into dst.
func readInts(dst []uint64, b []byte, n int) ([]uint64, error) {
	if len(b) < 2 {
		return dst, corrupt("integer stream of %d bytes has no header", len(b))
	}
	c, p := IntCoder(b[0]), uint(b[1])
	if p > 64 {
		return dst, corrupt("integer coder parameter %d > 64", p)
	}
	// Every value takes at least one bit with Rice, p with fixed: refuse
	// counts the stream cannot hold before allocating for them.
	minBits := uint64(n)
	if c == CoderFixed {
		minBits = uint64(n) * uint64(p)
	}
	if minBits > uint64(len(b)-2)*8 {
		return dst, corrupt("%d values cannot fit in %d bytes", n, len(b)-2)
	}
	r := bitio.NewReader(b[2:])
	switch c {
	case CoderRice:
		var err error
		if dst, err = r.AppendRice(dst, n, p, maxRiceQuotient); err != nil {
			return dst, corrupt("rice value %d of %d: %v", len(dst), n, err)
		}
	case CoderFixed:
		for range n {
			u, err := r.ReadBits(p)
			if err != nil {
				return dst, corrupt("fixed value %d of %d: %v", len(dst), n, err)
			}
			dst = append(dst, u)
		}
	default:
		return dst, corrupt("unknown integer coder %d", c)
	}
	return dst, nil
}

func zigzag(v int64) uint64   { return uint64(v<<1) ^ uint64(v>>63) }
func unzigzag(u uint64) int64 { return int64(u>>1) ^ -int64(u&1) }

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// appendUvarint and friends keep the header code short.
func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }
func appendVarint(b []byte, v int64) []byte   { return binary.AppendVarint(b, v) }

// header reads the varints of a column header.
type header struct {
	b   []byte
	err error
}

func (h *header) uvarint(what string) uint64 {
	if h.err != nil {
		return 0
	}
	v, n := binary.Uvarint(h.b)
	if n <= 0 {
		h.err = corrupt("bad %s", what)
		return 0
	}
	h.b = h.b[n:]
	return v
}

func (h *header) varint(what string) int64 {
	if h.err != nil {
		return 0
	}
	v, n := binary.Varint(h.b)
	if n <= 0 {
		h.err = corrupt("bad %s", what)
		return 0
	}
	h.b = h.b[n:]
	return v
}

func (h *header) bytes(n int, what string) []byte {
	if h.err != nil {
		return nil
	}
	if n > len(h.b) {
		h.err = corrupt("short %s", what)
		return nil
	}
	v := h.b[:n]
	h.b = h.b[n:]
	return v
}

func (h *header) byte(what string) byte {
	if h.err != nil {
		return 0
	}
	if len(h.b) == 0 {
		h.err = corrupt("missing %s", what)
		return 0
	}
	v := h.b[0]
	h.b = h.b[1:]
	return v
}
