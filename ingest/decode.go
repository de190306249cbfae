package ingest

import (
	"bytes"
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/util/strutil"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/hopwatch/hopwatch/sample"
)

// Label names of the span latency series, as Tempo's metrics-generator and
// the OpenTelemetry spanmetrics connector name them, so that existing Grafana
// views work unchanged.
const (
	LabelService    = "service"
	LabelSpanName   = "span_name"
	LabelSpanKind   = "span_kind"
	LabelStatusCode = "status_code"
	LabelFromStage  = "from_stage"
	LabelToStage    = "to_stage"
)

// spanKinds and statusCodes are the label values: the OTLP enum names, as
// Tempo writes them.
var (
	spanKinds = [...]string{
		ptrace.SpanKindUnspecified: "SPAN_KIND_UNSPECIFIED",
		ptrace.SpanKindInternal:    "SPAN_KIND_INTERNAL",
		ptrace.SpanKindServer:      "SPAN_KIND_SERVER",
		ptrace.SpanKindClient:      "SPAN_KIND_CLIENT",
		ptrace.SpanKindProducer:    "SPAN_KIND_PRODUCER",
		ptrace.SpanKindConsumer:    "SPAN_KIND_CONSUMER",
	}
	statusCodes = [...]string{
		ptrace.StatusCodeUnset: "STATUS_CODE_UNSET",
		ptrace.StatusCodeOk:    "STATUS_CODE_OK",
		ptrace.StatusCodeError: "STATUS_CODE_ERROR",
	}
)

// Reason says why a span was refused. Each has a fixed id, used as the
// metric label and in the message sent back to the client.
type Reason uint8

// The reasons a single span is refused while the rest of its request is accepted.
const (
	ReasonMissingServiceName Reason = iota
	ReasonMissingTimestamps
	ReasonEndBeforeStart
	ReasonInvalidTraceID
	ReasonLabelValueTooLong
	// ReasonInvalidUTF8: a string that becomes a label or names a node or
	// writer is not valid UTF-8, which OTLP requires of every string.
	ReasonInvalidUTF8
	// ReasonTimestampOutOfRange: a time past what int64 nanoseconds hold,
	// whose duration would be stored negative.
	ReasonTimestampOutOfRange
	// ReasonTooFarInFuture: the span ends later than the wall clock plus
	// the creation grace period (Mimir's creation_grace_period).
	ReasonTooFarInFuture
	// ReasonTooFarInPast: the span ended before what the raw tier's
	// retention keeps; its next retention pass would delete it.
	ReasonTooFarInPast
	// ReasonSeriesLimit: storage refused the span's series, which would
	// have taken the tenant over its active series limit.
	ReasonSeriesLimit
	numReasons

	reasonNone = numReasons // not refused
)

var reasonInfo = [numReasons]struct{ id, help string }{
	ReasonMissingServiceName:  {"missing_service_name", "the resource has no service.name attribute; set it in the SDK (OTEL_SERVICE_NAME) or with a Collector resource processor"},
	ReasonMissingTimestamps:   {"missing_timestamps", "start_time_unix_nano and end_time_unix_nano must both be set"},
	ReasonEndBeforeStart:      {"end_before_start", "end_time_unix_nano is before start_time_unix_nano"},
	ReasonInvalidTraceID:      {"invalid_trace_id", "trace_id is empty or all zero"},
	ReasonLabelValueTooLong:   {"label_value_too_long", "service.name, service.instance.id, host.name, the span name, a dimension attribute or a peer attribute (peer.service, db.name, db.system) is longer than --limits.max-label-value-length"},
	ReasonInvalidUTF8:         {"invalid_utf8", "service.name, service.instance.id, host.name, the span name, a label value or an attribute hopwatch uses as a label is not valid UTF-8, which OTLP requires of every string"},
	ReasonTimestampOutOfRange: {"timestamp_out_of_range", "start_time_unix_nano or end_time_unix_nano is after 2262-04-11T23:47:16Z, the latest time int64 nanoseconds hold"},
	ReasonTooFarInFuture:      {"too_far_in_future", "the span ends later than the server's clock plus --limits.creation-grace-period: check the sender's clock"},
	ReasonTooFarInPast:        {"too_far_in_past", "the span ended before the raw tier's retention (--storage.raw.retention.time) behind the server's clock, so it would be deleted at once"},
	ReasonSeriesLimit:         {"per_user_series_limit", "the tenant has reached its limit of active series (--limits.max-series-per-tenant, or the tenant's override through the admin API): spans of new series are refused until idle series expire (--spanmetrics.series-idle-timeout) or the limit is raised; known series are still accepted"},
}

