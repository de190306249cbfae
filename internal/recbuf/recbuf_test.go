package recbuf

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
)

var errTest = errors.New("test: corrupt")

func TestReaderReadsAndStopsAtTheFirstError(t *testing.T) {
	b := binary.AppendUvarint(nil, 3)
	b = binary.AppendVarint(b, -5)
	b = append(b, "abc"...)
	b = binary.BigEndian.AppendUint64(b, 42)
	r := New(b, 0, errTest)
	require.Equal(t, 3, r.Count("count"))
	require.Equal(t, int64(-5), r.Varint("v"))
	require.Equal(t, "abc", string(r.Bytes(3, "s")))
	require.Equal(t, uint64(42), r.Uint64BE("be"))
	require.NoError(t, r.Err())
	require.Zero(t, r.Byte("past the end"))
	require.ErrorIs(t, r.Err(), errTest)
	require.ErrorContains(t, r.Err(), "bad past the end at offset")
	require.Zero(t, r.Uvarint("after"), "reads after an error return zero")

	r = New(binary.AppendUvarint(nil, 1<<40), 0, errTest)
	require.Zero(t, r.Count("huge count"))
	require.ErrorContains(t, r.Err(), "huge count")
}
