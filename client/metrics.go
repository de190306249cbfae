package client

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a record is dropped, as values of the reason label.
const (
	// reasonQueueFull: Record found the queue full (under Block, until its
	// deadline).
	reasonQueueFull = "queue_full"
	// reasonRejected: hopwatch refused the record, alone or with its batch.
	reasonRejected = "rejected"
	// reasonDuplicateSeq: hopwatch answered DUPLICATE to a batch it cannot
	// have applied (sent once, or every earlier send answered UNAVAILABLE):
	// another client used the same writer id, or hopwatch applied a later
	// batch first.
	reasonDuplicateSeq = "duplicate_seq"
	// reasonClosed: Record after Close, or records Close could not deliver
	// before its deadline.
	reasonClosed = "closed"
)

type clientMetrics struct {
	recordsSent    prometheus.Counter
	recordsDropped *prometheus.CounterVec // reason
	// The children of recordsDropped, resolved once so that counting a drop
	// neither allocates nor hashes.
	droppedQueueFull, droppedRejected, droppedDuplicateSeq, droppedClosed prometheus.Counter

	batchesSent    prometheus.Counter
	batchesRetried prometheus.Counter
	reconnects     prometheus.Counter
	queueLength    prometheus.GaugeFunc
	queueCapacity  prometheus.Gauge
	inflight       prometheus.Gauge
	credit         prometheus.Gauge
	sendDuration   prometheus.Histogram
}

// newClientMetrics builds the metrics and registers them with reg, if not
// nil; queueLength is read when they are collected.
func newClientMetrics(reg prometheus.Registerer, queueLength func() float64) (*clientMetrics, error) {
	m := &clientMetrics{
		recordsSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_client_records_sent_total",
			Help: "Records acknowledged by hopwatch (status OK, or DUPLICATE for a batch sent again), less those it refused one by one.",
		}),
		recordsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_client_records_dropped_total",
			Help: "Records not delivered, by reason: queue_full (Record found no room), rejected (refused by hopwatch), duplicate_seq (hopwatch answered DUPLICATE to a batch it had not applied), closed (Record after Close, or not delivered by Close's deadline).",
		}, []string{"reason"}),
		batchesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_client_batches_sent_total",
			Help: "Batches sent for the first time.",
		}),
		batchesRetried: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_client_batches_retried_total",
			Help: "Batches sent again with the same seq: after a reconnect, or after hopwatch answered UNAVAILABLE.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_client_reconnects_total",
			Help: "Times the stream failed, or could not be opened, and the client reconnected after a backoff.",
		}),
		queueLength: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "hopwatch_client_queue_length",
			Help: "Records recorded and neither acknowledged nor dropped: waiting, being sent or awaiting an acknowledgement.",
		}, queueLength),
		queueCapacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_client_queue_capacity",
			Help: "Records the queue holds at most.",
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_client_inflight_batches",
			Help: "Batches sent on the current stream and not yet acknowledged.",
		}),
		credit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_client_credit",
			Help: "Batches hopwatch allows the client to send now; 0 while it withholds credit.",
		}),
		sendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:                           "hopwatch_client_send_duration_seconds",
			Help:                           "Time from sending a batch to its acknowledgement.",
			Buckets:                        prometheus.ExponentialBuckets(0.001, 4, 8), // 1ms to 16s
			NativeHistogramBucketFactor:    1.1,
			NativeHistogramMaxBucketNumber: 100,
		}),
	}
	m.droppedQueueFull = m.recordsDropped.WithLabelValues(reasonQueueFull)
	m.droppedRejected = m.recordsDropped.WithLabelValues(reasonRejected)
	m.droppedDuplicateSeq = m.recordsDropped.WithLabelValues(reasonDuplicateSeq)
	m.droppedClosed = m.recordsDropped.WithLabelValues(reasonClosed)
	if reg == nil {
		return m, nil
	}
	cs := []prometheus.Collector{m.recordsSent, m.recordsDropped, m.batchesSent, m.batchesRetried, m.reconnects,
		m.queueLength, m.queueCapacity, m.inflight, m.credit, m.sendDuration}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, r := range cs[:i] {
				reg.Unregister(r)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("hopwatch/client: metrics already registered: to run several clients on one registry, give each its own label, for example prometheus.WrapRegistererWith(prometheus.Labels{\"writer\": w}, reg)")
			}
			return nil, err
		}
	}
	return m, nil
}
