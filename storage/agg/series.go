package agg

import (
	"math"
	"math/bits"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/sample"
)

// series is the in-memory aggregate of one span latency series: everything
// the span metrics of that label set need, cumulative since the series was
// created, as Prometheus counters are.
type series struct {
	ref    uint64
	key    string
	lset   labels.Labels
	family sample.Family

	count  uint64
	failed uint64
	gauge  int64 // last value of a gauge family, ns

	// active is set by every sample and cleared by a flush, which then
	// moves lastActive (ms) to its time: a series idle past the timeout
	// is closed.
	active     bool
	lastActive int64
	// sumHi:sumLo is the 128-bit sum of durations in ns, exact: a uint64
	// of ns overflows after 292 years of summed latency, which a busy
	// series reaches within weeks.
	sumHi, sumLo uint64
	// classic[i] counts durations in (bound[i-1], bound[i]]; the last
	// element is the +Inf bucket. Not cumulative; flush makes it so.
	classic []uint64
	native  *nativehist.Hist

	// The slowest sample since the last flush, sent as the exemplar.
	exValid    bool
	exDuration int64
	exEnd      int64
	exTraceID  [16]byte

	// created is set once the series' first samples reached the TSDB, so
	// that a zero is written before them exactly once.
	created bool
	out     *outSeries
}

// outSeries are the TSDB series one span series is flushed to, built on the
// first flush and kept, so a flush allocates no labels.
type outSeries struct {
	calls, failed, gauge, count, sum, native        labels.Labels
	callsRef, failedRef, gaugeRef, countRef, sumRef storage.SeriesRef
	nativeRef                                       storage.SeriesRef
	buckets                                         []labels.Labels
	bucketRefs                                      []storage.SeriesRef
}

// layout is the bucket layout shared by all series of a store.
type layout struct {
	classic   bool
	native    bool
	boundsNs  []int64 // classic upper bounds in ns, inclusive
	boundsSec []float64
	leValues  []string // le label values, "+Inf" last
	nbounds   *nativehist.Bounds
}

func (l *layout) newSeries(ref uint64, key string, lset labels.Labels, family sample.Family) *series {
	s := &series{ref: ref, key: key, lset: lset, family: family}
	if families[family].hist == "" {
		return s // a plain counter keeps no buckets
	}
	if l.classic {
		s.classic = make([]uint64, len(l.boundsNs)+1)
	}
	if l.native {
		s.native = nativehist.New(l.nbounds)
	}
	return s
}

// observe adds one sample.
func (s *series) observe(l *layout, duration, end int64, traceID *[16]byte, failed bool) {
	s.count++
	s.active = true
	if failed {
		s.failed++
	}
	if families[s.family].gauge != "" {
		s.gauge = duration
		return
	}
	var carry uint64
	s.sumLo, carry = bits.Add64(s.sumLo, uint64(duration), 0)
	s.sumHi += carry
	if s.classic != nil {
		s.classic[sort.Search(len(l.boundsNs), func(i int) bool { return duration <= l.boundsNs[i] })]++
	}
	if s.native != nil {
		s.native.Observe(float64(duration)/1e9, 1)
	}
	// An all-zero trace id means "none" (stream records without a trace):
	// it never becomes an exemplar.
	if traceID != nil && *traceID != ([16]byte{}) && s.hasHist() && (!s.exValid || duration > s.exDuration) {
		s.exValid, s.exDuration, s.exEnd, s.exTraceID = true, duration, end, *traceID
	}
}

// exemplarCandidate tells whether a sample of this duration would become the
// series' exemplar; only candidates carry their trace id into the WAL.
func (s *series) exemplarCandidate(duration int64) bool {
	return s.hasHist() && (!s.exValid || duration > s.exDuration)
}

func (s *series) hasHist() bool { return s.classic != nil || s.native != nil }

// sumSeconds returns the sum of durations in seconds.
func (s *series) sumSeconds() float64 {
	return (float64(s.sumHi)*math.Exp2(64) + float64(s.sumLo)) / 1e9
}

// familyInfo names the output series of a family. An empty name writes
// no series.
type familyInfo struct {
	counter string // the count of samples
	failed  string // the count of failed samples
	hist    string // the duration histogram: classic _bucket/_sum/_count and native
	gauge   string // the last value, in seconds
	help    string
}

// families are the metric names each family writes, Tempo's where Tempo has
// them (metrics-generator span metrics and service graphs).
var families = [sample.NumFamilies]familyInfo{
	sample.FamilySpan: {
		counter: MetricCalls, hist: MetricLatency,
		help: "span",
	},
	sample.FamilyEdgeServer: {
		counter: "traces_service_graph_request_total", failed: "traces_service_graph_request_failed_total",
		hist: "traces_service_graph_request_server_seconds", help: "service graph edge, server side",
	},
	sample.FamilyEdgeClient: {
		hist: "traces_service_graph_request_client_seconds", help: "service graph edge, client side",
	},
	sample.FamilyUnpaired: {
		counter: "traces_service_graph_unpaired_spans_total", help: "unpaired span",
	},
	sample.FamilyDropped: {
		counter: "traces_service_graph_dropped_spans_total", help: "dropped span",
	},
	sample.FamilyNetwork: {
		hist: "hopwatch_hop_network_seconds", help: "network time of a request",
	},
	sample.FamilyQueue: {
		hist: "hopwatch_hop_queue_seconds", help: "queue time of a messaging hop",
	},
	sample.FamilyStage: {
		hist: "hopwatch_stage_duration_seconds", help: "time between two stages of a span",
	},
	sample.FamilyClockOffset: {
		gauge: "hopwatch_clock_offset_seconds", help: "clock offset between two nodes",
	},
}
