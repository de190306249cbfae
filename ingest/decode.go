package ingest

import (
	"fmt"
	"strings"

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
	numReasons
)

var reasonInfo = [numReasons]struct{ id, help string }{
	ReasonMissingServiceName: {"missing_service_name", "the resource has no service.name attribute; set it in the SDK (OTEL_SERVICE_NAME) or with a Collector resource processor"},
	ReasonMissingTimestamps:  {"missing_timestamps", "start_time_unix_nano and end_time_unix_nano must both be set"},
	ReasonEndBeforeStart:     {"end_before_start", "end_time_unix_nano is before start_time_unix_nano"},
	ReasonInvalidTraceID:     {"invalid_trace_id", "trace_id is empty or all zero"},
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

// Decoder turns OTLP spans into a sample.Batch. It keeps scratch space
// between calls, so a Decoder in steady state allocates only for series it
// has not seen in the current batch. A Decoder is not safe for concurrent use.
type Decoder struct {
	dims []Dimension
	// key holds the series key under construction: resource part, then span part.
	key   []byte
	index map[string]uint32
	lb    labels.ScratchBuilder
	// dimValues[i] is the value of dims[i] for the current span.
	dimValues []string
	resValues []string
}

// NewDecoder returns a decoder that adds dims to every series.
func NewDecoder(dims []Dimension) *Decoder {
	return &Decoder{
		dims:      dims,
		index:     make(map[string]uint32),
		lb:        labels.NewScratchBuilder(4 + len(dims)),
		dimValues: make([]string, len(dims)),
		resValues: make([]string, len(dims)),
	}
}

// Decode appends the samples of td to b and counts refused spans in ref.
// It returns the number of spans seen.
func (d *Decoder) Decode(td ptrace.Traces, b *sample.Batch, ref *Refusals) int {
	clear(d.index)
	total := 0
	rss := td.ResourceSpans()
	for i := range rss.Len() {
		rs := rss.At(i)
		rattrs := rs.Resource().Attributes()
		service := ""
		if v, ok := rattrs.Get("service.name"); ok {
			service = v.AsString()
		}
		for j, dim := range d.dims {
			d.resValues[j] = ""
			if v, ok := rattrs.Get(dim.Attribute); ok {
				d.resValues[j] = v.AsString()
			}
		}
		sss := rs.ScopeSpans()
		for j := range sss.Len() {
			spans := sss.At(j).Spans()
			total += spans.Len()
			if service == "" {
				ref[ReasonMissingServiceName] += spans.Len()
				continue
			}
			for k := range spans.Len() {
				d.span(spans.At(k), service, b, ref)
			}
		}
	}
	return total
}

func (d *Decoder) span(span ptrace.Span, service string, b *sample.Batch, ref *Refusals) {
	start, end := span.StartTimestamp(), span.EndTimestamp()
	switch {
	case start == 0 || end == 0:
		ref[ReasonMissingTimestamps]++
		return
	case end < start:
		ref[ReasonEndBeforeStart]++
		return
	}
	tid := span.TraceID()
	if tid == (pcommon.TraceID{}) {
		ref[ReasonInvalidTraceID]++
		return
	}
	kind := span.Kind()
	if int(kind) >= len(spanKinds) || kind < 0 {
		kind = ptrace.SpanKindUnspecified
	}
	code := span.Status().Code()
	if int(code) >= len(statusCodes) || code < 0 {
		code = ptrace.StatusCodeUnset
	}
	name := span.Name()

	// The key: kind, code, then each value followed by 0xff, which cannot
	// occur in valid UTF-8, so distinct label sets cannot share a key.
	k := append(d.key[:0], byte(kind), byte(code))
	k = append(append(k, service...), 0xff)
	k = append(append(k, name...), 0xff)
	if len(d.dims) > 0 {
		sattrs := span.Attributes()
		for i, dim := range d.dims {
			d.dimValues[i] = d.resValues[i]
			if d.dimValues[i] == "" {
				if v, ok := sattrs.Get(dim.Attribute); ok {
					d.dimValues[i] = v.AsString()
				}
			}
			k = append(append(k, d.dimValues[i]...), 0xff)
		}
	}
	d.key = k

	idx, ok := d.index[string(k)]
	if !ok {
		idx = uint32(len(b.Series))
		key := string(k)
		d.index[key] = idx
		b.Series = append(b.Series, sample.Series{Key: key, Labels: d.labels(service, name, kind, code)})
	}
	b.Samples = append(b.Samples, sample.Sample{
		Series:   idx,
		Start:    int64(start),
		Duration: int64(end - start),
		TraceID:  tid,
	})
}

func (d *Decoder) labels(service, name string, kind ptrace.SpanKind, code ptrace.StatusCode) labels.Labels {
	d.lb.Reset()
	d.lb.Add(LabelService, service)
	d.lb.Add(LabelSpanName, name)
	d.lb.Add(LabelSpanKind, spanKinds[kind])
	d.lb.Add(LabelStatusCode, statusCodes[code])
	for i, dim := range d.dims {
		// An absent attribute is an absent label, as in Prometheus an
		// empty label value is no label.
		if d.dimValues[i] != "" {
			d.lb.Add(dim.Label, d.dimValues[i])
		}
	}
	d.lb.Sort()
	return d.lb.Labels()
}
