package client

import (
	"time"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

// batch is one HopBatch in columns. A batch is filled by Record while it is
// the client's current batch, then sealed (given its seq and never changed
// again) and handed to the sender, and reused once it is acknowledged or
// dropped. Its columns are allocated once with room for MaxBatchRecords
// records, so filling it allocates nothing.
type batch struct {
	// Written under Client.mu while the batch is current; read-only once
	// sealed.
	seq       uint64
	gen       uint64 // tells the series slots of this filling from older ones
	n         int    // records
	bytes     int    // upper bound of the encoded size, from batchOverhead
	lastStart int64
	hasTrace  bool
	hasFailed bool
	series    []*hopwatchv1.HopSeries
	index     []uint32
	starts    []int64 // delta-encoded
	durations []uint64
	traceIDs  []byte
	failed    []byte

	// The wire message, pointing at the columns; set when sealed.
	req hopwatchv1.StreamRequest
	msg hopwatchv1.HopBatch

	// Owned by the sender.
	sends  int    // times sent, over all streams
	stream uint64 // the stream it was last sent on
	resend bool   // to be sent (again) on the current stream
	// unanswered: a stream ended while it was in flight, so hopwatch may
	// have applied it. Only then is a DUPLICATE answer a delivery.
	unanswered bool
	queuedAt   uint64    // its position in that stream's send queue
	sentAt     time.Time // when it was last handed to the stream
}

func newBatch(records int) *batch {
	return &batch{
		series:    make([]*hopwatchv1.HopSeries, 0, 16),
		index:     make([]uint32, 0, records),
		starts:    make([]int64, 0, records),
		durations: make([]uint64, 0, records),
		traceIDs:  make([]byte, 0, 16*records),
		failed:    make([]byte, 0, (records+7)/8),
	}
}

// reset empties the batch for a new filling.
func (b *batch) reset(gen uint64) {
	b.seq, b.gen, b.n, b.bytes, b.lastStart = 0, gen, 0, batchOverhead, 0
	b.hasTrace, b.hasFailed = false, false
	clear(b.series) // let go of series nobody else holds
	b.series = b.series[:0]
	b.index = b.index[:0]
	b.starts = b.starts[:0]
	b.durations = b.durations[:0]
	b.traceIDs = b.traceIDs[:0]
	b.failed = b.failed[:0]
	b.req.Batch = nil
	b.sends, b.stream, b.resend, b.unanswered, b.queuedAt, b.sentAt = 0, 0, false, false, 0, time.Time{}
}

// add appends a record of the batch's series i.
func (b *batch) add(i uint32, start int64, duration uint64, traceID *[16]byte, failed bool) {
	k := b.n
	b.index = append(b.index, i)
	if k == 0 {
		b.starts = append(b.starts, start)
	} else {
		b.starts = append(b.starts, start-b.lastStart)
	}
	b.lastStart = start
	b.durations = append(b.durations, duration)
	b.traceIDs = append(b.traceIDs, traceID[:]...)
	if *traceID != ([16]byte{}) {
		b.hasTrace = true
	}
	if k%8 == 0 {
		b.failed = append(b.failed, 0)
	}
	if failed {
		b.failed[k/8] |= 1 << (k % 8)
		b.hasFailed = true
	}
	b.n++
	b.bytes += maxRecordBytes
}

// seal gives the batch its seq and watermark and points its message at the
// columns. Columns with nothing to say (no trace ids, no failure) are left
// out, as the format allows.
func (b *batch) seal(seq uint64, watermark int64) {
	b.seq = seq
	m := &b.msg
	m.Seq = seq
	m.Series = b.series
	m.SeriesIndex = b.index
	m.StartTimeDeltaUnixNano = b.starts
	m.DurationNano = b.durations
	m.TraceIds, m.Failed = nil, nil
	if b.hasTrace {
		m.TraceIds = b.traceIDs
	}
	if b.hasFailed {
		m.Failed = b.failed
	}
	m.WatermarkUnixNano = watermark
	b.req.Batch = &b.msg
}
