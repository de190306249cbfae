package agg

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/prometheus/prometheus/model/labels"
)

// Record types of the ingest WAL. Each WAL record is one type byte followed
// by a count and that many entries; integers are varints.
//
//	series:  ref, key (len + bytes), label count, (name, value)...
//	samples: ref, start delta from the previous sample (signed), duration,
//	         flag (1: a 16-byte trace id follows)
//	created: ref (series whose first samples reached the TSDB)
const (
	recSeries  byte = 1
	recSamples byte = 2
	recCreated byte = 3
)

// errCorruptRecord is wrapped by every decoding error of a WAL record.
var errCorruptRecord = errors.New("hopwatch/agg: corrupt WAL record")

type walSample struct {
	ref      uint64
	start    int64
	duration int64
	hasTrace bool
	traceID  [16]byte
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendSeriesRecord(b []byte, ss []*series) []byte {
	b = append(b, recSeries)
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = binary.AppendUvarint(b, s.ref)
		b = appendString(b, s.key)
		b = binary.AppendUvarint(b, uint64(s.lset.Len()))
		s.lset.Range(func(l labels.Label) {
			b = appendString(b, l.Name)
			b = appendString(b, l.Value)
		})
	}
	return b
}

func appendCreatedRecord(b []byte, refs []uint64) []byte {
	b = append(b, recCreated)
	b = binary.AppendUvarint(b, uint64(len(refs)))
	for _, r := range refs {
		b = binary.AppendUvarint(b, r)
	}
	return b
}

// decoder reads the varint layout shared by WAL records and checkpoints,
// remembering the first error and where it happened.
type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(what string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: bad %s at offset %d of %d", errCorruptRecord, what, d.off, len(d.b))
	}
}

func (d *decoder) uvarint(what string) uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint(what string) int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail(what)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) bytes(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b)-d.off {
		d.fail(what)
		return nil
	}
	v := d.b[d.off : d.off+n]
	d.off += n
	return v
}

func (d *decoder) byte(what string) byte {
	v := d.bytes(1, what)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) uint64be(what string) uint64 {
	v := d.bytes(8, what)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (d *decoder) string(what string) string {
	n := d.uvarint(what)
	return string(d.bytes(int(min(n, uint64(len(d.b)+1))), what))
}

// count reads an entry count, bounded by the bytes left (every entry takes
// at least one byte), so that a corrupt count cannot force a huge allocation.
func (d *decoder) count(what string) int {
	n := d.uvarint(what)
	if n > uint64(len(d.b)-d.off) {
		d.fail(what)
		return 0
	}
	return int(n)
}

func (d *decoder) labels(sb *labels.ScratchBuilder) labels.Labels {
	n := d.count("label count")
	sb.Reset()
	for range n {
		name := d.string("label name")
		value := d.string("label value")
		sb.Add(name, value)
	}
	sb.Sort()
	return sb.Labels()
}

type seriesEntry struct {
	ref  uint64
	key  string
	lset labels.Labels
}

func decodeSeriesRecord(rec []byte, sb *labels.ScratchBuilder, dst []seriesEntry) ([]seriesEntry, error) {
	d := decoder{b: rec, off: min(1, len(rec))} // an empty record fails, not panics
	n := d.count("series count")
	for range n {
		var e seriesEntry
		e.ref = d.uvarint("series ref")
		e.key = d.string("series key")
		e.lset = d.labels(sb)
		if d.err != nil {
			break
		}
		dst = append(dst, e)
	}
	return dst, d.err
}

func decodeSamplesRecord(rec []byte, dst []walSample) ([]walSample, error) {
	d := decoder{b: rec, off: min(1, len(rec))} // an empty record fails, not panics
	n := d.count("sample count")
	var prev int64
	for range n {
		var s walSample
		s.ref = d.uvarint("sample ref")
		prev += d.varint("sample start")
		s.start = prev
		s.duration = int64(d.uvarint("sample duration"))
		switch d.byte("sample flag") {
		case 0:
		case 1:
			s.hasTrace = true
			copy(s.traceID[:], d.bytes(16, "trace id"))
		default:
			d.fail("sample flag")
		}
		if d.err != nil {
			break
		}
		dst = append(dst, s)
	}
	return dst, d.err
}

func decodeCreatedRecord(rec []byte, dst []uint64) ([]uint64, error) {
	d := decoder{b: rec, off: min(1, len(rec))} // an empty record fails, not panics
	n := d.count("created count")
	for range n {
		r := d.uvarint("created ref")
		if d.err != nil {
			break
		}
		dst = append(dst, r)
	}
	return dst, d.err
}
