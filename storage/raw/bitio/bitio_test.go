package bitio

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	type op struct {
		kind byte // 'b' bits, 'u' unary, 'r' rice
		v    uint64
		n    uint
	}
	var ops []op
	w := NewWriter(nil)
	var total uint64
	for range 20000 {
		switch rng.IntN(3) {
		case 0:
			n := uint(rng.IntN(65))
			v := rng.Uint64()
			if n < 64 {
				v &= 1<<n - 1
			}
			w.WriteBits(v, n)
			ops = append(ops, op{'b', v, n})
			total += uint64(n)
		case 1:
			q := uint64(rng.IntN(100))
			w.WriteUnary(q)
			ops = append(ops, op{'u', q, 0})
			total += q + 1
		case 2:
			k := uint(rng.IntN(40))
			v := rng.Uint64() >> (64 - k - uint(rng.IntN(6)))
			if k == 0 {
				v = uint64(rng.IntN(50))
			}
			w.WriteRice(v, k)
			ops = append(ops, op{'r', v, k})
			total += RiceLen(v, k)
		}
	}
	buf := w.Bytes()
	require.Equal(t, int((total+7)/8), len(buf))
	r := NewReader(buf)
	for i, o := range ops {
		var got uint64
		var err error
		switch o.kind {
		case 'b':
			got, err = r.ReadBits(o.n)
		case 'u':
			got, err = r.ReadUnary(1 << 20)
		case 'r':
			got, err = r.ReadRice(o.n, 1<<20)
		}
		require.NoError(t, err, "op %d", i)
		require.Equal(t, o.v, got, "op %d %c n=%d", i, o.kind, o.n)
	}
	// Only padding is left.
	_, err := r.ReadBits(8)
	require.ErrorIs(t, err, ErrShort)
}

func TestReadUnaryLimit(t *testing.T) {
	w := NewWriter(nil)
	w.WriteUnary(1000)
	r := NewReader(w.Bytes())
	_, err := r.ReadUnary(999)
	require.Error(t, err)
	r = NewReader([]byte{0xff, 0xff})
	_, err = r.ReadUnary(1 << 20)
	require.ErrorIs(t, err, ErrShort)
}
