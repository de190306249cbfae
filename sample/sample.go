package sample

import (
	"errors"

	"github.com/prometheus/prometheus/model/labels"
)

// Family says which metrics a series feeds; storage names the output
// series by it.
type Family uint8

// The families.
const (
	// FamilySpan: one span's duration (span metrics: calls and latency).
	FamilySpan Family = iota
	// FamilyEdgeServer: the server side of a client→server edge (service
	// graph requests, failures and server-side latency).
	FamilyEdgeServer
	// FamilyEdgeClient: the client side of an edge (client-side latency).
	FamilyEdgeClient
	// FamilyUnpaired counts spans that expired without their peer.
	FamilyUnpaired
	// FamilyDropped counts spans the pairing store had no room for.
	FamilyDropped
	// FamilyNetwork: client minus server duration of a paired request.
	FamilyNetwork
	// FamilyQueue: consumer start minus producer end of a messaging hop,
	// corrected for the clock offset between their nodes.
	FamilyQueue
	// FamilyClockOffset: a gauge, the estimated clock offset between two
	// nodes; Duration holds it in ns and may be negative.
	FamilyClockOffset
	// FamilyStage: the time between two consecutive stage events of a
	// span (enqueue → dequeue → arrive → done).
	FamilyStage
	// NumFamilies bounds the valid values.
	NumFamilies
)

// Series identifies one latency series within a batch.
type Series struct {
	// Family selects the metrics the series feeds.
	Family Family
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
	// Duration is the latency in nanoseconds, never negative (except for
	// FamilyClockOffset, where it is a signed gauge value).
	Duration int64
	// TraceID is the trace the sample came from, for exemplars.
	TraceID [16]byte
	// Failed marks a failed request (edges: either side had an error).
	Failed bool
}

// Batch is the unit ingest appends: the samples of one request, with the
// distinct series they refer to. A Batch is reused; Reset keeps its memory.
type Batch struct {
	Series  []Series
	Samples []Sample
	// Refused counts what storage took out of the batch for a limit.
	Refused Refused
	// Writer and Seq identify a streamed batch (Seq ≥ 1; 0 for OTLP):
	// storage applies a writer's seq once, across restarts, and answers
	// ErrDuplicate for a seq at or below the last it applied.
	Writer string
	Seq    uint64
}

// ErrDuplicate is returned by storage for a batch whose writer and seq it
// has applied before; nothing of the batch is applied again.
var ErrDuplicate = errors.New("hopwatch: batch already applied (same writer and seq)")

// Refused counts the samples storage removed from a batch because their
// series would have taken the tenant over its active series limit.
type Refused struct {
	// Samples of every family, and of them the span samples (one per
	// span), which ingest reports back to the client.
	Samples, Spans int
}

// Reset empties the batch and keeps its capacity.
func (b *Batch) Reset() {
	clear(b.Series) // drop label references so they can be collected
	b.Series = b.Series[:0]
	b.Samples = b.Samples[:0]
	b.Refused = Refused{}
	b.Writer, b.Seq = "", 0
}
