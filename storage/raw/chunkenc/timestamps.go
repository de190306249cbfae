package chunkenc

import (
	"fmt"
	"math"
)

// TSTransform is how a timestamp column turns timestamps into small
// unsigned integers before an IntCoder stores them.
type TSTransform uint8

// The timestamp transforms.
const (
	// TSDelta stores t[i]-t[i-1] (sorted columns only): exponential gaps
	// of Poisson arrivals, Rice-coded, sit within a few hundredths of a bit
	// of their entropy.
	TSDelta TSTransform = 1
	// TSDoD stores the zigzagged delta of deltas: regular arrivals with
	// drift.
	TSDoD TSTransform = 2
	// TSGrid stores the zigzagged offset of t[i] from t[0]+i·P for the
	// column's mean period P: regular arrivals with independent jitter,
	// where the offset is the whole information.
	TSGrid TSTransform = 3
)

func (t TSTransform) String() string {
	switch t {
	case TSDelta:
		return "delta"
	case TSDoD:
		return "dod"
	case TSGrid:
		return "grid"
	}
	return fmt.Sprintf("TSTransform(%d)", uint8(t))
}

// transformTimestamps fills us with the transform of ts (divided by the
// common step) and returns the column header fields.
func transformTimestamps(us []uint64, ts []int64, tr TSTransform) (_ []uint64, step uint64, period int64, ok bool) {
	us = us[:0]
	n := len(ts)
	switch tr {
	case TSDelta:
		for i := 1; i < n; i++ {
			d := ts[i] - ts[i-1]
			if d < 0 || ts[i] < ts[i-1] {
				return us, 0, 0, false
			}
			us = append(us, uint64(d))
		}
	case TSDoD:
		var prev int64
		for i := 1; i < n; i++ {
			d := ts[i] - ts[i-1]
			us = append(us, zigzag(d-prev))
			prev = d
		}
	case TSGrid:
		if n > 1 {
			period = int64(math.Round(float64(ts[n-1]-ts[0]) / float64(n-1)))
		}
		for i := 1; i < n; i++ {
			us = append(us, zigzag(ts[i]-ts[0]-int64(i)*period))
		}
	default:
		return us, 0, 0, false
	}
	// Divide by the common step: µs- or ms-quantized SDKs leave every
	// value a multiple of 1000 or 10^6. For signed transforms the step is
	// taken on the signed values, since zigzag does not keep divisibility.
	step = 0
	for _, u := range us {
		v := u
		if tr != TSDelta {
			v = uint64(abs(unzigzag(u)))
		}
		step = gcd(step, v)
	}
	if step == 0 {
		step = 1
	}
	if step > 1 {
		for i, u := range us {
			if tr == TSDelta {
				us[i] = u / step
			} else {
				us[i] = zigzag(unzigzag(u) / int64(step))
			}
		}
	}
	return us, step, period, true
}

func abs(v int64) int64 {
	if v < 0 {
		return -v
	}
	return v
}

// AppendTimestamps encodes ts with the cheapest transform and coder and
// appends the column to dst.
func (e *Encoder) AppendTimestamps(dst []byte, ts []int64) []byte {
	best, bestCost := TSTransform(0), uint64(math.MaxUint64)
	for _, tr := range []TSTransform{TSDelta, TSDoD, TSGrid} {
		var ok bool
		e.us, _, _, ok = transformTimestamps(e.us, ts, tr)
		if !ok {
			continue
		}
		_, _, cost := bestIntCoder(e.us)
		if cost < bestCost {
			best, bestCost = tr, cost
		}
	}
	dst, _ = e.AppendTimestampsWith(dst, ts, best)
	return dst
}

// AppendTimestampsWith encodes ts with transform tr (TSDelta needs sorted
// ts) and the cheapest coder.
func (e *Encoder) AppendTimestampsWith(dst []byte, ts []int64, tr TSTransform) ([]byte, error) {
	var (
		step   uint64
		period int64
		ok     bool
	)
	e.us, step, period, ok = transformTimestamps(e.us, ts, tr)
	if !ok {
		return dst, fmt.Errorf("hopwatch/chunkenc: transform %s cannot encode these timestamps", tr)
	}
	dst = append(dst, byte(tr))
	if len(ts) == 0 {
		return dst, nil
	}
	dst = appendVarint(dst, ts[0])
	dst = appendUvarint(dst, step)
	if tr == TSGrid {
		dst = appendVarint(dst, period)
	}
	c, p, _ := bestIntCoder(e.us)
	return appendInts(dst, e.us, c, p), nil
}

// DecodeTimestamps appends the n timestamps of column b to dst.
func (d *Decoder) DecodeTimestamps(dst []int64, b []byte, n int) ([]int64, error) {
	h := header{b: b}
	tr := TSTransform(h.byte("timestamp transform"))
	if n == 0 {
		return dst, h.err
	}
	t0 := h.varint("first timestamp")
	step := h.uvarint("timestamp step")
	var period int64
	if tr == TSGrid {
		period = h.varint("timestamp period")
	}
	if h.err != nil {
		return dst, h.err
	}
	if step == 0 || step > math.MaxInt64 {
		return dst, corrupt("timestamp step %d", step)
	}
	var err error
	d.us, err = readInts(d.us[:0], h.b, n-1)
	if err != nil {
		return dst, err
	}
	dst = append(dst, t0)
	s := int64(step)
	switch tr {
	case TSDelta:
		t := t0
		for _, u := range d.us {
			t += int64(u) * s
			dst = append(dst, t)
		}
	case TSDoD:
		t, delta := t0, int64(0)
		for _, u := range d.us {
			delta += unzigzag(u) * s
			t += delta
			dst = append(dst, t)
		}
	case TSGrid:
		for i, u := range d.us {
			dst = append(dst, t0+int64(i+1)*period+unzigzag(u)*s)
		}
	default:
		return dst, corrupt("unknown timestamp transform %d", tr)
	}
	return dst, nil
}
