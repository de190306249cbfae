package bitio

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// ErrShort is returned when a read runs past the end of the stream.
var ErrShort = errors.New("hopwatch/bitio: read past the end of the bit stream")

// Writer appends bits to a byte slice. The zero value is ready to use.
type Writer struct {
	buf  []byte
	acc  uint64 // pending bits, left-aligned
	nacc uint   // number of pending bits in acc (< 64)
}

// NewWriter returns a writer appending to dst.
func NewWriter(dst []byte) *Writer { return &Writer{buf: dst} }

// Reset makes the writer append to dst.
func (w *Writer) Reset(dst []byte) { w.buf, w.acc, w.nacc = dst, 0, 0 }

// WriteBits writes the low n bits of v (n ≤ 64).
func (w *Writer) WriteBits(v uint64, n uint) {
	if n == 0 {
		return
	}
	if n < 64 {
		v &= 1<<n - 1
	}
	free := 64 - w.nacc
	if n < free {
		w.acc |= v << (free - n)
		w.nacc += n
		return
	}
	// Fill the accumulator, flush it, keep the rest.
	rest := n - free
	w.acc |= v >> rest
	w.buf = binary.BigEndian.AppendUint64(w.buf, w.acc)
	w.nacc = rest
	if rest == 0 {
		w.acc = 0
	} else {
		w.acc = v << (64 - rest)
	}
}

// WriteUnary writes q one-bits followed by a zero-bit.
func (w *Writer) WriteUnary(q uint64) {
	for q >= 32 {
		w.WriteBits(1<<32-1, 32)
		q -= 32
	}
	w.WriteBits((1<<(q+1)-1)&^1, uint(q)+1)
}

// WriteRice writes v with Rice parameter k: v>>k in unary, then the low k bits.
func (w *Writer) WriteRice(v uint64, k uint) {
	w.WriteUnary(v >> k)
	w.WriteBits(v, k)
}

// Bytes flushes the pending bits, padded with zeros to a byte, and returns
// the buffer. The writer must be Reset before further use.
func (w *Writer) Bytes() []byte {
	for w.nacc > 0 {
		w.buf = append(w.buf, byte(w.acc>>56))
		w.acc <<= 8
		w.nacc -= min(w.nacc, 8)
	}
	return w.buf
}

// RiceLen returns the number of bits WriteRice(v, k) writes.
func RiceLen(v uint64, k uint) uint64 { return v>>k + 1 + uint64(k) }

// Reader reads bits written by Writer.
type Reader struct {
	buf  []byte
	pos  int    // next byte of buf to load
	acc  uint64 // loaded bits, left-aligned
	nacc uint   // number of valid bits in acc
}

// NewReader returns a reader over b.
func NewReader(b []byte) *Reader { return &Reader{buf: b} }

// Reset makes the reader read b from its start.
func (r *Reader) Reset(b []byte) { r.buf, r.pos, r.acc, r.nacc = b, 0, 0, 0 }

// refill loads whole bytes until at least 57 bits are available or the
// input ends.
func (r *Reader) refill() {
	if r.pos+8 <= len(r.buf) {
		v := binary.BigEndian.Uint64(r.buf[r.pos:])
		n := (64 - r.nacc) / 8
		r.acc |= v >> r.nacc & ^(^uint64(0) >> (r.nacc + n*8))
		r.pos += int(n)
		r.nacc += n * 8
		return
	}
	for r.nacc <= 56 && r.pos < len(r.buf) {
		r.acc |= uint64(r.buf[r.pos]) << (56 - r.nacc)
		r.pos++
		r.nacc += 8
	}
}

// ReadBits reads n bits (n ≤ 64). The common case, enough bits loaded, is
// small enough to inline.
func (r *Reader) ReadBits(n uint) (uint64, error) {
	if n > r.nacc {
		r.refill()
	}
	if n-1 < r.nacc { // n ≥ 1 and n ≤ nacc
		v := r.acc >> (64 - n)
		r.acc <<= n
		r.nacc -= n
		return v, nil
	}
	return r.readBitsSlow(n)
}

func (r *Reader) readBitsSlow(n uint) (uint64, error) {
	if n == 0 {
		return 0, nil
	}
	if n > 56 {
		hi, err := r.ReadBits(n - 32)
		if err != nil {
			return 0, err
		}
		lo, err := r.ReadBits(32)
		return hi<<32 | lo, err
	}
	if r.nacc < n {
		r.refill()
		if r.nacc < n {
			return 0, ErrShort
		}
	}
	v := r.acc >> (64 - n)
	r.acc <<= n
	r.nacc -= n
	return v, nil
}

// ReadUnary reads a unary code (ones ended by a zero), refusing runs longer
// than limit so that a corrupt stream cannot spin.
func (r *Reader) ReadUnary(limit uint64) (uint64, error) {
	var q uint64
	for {
		if r.nacc == 0 {
			r.refill()
			if r.nacc == 0 {
				return 0, ErrShort
			}
		}
		ones := uint(bits.LeadingZeros64(^r.acc))
		if ones < r.nacc {
			q += uint64(ones)
			r.acc <<= ones + 1
			r.nacc -= ones + 1
			if q > limit {
				return 0, errUnaryTooLong
			}
			return q, nil
		}
		q += uint64(r.nacc)
		r.acc, r.nacc = 0, 0
		if q > limit {
			return 0, errUnaryTooLong
		}
	}
}

var errUnaryTooLong = errors.New("hopwatch/bitio: unary code longer than allowed")

// AppendRice appends n values written by WriteRice with parameter k to dst,
// refusing quotients above limit. It decodes from registers while at least
// a quotient's run and k bits are loaded, which is nearly always.
func (r *Reader) AppendRice(dst []uint64, n int, k uint, limit uint64) ([]uint64, error) {
	for i := 0; i < n; i++ {
		ones := uint(bits.LeadingZeros64(^r.acc))
		if ones+1+k > r.nacc {
			// Refill only when the value does not fit: one refill serves
			// several values.
			r.refill()
			ones = uint(bits.LeadingZeros64(^r.acc))
		}
		if ones+1+k <= r.nacc && uint64(ones) <= limit {
			r.acc <<= ones + 1
			var low uint64
			if k > 0 {
				low = r.acc >> (64 - k)
				r.acc <<= k
			}
			r.nacc -= ones + 1 + k
			dst = append(dst, uint64(ones)<<k|low)
			continue
		}
		v, err := r.ReadRice(k, limit)
		if err != nil {
			return dst, err
		}
		dst = append(dst, v)
	}
	return dst, nil
}

// ReadRice reads a value written by WriteRice with parameter k, refusing
// quotients above limit.
func (r *Reader) ReadRice(k uint, limit uint64) (uint64, error) {
	q, err := r.ReadUnary(limit)
	if err != nil {
		return 0, err
	}
	lo, err := r.ReadBits(k)
	return q<<k | lo, err
}
