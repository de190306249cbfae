package raw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/recbuf"
	"math"
	"sync"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
)

// WAL record types. A record is a type byte, a count and that many entries:
//
//	series:   ref, key (length-prefixed), label count, (name, value) length-prefixed
//	samples:  ref, time (delta from the previous entry, signed), latency,
//	          trace id (16 bytes)
//	weighted: as samples, with one weight for every entry after the count:
//	          the samples of a sampled append (see sampling.go)
//
// Unsampled appends write samples records, so weight 1 costs nothing.
const (
	recSeries          byte = 1
	recSamples         byte = 2
	recWeightedSamples byte = 3
)

var errCorruptRecord = errors.New("hopwatch/raw: corrupt WAL record")

func appendSeriesRecord(b []byte, ref uint64, key string, lset labels.Labels) []byte {
	b = append(b, recSeries)
	b = binary.AppendUvarint(b, 1)
	b = binary.AppendUvarint(b, ref)
	return appendSeriesHead(b, key, lset)
}

// appendSeriesHead writes a series' key and labels (WAL series records and
// the head checkpoint share it).
func appendSeriesHead(b []byte, key string, lset labels.Labels) []byte {
	b = binary.AppendUvarint(b, uint64(len(key)))
	b = append(b, key...)
	return recbuf.AppendLabels(b, lset)
}

type walSample struct {
	ref     uint64
	t       int64
	latency int64
	traceID [16]byte
	weight  uint32
}

func decodeSeriesRecord(rec []byte, sb *labels.ScratchBuilder, f func(ref uint64, key string, lset labels.Labels)) error {
	r := recbuf.New(rec, 1, errCorruptRecord)
	n := r.Count("series count")
	for range n {
		ref := r.Uvarint("series ref")
		key := r.String("series key")
		lset := r.Labels(sb)
		if r.Err() != nil {
			return r.Err()
		}
		f(ref, key, lset)
	}
	return r.Err()
}

// decodeSamplesRecord decodes a samples or weighted samples record.
func decodeSamplesRecord(rec []byte, dst []walSample) ([]walSample, error) {
	r := recbuf.New(rec, 1, errCorruptRecord)
	n := r.Count("sample count")
	weight := uint64(1)
	if len(rec) > 0 && rec[0] == recWeightedSamples {
		weight = r.Uvarint("sample weight")
		if r.Err() == nil && (weight == 0 || weight > math.MaxUint32) {
			r.Fail("sample weight")
		}
	}
	if r.Err() != nil {
		return dst, r.Err()
	}
	var t int64
	for range n {
		s := walSample{weight: uint32(weight)}
		s.ref = r.Uvarint("sample ref")
		t += r.Varint("sample time")
		s.t = t
		s.latency = int64(r.Uvarint("sample latency"))
		copy(s.traceID[:], r.Bytes(16, "trace id"))
		if r.Err() != nil {
			break
		}
		if s.latency < 0 {
			r.Fail("sample latency")
			break
		}
		dst = append(dst, s)
	}
	return dst, r.Err()
}

// groupCommit writes records to the WAL on behalf of concurrent appenders:
// whoever finds no write in progress becomes the leader and writes every
// record queued so far in one wlog.Log call (and one fsync), while the
// others wait for it. Under load, one write serves many appends.
type groupCommit struct {
	wal   *wlog.WL
	fsync bool

	mtx      sync.Mutex
	cond     *sync.Cond
	pending  [][]byte
	spare    [][]byte
	queued   uint64 // id of the batch records are being queued into
	done     uint64 // last batch id written (0: none)
	writing  bool
	failed   error // sticky: after a failed write the WAL is not trusted
	onCommit func(records int)
}

func newGroupCommit(w *wlog.WL, fsync bool, onCommit func(int)) *groupCommit {
	g := &groupCommit{wal: w, fsync: fsync, queued: 1, onCommit: onCommit}
	g.cond = sync.NewCond(&g.mtx)
	return g
}

// commit returns once recs are in the WAL (and fsynced with fsync on).
// recs must stay unmodified until commit returns.
func (g *groupCommit) commit(recs ...[]byte) error {
	g.mtx.Lock()
	defer g.mtx.Unlock()
	if g.failed != nil {
		return g.failed
	}
	g.pending = append(g.pending, recs...)
	my := g.queued
	for g.writing {
		g.cond.Wait()
		if g.done >= my {
			return g.failed
		}
	}
	// Lead: write the whole queue as batch my.
	batch := g.pending
	g.pending = g.spare[:0]
	g.queued++
	g.writing = true
	g.mtx.Unlock()

	err := g.wal.Log(batch...)
	if err == nil && g.fsync {
		err = g.wal.Sync()
	}
	if g.onCommit != nil {
		g.onCommit(len(batch))
	}

	g.mtx.Lock()
	clear(batch)
	g.spare = batch[:0]
	g.done = my
	g.writing = false
	if err != nil {
		g.failed = fmt.Errorf("hopwatch/raw: WAL write failed; restart to recover: %w", err)
	}
	g.cond.Broadcast()
	return g.failed
}