// String returns the reason's fixed id.
func (r Reason) String() string { return reasonInfo[r].id }

// Refusals counts the spans of one request refused per reason.
type Refusals [numReasons]int

// Total returns the number of refused spans.
func (r *Refusals) Total() int {
	n := 0
	for _, c := range r {
		n += c
	}
	return n
}

// Message describes the refusals for the OTLP partial_success message.
func (r *Refusals) Message(total int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "refused %d of %d spans:", r.Total(), total)
	sep := " "
	for reason, c := range r {
		if c == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s%d %s (%s)", sep, c, Reason(reason), reasonInfo[reason].help)
		sep = "; "
	}
	return b.String()
}

// Dimension is an extra series label whose value comes from a resource
// attribute or, when the resource lacks it, from a span attribute: the
// order Tempo's metrics-generator looks them up in.
type Dimension struct {
	Attribute string
	Label     string
}

// NewDimension returns the dimension for an attribute, its label name
// sanitized as Tempo does: Prometheus's SanitizeLabelName, and a "__" prefix
// where the name would collide with one of the span metrics' own labels.
func NewDimension(attribute string) Dimension {
	name := strutil.SanitizeLabelName(attribute)
	switch name {
	case LabelService, LabelSpanName, LabelSpanKind, LabelStatusCode:
		name = "__" + name
	}
	return Dimension{Attribute: attribute, Label: name}
}

// Decoder turns OTLP spans into a sample.Batch. It keeps scratch space and
// a cache of the series it has seen between calls, so in steady state it
// allocates nothing per span and nothing per known series. A Decoder is not
// safe for concurrent use.
type Decoder struct {
	dims []Dimension
	// key holds the series key under construction.
	key []byte
	// index maps a key to its position in the current batch's Series.
	index map[string]uint32
	// known caches the series of earlier batches, so that a series seen
	// before costs neither a key string nor labels.
	known map[string]sample.Series
	lb    labels.ScratchBuilder
	// dimValues[i] is the value of dims[i] for the current span; resValues
	// the value from the current resource. Both are views, valid only while
	// the span is being converted.
	dimValues [][]byte
	resValues [][]byte
	resFound  []bool
	spanFound []bool

	// cur collects what pairing needs of the span being decoded; hops
	// collects, per request, the accepted spans that can form an edge.
	cur    hopSpan
	hops   []hopSpan
	stages Stages
	events []stageEvent // stage events of the current span
	// maxValueLen bounds label values (service, span name, dimensions).
	maxValueLen int
	resNode     []byte // the current resource's node (its clock): host, else instance id
	// writers lists, per resource with accepted spans, who wrote them and
	// the latest span end among them: the watermark's input.
	writers   []writerProgress
	resMaxEnd int64
	// streamIdx maps the series of a stream batch to the sample batch's.
	streamIdx []streamSeries
	// notAfter and notBefore bound the times accepted (Unix ns; 0: no
	// bound): see SetTimeBounds.
	notAfter, notBefore int64
	// badEvents counts the stage events of the last request ignored for
	// their time.
	badEvents int
}

// SetTimeBounds makes the decoder refuse spans (records) ending after
// notAfter (ReasonTooFarInFuture) or before notBefore (ReasonTooFarInPast),
// and ignore stage events outside the bounds; 0 leaves a side unbounded.
// The caller derives them from the wall clock it read.
func (d *Decoder) SetTimeBounds(notAfter, notBefore int64) {
	d.notAfter, d.notBefore = notAfter, notBefore
}

// validTime tells whether t, a time read from a request, is set, fits int64
// nanoseconds and lies within the decoder's bounds.
func (d *Decoder) validTime(t uint64) bool {
	return t > 0 && d.endReason(t) == reasonNone
}

