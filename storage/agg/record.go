package agg

import (
	"encoding/binary"
	"errors"
	"github.com/hopwatch/hopwatch/internal/recbuf"
	"github.com/hopwatch/hopwatch/sample"

	"github.com/prometheus/prometheus/model/labels"
)

// Record types of the ingest WAL. Each WAL record is one type byte followed
// by a count and that many entries; integers are varints.
//
//	series:  ref, family (byte), key (len + bytes), label count, (name, value)...
//	samples: ref, start delta from the previous sample (signed), duration,
//	         flags (1: a 16-byte trace id follows; 2: failed)
//	created: ref (series whose first samples reached the TSDB)
//	samples of a streamed batch: a samples record, then writer (len +
//	         bytes) and seq, so that the batch and its seq are logged at once
const (
	recSeries     byte = 1
	recSamples    byte = 2
	recCreated    byte = 3
	recSamplesSeq byte = 4
)

// errCorruptRecord is wrapped by every decoding error of a WAL record.
var errCorruptRecord = errors.New("hopwatch/agg: corrupt WAL record")

type walSample struct {
	ref      uint64
	start    int64
	duration int64
	hasTrace bool
	failed   bool
	traceID  [16]byte
}

// Flags of a WAL sample.
const (
	flagTrace  byte = 1
	flagFailed byte = 2
)

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendSeriesRecord(b []byte, ss []*series) []byte {
	b = append(b, recSeries)
	b = binary.AppendUvarint(b, uint64(len(ss)))
	for _, s := range ss {
		b = appendSeriesHead(b, s)
	}
	return b
}

// appendSeriesHead writes what identifies a series: ref, family, key and
// labels (WAL series records and checkpoints share it).
func appendSeriesHead(b []byte, s *series) []byte {
	b = binary.AppendUvarint(b, s.ref)
	b = append(b, byte(s.family))
	b = appendString(b, s.key)
	return recbuf.AppendLabels(b, s.lset)
}

func appendCreatedRecord(b []byte, refs []uint64) []byte {
	b = append(b, recCreated)
	b = binary.AppendUvarint(b, uint64(len(refs)))
	for _, r := range refs {
		b = binary.AppendUvarint(b, r)
	}
	return b
}

type seriesEntry struct {
	ref    uint64
	family sample.Family
	key    string
	lset   labels.Labels
}

func decodeSeriesRecord(rec []byte, sb *labels.ScratchBuilder, dst []seriesEntry) ([]seriesEntry, error) {
	d := recbuf.New(rec, 1, errCorruptRecord) // an empty record fails, not panics
	n := d.Count("series count")
	for range n {
		var e seriesEntry
		e.ref = d.Uvarint("series ref")
		e.family = sample.Family(d.Byte("series family"))
		if e.family >= sample.NumFamilies {
			d.Fail("series family")
		}
		e.key = d.String("series key")
		e.lset = d.Labels(sb)
		if d.Err() != nil {
			break
		}
		dst = append(dst, e)
	}
	return dst, d.Err()
}

func decodeSamplesRecord(rec []byte, dst []walSample) ([]walSample, error) {
	d := recbuf.New(rec, 1, errCorruptRecord) // an empty record fails, not panics
	return decodeSamples(d, dst)
}

// decodeSamplesSeqRecord decodes a recSamplesSeq record.
func decodeSamplesSeqRecord(rec []byte, dst []walSample) (_ []walSample, writer string, seq uint64, err error) {
	d := recbuf.New(rec, 1, errCorruptRecord)
	dst, err = decodeSamples(d, dst)
	if err != nil {
		return dst, "", 0, err
	}
	writer = d.String("writer")
	seq = d.Uvarint("seq")
	return dst, writer, seq, d.Err()
}

func decodeSamples(d *recbuf.Reader, dst []walSample) ([]walSample, error) {
	n := d.Count("sample count")
	var prev int64
	for range n {
		var s walSample
		s.ref = d.Uvarint("sample ref")
		prev += d.Varint("sample start")
		s.start = prev
		s.duration = int64(d.Uvarint("sample duration"))
		flags := d.Byte("sample flags")
		if flags&^(flagTrace|flagFailed) != 0 {
			d.Fail("sample flags")
		}
		s.failed = flags&flagFailed != 0
		if flags&flagTrace != 0 {
			s.hasTrace = true
			copy(s.traceID[:], d.Bytes(16, "trace id"))
		}
		if d.Err() != nil {
			break
		}
		dst = append(dst, s)
	}
	return dst, d.Err()
}

func decodeCreatedRecord(rec []byte, dst []uint64) ([]uint64, error) {
	d := recbuf.New(rec, 1, errCorruptRecord) // an empty record fails, not panics
	n := d.Count("created count")
	for range n {
		r := d.Uvarint("created ref")
		if d.Err() != nil {
			break
		}
		dst = append(dst, r)
	}
	return dst, d.Err()
}
