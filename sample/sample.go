package sample

import "github.com/prometheus/prometheus/model/labels"

// Series identifies one latency series within a batch.
type Series struct {
	// Key is the series identity in a compact form: two series have equal
	// keys exactly when their labels are equal. Storage indexes by it so that
	// a known series costs a map lookup, not a label comparison.
	Key string
	// Labels are the series' labels without a metric name.
	Labels labels.Labels
}

// Sample is one accepted latency measurement.
type Sample struct {
	// Series is the index of the sample's series in Batch.Series.
	Series uint32
	// Start is the span's start time in Unix nanoseconds.
	Start int64
	// Duration is the latency in nanoseconds, never negative.
	Duration int64
	// TraceID is the trace the sample came from, for exemplars.
	TraceID [16]byte
}

// Batch is the unit ingest appends: the samples of one request, with the
// distinct series they refer to. A Batch is reused; Reset keeps its memory.
type Batch struct {
	Series  []Series
	Samples []Sample
}

// Reset empties the batch and keeps its capacity.
func (b *Batch) Reset() {
	clear(b.Series) // drop label references so they can be collected
	b.Series = b.Series[:0]
	b.Samples = b.Samples[:0]
}