// endReason says why a span (or an event) ending at end is refused: a
// time past int64 nanoseconds, later than the creation grace period
// allows, or older than the raw tier keeps; reasonNone when none.
func (d *Decoder) endReason(end uint64) Reason {
	switch {
	case end > math.MaxInt64:
		return ReasonTimestampOutOfRange
	case d.notAfter != 0 && int64(end) > d.notAfter:
		return ReasonTooFarInFuture
	case int64(end) < d.notBefore:
		return ReasonTooFarInPast
	}
	return reasonNone
}

// writerProgress is what one resource of a request tells about its writer.
// Slices view the request.
type writerProgress struct {
	service, instance, host []byte
	maxEnd                  int64
}

// endResource records the progress of the resource just decoded.
func (d *Decoder) endResource(service, instance, host []byte) {
	if d.resMaxEnd > 0 {
		d.writers = append(d.writers, writerProgress{service: service, instance: instance, host: host, maxEnd: d.resMaxEnd})
	}
	d.resMaxEnd = 0
}

// hopSpan is what service graph pairing needs of a client, server,
// producer or consumer span. Slices view the request.
type hopSpan struct {
	traceID          [16]byte
	spanID, parentID []byte
	kind             ptrace.SpanKind
	service          []byte
	node             []byte // host.name, else service.instance.id
	start, end       int64
	failed           bool
	// Where a client span goes when no server span answers it.
	dbSystem, dbName, peerService []byte
}

// Attributes that name the peer of a client span (Tempo's defaults).
const (
	attrPeerService = "peer.service"
	attrDBName      = "db.name"
	attrDBNamespace = "db.namespace" // the newer name of db.name
	attrDBSystem    = "db.system"

	// The node a span ran on, for clock offsets.
	attrInstance = "service.instance.id"
	attrHost     = "host.name"
)

// beginSpan resets the per-span state before a span's fields are read.
func (d *Decoder) beginSpan() {
	d.cur = hopSpan{}
	d.events = d.events[:0]
	for i := range d.dims {
		d.dimValues[i] = d.resValues[i]
		d.spanFound[i] = false
	}
}

// wantsAttribute tells whether a span attribute matters: a dimension or a
// peer attribute.
func (d *Decoder) wantsAttribute(key []byte) bool {
	switch string(key) {
	case attrPeerService, attrDBName, attrDBNamespace, attrDBSystem:
		return true
	}
	for _, dim := range d.dims {
		if string(key) == dim.Attribute {
			return true
		}
	}
	return false
}

// spanAttribute records a span attribute; the first of repeated keys wins.
func (d *Decoder) spanAttribute(key, val []byte) {
	switch string(key) {
	case attrPeerService:
		if d.cur.peerService == nil {
			d.cur.peerService = val
		}
	case attrDBName, attrDBNamespace:
		if d.cur.dbName == nil {
			d.cur.dbName = val
		}
	case attrDBSystem:
		if d.cur.dbSystem == nil {
			d.cur.dbSystem = val
		}
	}
	for i, dim := range d.dims {
		if len(d.resValues[i]) == 0 && !d.spanFound[i] && string(key) == dim.Attribute {
			d.dimValues[i], d.spanFound[i] = val, true
		}
	}
}

// maxKnownSeries bounds a decoder's series cache; past it the cache starts
// over, which costs one allocation per series for the next requests.
const maxKnownSeries = 1 << 16

// Stages configures stage durations: span events that mark the stages a
// message or request passes. An event is a stage if its name is one of
// Names, or if it has the attribute Attribute whose value is one of Names.
type Stages struct {
	Names     []string
	Attribute string
}

// DefaultStages are the stages of a message: enqueue, dequeue, arrive, done.
func DefaultStages() Stages {
	return Stages{Names: []string{"enqueue", "dequeue", "arrive", "done"}, Attribute: "stage"}
}

type stageEvent struct {
	t    int64
	name string // one of Stages.Names
}

// WithStages makes the decoder turn stage events into stage durations.
func (d *Decoder) WithStages(s Stages) *Decoder {
	d.stages = s
	return d
}

// stageName returns the configured stage name equal to b, or "".
func (d *Decoder) stageName(b []byte) string {
	for _, n := range d.stages.Names {
		if string(b) == n {
			return n
		}
	}
	return ""
}

