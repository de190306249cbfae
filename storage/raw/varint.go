package raw

import (
	"encoding/binary"
	"slices"
)

func appendUvarint(b []byte, v uint64) []byte { return binary.AppendUvarint(b, v) }
func appendVarint(b []byte, v int64) []byte   { return binary.AppendVarint(b, v) }

// countWidth is the fixed width of a record's sample count: the count is
// known only after the samples are written, so it is written as a padded
// varint (continuation bits set on the leading bytes), which any varint
// reader decodes.
const countWidth = 5

func appendUvarintPlaceholder(b []byte) []byte { return append(b, make([]byte, countWidth)...) }

// fillCount writes n as a padded varint into the placeholder ending at end.
func fillCount(b []byte, end, n int) []byte {
	p := b[end-countWidth : end]
	v := uint64(n)
	for i := range countWidth - 1 {
		p[i] = byte(v&0x7f) | 0x80
		v >>= 7
	}
	p[countWidth-1] = byte(v & 0x7f)
	return b
}

func sortStrings(s []string) { slices.Sort(s) }
