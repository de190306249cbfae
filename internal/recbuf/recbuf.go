// Package recbuf reads the varint-framed records and files hopwatch writes
// (WAL records, checkpoints), keeping the first error with what was being
// read and where, and never allocating more than the input can hold.
package recbuf

import (
	"encoding/binary"
	"fmt"
	"os"

	"github.com/prometheus/prometheus/model/labels"
)

// Reader reads fields from b starting at an offset. After the first error
// every read returns zero values; Err reports that error, which wraps the
// sentinel given to New.
type Reader struct {
	b        []byte
	off      int
	err      error
	sentinel error
}

// New returns a reader over b from offset off; errors wrap sentinel.
func New(b []byte, off int, sentinel error) *Reader {
	return &Reader{b: b, off: min(off, len(b)), sentinel: sentinel}
}

// Err returns the first error.
func (r *Reader) Err() error { return r.err }

// Fail records an error about field what at the current offset.
func (r *Reader) Fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: bad %s at offset %d of %d", r.sentinel, what, r.off, len(r.b))
	}
}

// Uvarint reads an unsigned varint.
func (r *Reader) Uvarint(what string) uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b[r.off:])
	if n <= 0 {
		r.Fail(what)
		return 0
	}
	r.off += n
	return v
}

// Varint reads a signed varint.
func (r *Reader) Varint(what string) int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b[r.off:])
	if n <= 0 {
		r.Fail(what)
		return 0
	}
	r.off += n
	return v
}

// Bytes reads n bytes; the result views the input.
func (r *Reader) Bytes(n uint64, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > uint64(len(r.b)-r.off) {
		r.Fail(what)
		return nil
	}
	v := r.b[r.off : r.off+int(n)]
	r.off += int(n)
	return v
}

// Byte reads one byte.
func (r *Reader) Byte(what string) byte {
	v := r.Bytes(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

// Uint64BE reads a big-endian uint64.
func (r *Reader) Uint64BE(what string) uint64 {
	v := r.Bytes(8, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// String reads a length-prefixed string.
func (r *Reader) String(what string) string {
	return string(r.Bytes(r.Uvarint(what+" length"), what))
}

// Count reads an entry count, refusing one larger than the bytes left
// (every entry takes at least one byte), so that a corrupt count cannot
// force a huge allocation.
func (r *Reader) Count(what string) int {
	n := r.Uvarint(what)
	if n > uint64(len(r.b)-r.off) {
		r.Fail(what)
		return 0
	}
	return int(n)
}

// AppendLabels appends a label count and the length-prefixed name/value
// pairs, the layout Labels reads.
func AppendLabels(b []byte, lset labels.Labels) []byte {
	b = binary.AppendUvarint(b, uint64(lset.Len()))
	lset.Range(func(l labels.Label) {
		b = binary.AppendUvarint(b, uint64(len(l.Name)))
		b = append(b, l.Name...)
		b = binary.AppendUvarint(b, uint64(len(l.Value)))
		b = append(b, l.Value...)
	})
	return b
}

// Labels reads labels written by AppendLabels, sorted, built in sb.
func (r *Reader) Labels(sb *labels.ScratchBuilder) labels.Labels {
	n := r.Count("label count")
	sb.Reset()
	for range n {
		name := r.String("label name")
		value := r.String("label value")
		sb.Add(name, value)
	}
	sb.Sort()
	return sb.Labels()
}

// WriteFileSync writes b to name and fsyncs it, for files installed with
// an atomic rename afterwards.
func WriteFileSync(name string, b []byte) error {
	f, err := os.Create(name)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