// NewDecoder returns a decoder that adds dims to every series.
func NewDecoder(dims []Dimension) *Decoder {
	return &Decoder{
		dims:      dims,
		index:     make(map[string]uint32),
		known:     make(map[string]sample.Series),
		lb:        labels.NewScratchBuilder(4 + len(dims)),
		dimValues: make([][]byte, len(dims)),
		resValues: make([][]byte, len(dims)),
		resFound:  make([]bool, len(dims)),
		spanFound: make([]bool, len(dims)),

		maxValueLen: DefaultMaxLabelValueLength,
	}
}

// DefaultMaxLabelValueLength is Mimir's and Tempo's limit on a label value.
const DefaultMaxLabelValueLength = 2048

// WithMaxLabelValueLength refuses spans whose label values exceed n bytes.
func (d *Decoder) WithMaxLabelValueLength(n int) *Decoder {
	d.maxValueLen = n
	return d
}

// view returns the bytes of s without copying; the caller must not modify them.
func view(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

// begin resets the per-request state.
func (d *Decoder) begin() {
	clear(d.index)
	d.hops = d.hops[:0]
	d.writers, d.resMaxEnd = d.writers[:0], 0
	d.badEvents = 0
}

// resourceReason says why the spans of a resource are refused for the
// strings that name its service, node and writer (they become labels,
// clock offset nodes and writer ids, and are kept while spans wait for
// their peers), or reasonNone.
func (d *Decoder) resourceReason(service, instance, host []byte) Reason {
	switch {
	case len(service) > d.maxValueLen || len(instance) > d.maxValueLen || len(host) > d.maxValueLen:
		return ReasonLabelValueTooLong
	case !utf8.Valid(service) || !utf8.Valid(instance) || !utf8.Valid(host):
		return ReasonInvalidUTF8
	}
	return reasonNone
}

// Decode appends the samples of td to b and counts refused spans in ref.
// It returns the number of spans seen.
func (d *Decoder) Decode(td ptrace.Traces, b *sample.Batch, ref *Refusals) int {
	d.begin()
	total := 0
	rss := td.ResourceSpans()
	for i := range rss.Len() {
		rs := rss.At(i)
		rattrs := rs.Resource().Attributes()
		var service []byte
		if v, ok := rattrs.Get("service.name"); ok {
			service = view(v.AsString())
		}
		var instance, host []byte
		if v, ok := rattrs.Get(attrInstance); ok {
			instance = view(v.AsString())
		}
		if v, ok := rattrs.Get(attrHost); ok {
			host = view(v.AsString())
		}
		// A span's clock is its host's: processes on one host share it, so
		// a queue hop between them needs no offset.
		d.resNode = host
		if len(d.resNode) == 0 {
			d.resNode = instance
		}
		for j, dim := range d.dims {
			d.resValues[j] = nil
			if v, ok := rattrs.Get(dim.Attribute); ok {
				d.resValues[j] = view(v.AsString())
			}
		}
		sss := rs.ScopeSpans()
		for j := range sss.Len() {
			spans := sss.At(j).Spans()
			total += spans.Len()
			if len(service) == 0 {
				ref[ReasonMissingServiceName] += spans.Len()
				continue
			}
			if reason := d.resourceReason(service, instance, host); reason != reasonNone {
				ref[reason] += spans.Len()
				continue
			}
			for k := range spans.Len() {
				span := spans.At(k)
				d.beginSpan()
				span.Attributes().Range(func(k string, v pcommon.Value) bool {
					if d.wantsAttribute(view(k)) {
						d.spanAttribute(view(k), view(v.AsString()))
					}
					return true
				})
				if len(d.stages.Names) > 0 {
					evs := span.Events()
					for e := range evs.Len() {
						ev := evs.At(e)
						name := d.stageName(view(ev.Name()))
						if name == "" && d.stages.Attribute != "" {
							if v, ok := ev.Attributes().Get(d.stages.Attribute); ok {
								name = d.stageName(view(v.AsString()))
							}
						}
						if name != "" {
							d.stageEvent(uint64(ev.Timestamp()), name)
						}
					}
				}
				sid, pid := span.SpanID(), span.ParentSpanID()
				if !sid.IsEmpty() {
					d.cur.spanID = sid[:]
				}
				if !pid.IsEmpty() {
					d.cur.parentID = pid[:]
				}
				tid := span.TraceID()
				d.span(b, ref, service, view(span.Name()), int32(span.Kind()), int32(span.Status().Code()),
					uint64(span.StartTimestamp()), uint64(span.EndTimestamp()), tid[:])
			}
		}
		d.endResource(service, instance, host)
	}
	return total
}

// span converts one span whose dimension values are in d.dimValues.
func (d *Decoder) span(b *sample.Batch, ref *Refusals, service, name []byte, kind, code int32, start, end uint64, tid []byte) {
	switch {
	case start == 0 || end == 0:
		ref[ReasonMissingTimestamps]++
		return
	case end < start:
		ref[ReasonEndBeforeStart]++
		return
	case d.endReason(end) != reasonNone:
		// start 1 and end 2^64-1 would make a negative duration.
		ref[d.endReason(end)]++
		return
	case len(tid) != 16 || [16]byte(tid) == [16]byte{}:
		ref[ReasonInvalidTraceID]++
		return
	}
	if len(service) > d.maxValueLen || len(name) > d.maxValueLen {
		ref[ReasonLabelValueTooLong]++
		return
	}
	for _, v := range d.dimValues {
		if len(v) > d.maxValueLen {
			ref[ReasonLabelValueTooLong]++
			return
		}
	}
	if kind < 0 || int(kind) >= len(spanKinds) {
		kind = int32(ptrace.SpanKindUnspecified)
	}
	if code < 0 || int(code) >= len(statusCodes) {
		code = int32(ptrace.StatusCodeUnset)
	}

	isHop := false
	switch ptrace.SpanKind(kind) {
	case ptrace.SpanKindClient, ptrace.SpanKindServer, ptrace.SpanKindProducer, ptrace.SpanKindConsumer:
		// The peer attributes name service graph nodes.
		isHop = true
		if len(d.cur.peerService) > d.maxValueLen || len(d.cur.dbName) > d.maxValueLen || len(d.cur.dbSystem) > d.maxValueLen {
			ref[ReasonLabelValueTooLong]++
			return
		}
		if !utf8.Valid(d.cur.peerService) || !utf8.Valid(d.cur.dbName) || !utf8.Valid(d.cur.dbSystem) {
			ref[ReasonInvalidUTF8]++
			return
		}
	}
	idx, ok := d.spanSeries(b, service, name, kind, code)
	if !ok {
		ref[ReasonInvalidUTF8]++
		return
	}
	b.Samples = append(b.Samples, sample.Sample{
		Series:   idx,
		Start:    int64(start),
		Duration: int64(end - start),
		TraceID:  [16]byte(tid),
	})
	d.resMaxEnd = max(d.resMaxEnd, int64(end))
	if len(d.events) > 1 {
		d.stageSamples(b, service, name, [16]byte(tid))
	}
	if isHop {
		h := d.cur
		h.traceID = [16]byte(tid)
		h.kind = ptrace.SpanKind(kind)
		h.service = service
		h.node = d.resNode
		h.start, h.end = int64(start), int64(end)
		h.failed = code == int32(ptrace.StatusCodeError)
		d.hops = append(d.hops, h)
	}
}

// appendKeyValue appends v to a series key, then the 0xff that ends it.
// Bytes 0xfe and 0xff, which valid UTF-8 never holds, are escaped as 0xfe
// followed by 0 or 1, so that any values, valid or not, make distinct keys
// ("c\xffd","e" and "c","d\xffe" included), and keys of valid UTF-8 values
// are the values themselves, 0xff-separated.
func appendKeyValue(k, v []byte) []byte {
	if bytes.IndexByte(v, 0xff) < 0 && bytes.IndexByte(v, 0xfe) < 0 {
		return append(append(k, v...), 0xff)
	}
	for _, c := range v {
		if c >= 0xfe {
			k = append(k, 0xfe, c-0xfe)
		} else {
			k = append(k, c)
		}
	}
	return append(k, 0xff)
}

// spanSeries returns the index in b of the span series with the given
// values and the dimension values in d.dimValues; false if a value is not
// valid UTF-8.
func (d *Decoder) spanSeries(b *sample.Batch, service, name []byte, kind, code int32) (uint32, bool) {
	// The key: kind, code, then each value (appendKeyValue).
	k := append(d.key[:0], byte(kind), byte(code))
	k = appendKeyValue(k, service)
	k = appendKeyValue(k, name)
	for _, v := range d.dimValues {
		k = appendKeyValue(k, v)
	}
	d.key = k
	return d.seriesIndex(b, k, func(key string) (sample.Series, bool) {
		if !utf8.Valid(service) || !utf8.Valid(name) {
			return sample.Series{}, false
		}
		for _, v := range d.dimValues {
			if !utf8.Valid(v) {
				return sample.Series{}, false
			}
		}
		return sample.Series{Key: key, Labels: d.labels(service, name, kind, code)}, true
	})
}

func (d *Decoder) labels(service, name []byte, kind, code int32) labels.Labels {
	d.lb.Reset()
	d.lb.Add(LabelService, string(service))
	d.lb.Add(LabelSpanName, string(name))
	d.lb.Add(LabelSpanKind, spanKinds[kind])
	d.lb.Add(LabelStatusCode, statusCodes[code])
	for i, dim := range d.dims {
		// An absent attribute is an absent label, as in Prometheus an
		// empty label value is no label.
		if len(d.dimValues[i]) > 0 {
			d.lb.Add(dim.Label, string(d.dimValues[i]))
		}
	}
	d.lb.Sort()
	return d.lb.Labels()
}

// stageEvent records a stage event of the current span at t, unless t is
// unset, out of int64 nanoseconds or out of the decoder's time bounds: such
// an event is ignored and counted in badEvents.
func (d *Decoder) stageEvent(t uint64, name string) {
	if !d.validTime(t) {
		d.badEvents++
		return
	}
	d.events = append(d.events, stageEvent{t: int64(t), name: name})
}

// stageSamples appends, for consecutive stage events of the current span in
// time order, the time from one stage to the next.
func (d *Decoder) stageSamples(b *sample.Batch, service, name []byte, tid [16]byte) {
	slices.SortStableFunc(d.events, func(x, y stageEvent) int { return cmp.Compare(x.t, y.t) })
	for i := 1; i < len(d.events); i++ {
		from, to := d.events[i-1], d.events[i]
		idx, ok := d.stageSeries(b, service, name, view(from.name), view(to.name))
		if !ok {
			continue
		}
		b.Samples = append(b.Samples, sample.Sample{Series: idx, Start: from.t, Duration: to.t - from.t, TraceID: tid})
	}
}

// stageSeries returns the index in b of a stage duration series; false if
// a value is not valid UTF-8.
func (d *Decoder) stageSeries(b *sample.Batch, service, name, from, to []byte) (uint32, bool) {
	// The key: a marker byte no span kind uses, then the values.
	k := append(d.key[:0], 0xfe)
	k = appendKeyValue(k, service)
	k = appendKeyValue(k, name)
	k = appendKeyValue(k, from)
	k = appendKeyValue(k, to)
	d.key = k
	return d.seriesIndex(b, k, func(key string) (sample.Series, bool) {
		if !utf8.Valid(service) || !utf8.Valid(name) || !utf8.Valid(from) || !utf8.Valid(to) {
			return sample.Series{}, false
		}
		return sample.Series{Family: sample.FamilyStage, Key: key, Labels: labels.FromStrings(
			LabelService, string(service), LabelSpanName, string(name), LabelFromStage, string(from), LabelToStage, string(to))}, true
	})
}

// seriesIndex returns the position in b.Series of the series with key k,
// adding it from the decoder's cache, or from build on a miss; false if
// build refuses the values. A known series costs map lookups, no
// allocation; as keys are injective (appendKeyValue), a known key has
// values build accepted.
func (d *Decoder) seriesIndex(b *sample.Batch, k []byte, build func(key string) (sample.Series, bool)) (uint32, bool) {
	if idx, ok := d.index[string(k)]; ok {
		return idx, true
	}
	s, ok := d.known[string(k)]
	if !ok {
		if s, ok = build(string(k)); !ok {
			return 0, false
		}
		if len(d.known) >= maxKnownSeries {
			clear(d.known)
		}
		d.known[s.Key] = s
	}
	idx := uint32(len(b.Series))
	d.index[s.Key] = idx
	b.Series = append(b.Series, s)
	return idx, true
}
