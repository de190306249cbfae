package ingest

import (
	"errors"
	"fmt"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/hopwatch/hopwatch/sample"
)

// Field numbers of the OTLP messages the walker reads
// (opentelemetry/proto/collector/trace/v1 and trace/v1, common/v1).
const (
	fRequestResourceSpans = 1

	fResourceSpansResource   = 1
	fResourceSpansScopeSpans = 2
	// Deprecated instrumentation_library_spans, same layout as scope_spans;
	// old SDKs still send it.
	fResourceSpansLibrarySpans = 1000

	fResourceAttributes = 1

	fScopeSpansSpans = 2

	fSpanTraceID    = 1
	fSpanID         = 2
	fSpanParentID   = 4
	fSpanName       = 5
	fSpanKind       = 6
	fSpanStart      = 7
	fSpanEnd        = 8
	fSpanAttributes = 9
	fSpanEvents     = 11
	fSpanStatus     = 15

	fEventTime       = 1
	fEventName       = 2
	fEventAttributes = 3

	fStatusCode = 3

	fKeyValueKey   = 1
	fKeyValueValue = 2

	fAnyString = 1
	fAnyBool   = 2
	fAnyInt    = 3
)

// errNeedsPdata means a dimension attribute holds a value the walker does
// not render (double, bytes, array, map); the request is decoded through
// pdata instead, which renders them as the rest of the ecosystem does.
var errNeedsPdata = errors.New("hopwatch/ingest: attribute value needs pdata")

// wireError describes malformed protobuf: what and at which byte offset.
type wireError struct {
	what string
	off  int
}

func (e *wireError) Error() string {
	return fmt.Sprintf("malformed OTLP protobuf ExportTraceServiceRequest: bad %s at byte %d", e.what, e.off)
}

// walker iterates the fields of one protobuf message.
type walker struct {
	b    []byte
	base int // offset of b within the whole request, for errors
	pos  int
	num  protowire.Number
	typ  protowire.Type
	// val is the field's payload: the bytes of a length-delimited field,
	// or empty; u holds varint and fixed values.
	val []byte
	u   uint64
	err error
}

func (w *walker) next() bool {
	if w.err != nil || w.pos >= len(w.b) {
		return false
	}
	num, typ, n := protowire.ConsumeTag(w.b[w.pos:])
	if n < 0 {
		w.err = &wireError{"field tag", w.base + w.pos}
		return false
	}
	start := w.pos
	w.pos += n
	w.num, w.typ, w.val, w.u = num, typ, nil, 0
	switch typ {
	case protowire.VarintType:
		w.u, n = protowire.ConsumeVarint(w.b[w.pos:])
	case protowire.Fixed64Type:
		w.u, n = protowire.ConsumeFixed64(w.b[w.pos:])
	case protowire.Fixed32Type:
		var v uint32
		v, n = protowire.ConsumeFixed32(w.b[w.pos:])
		w.u = uint64(v)
	case protowire.BytesType:
		w.val, n = protowire.ConsumeBytes(w.b[w.pos:])
	default:
		n = protowire.ConsumeFieldValue(num, typ, w.b[w.pos:])
	}
	if n < 0 {
		w.err = &wireError{fmt.Sprintf("value of field %d", num), w.base + start}
		return false
	}
	w.pos += n
	return true
}

// sub returns a walker over the current length-delimited field.
func (w *walker) sub() walker {
	off := w.pos - len(w.val)
	return walker{b: w.val, base: w.base + off}
}

// is tells whether the current field is number num with wire type typ; a
// known field with the wrong wire type is malformed.
func (w *walker) is(num protowire.Number, typ protowire.Type) bool {
	return w.num == num && w.typeIs(typ)
}

// typeIs checks the current field's wire type, failing the walk if it is
// not typ.
func (w *walker) typeIs(typ protowire.Type) bool {
	if w.typ == typ {
		return true
	}
	w.wrongType()
	return false
}

func (w *walker) wrongType() {
	w.err = &wireError{fmt.Sprintf("wire type %d of field %d", w.typ, w.num), w.base + w.pos}
}

// DecodeProto appends the samples of a protobuf ExportTraceServiceRequest
// to b without materialising it: it reads only the fields span metrics use
// and skips the rest (events, links, scope) by length. It returns the
// number of spans seen.
func (d *Decoder) DecodeProto(body []byte, b *sample.Batch, ref *Refusals) (int, error) {
	d.begin()
	total := 0
	req := walker{b: body}
	for req.next() {
		if !req.is(fRequestResourceSpans, protowire.BytesType) {
			continue
		}
		n, err := d.resourceSpans(req.sub(), b, ref)
		total += n
		if err != nil {
			return total, err
		}
	}
	return total, req.err
}

func (d *Decoder) resourceSpans(rs walker, b *sample.Batch, ref *Refusals) (int, error) {
	// The resource may follow its spans on the wire: read it first.
	var (
		service      []byte
		serviceFound bool
	)
	clear(d.resValues)
	clear(d.resFound)
	var instance, host []byte
	scan := rs
	for scan.next() {
		if !scan.is(fResourceSpansResource, protowire.BytesType) {
			continue
		}
		res := scan.sub()
		for res.next() {
			if !res.is(fResourceAttributes, protowire.BytesType) {
				continue
			}
			key, val, err := keyValue(res.sub(), nil)
			if err != nil {
				return 0, err
			}
			// The first of repeated keys wins, as in pdata's Map.Get.
			switch string(key) {
			case "service.name":
				if !serviceFound {
					service, serviceFound = val, true
				}
			case attrInstance:
				if instance == nil {
					instance = val
				}
			case attrHost:
				if host == nil {
					host = val
				}
			}
			for i, dim := range d.dims {
				if string(key) == dim.Attribute && !d.resFound[i] {
					d.resValues[i], d.resFound[i] = val, true
				}
			}
		}
		if res.err != nil {
			return 0, res.err
		}
	}
	if scan.err != nil {
		return 0, scan.err
	}
	// A span's clock is its host's: processes on one host share it, so
	// a queue hop between them needs no offset.
	d.resNode = host
	if len(d.resNode) == 0 {
		d.resNode = instance
	}

	resReason := d.resourceReason(service, instance, host)
	total := 0
	for rs.next() {
		if !rs.is(fResourceSpansScopeSpans, protowire.BytesType) && !rs.is(fResourceSpansLibrarySpans, protowire.BytesType) {
			continue
		}
		ss := rs.sub()
		for ss.next() {
			if !ss.is(fScopeSpansSpans, protowire.BytesType) {
				continue
			}
			total++
			if len(service) == 0 {
				ref[ReasonMissingServiceName]++
				continue
			}
			if resReason != reasonNone {
				ref[resReason]++
				continue
			}
			if err := d.wireSpan(ss.sub(), service, b, ref); err != nil {
				return total, err
			}
		}
		if ss.err != nil {
			return total, ss.err
		}
	}
	d.endResource(service, instance, host)
	return total, rs.err
}

func (d *Decoder) wireSpan(sp walker, service []byte, b *sample.Batch, ref *Refusals) error {
	var (
		tid, name  []byte
		kind, code int32
		start, end uint64
	)
	d.beginSpan()
	for sp.next() {
		// Switch on the field number first: one comparison per field
		// instead of one call per case.
		switch sp.num {
		case fSpanTraceID:
			if sp.typeIs(protowire.BytesType) {
				tid = sp.val
			}
		case fSpanID:
			if sp.typeIs(protowire.BytesType) {
				d.cur.spanID = sp.val
			}
		case fSpanParentID:
			if sp.typeIs(protowire.BytesType) {
				d.cur.parentID = sp.val
			}
		case fSpanName:
			if sp.typeIs(protowire.BytesType) {
				name = sp.val
			}
		case fSpanKind:
			if sp.typeIs(protowire.VarintType) {
				kind = int32(sp.u)
			}
		case fSpanStart:
			if sp.typeIs(protowire.Fixed64Type) {
				start = sp.u
			}
		case fSpanEnd:
			if sp.typeIs(protowire.Fixed64Type) {
				end = sp.u
			}
		case fSpanStatus:
			if !sp.typeIs(protowire.BytesType) {
				break
			}
			st := sp.sub()
			for st.next() {
				if st.num == fStatusCode && st.typeIs(protowire.VarintType) {
					code = int32(st.u)
				}
			}
			if st.err != nil {
				return st.err
			}
		case fSpanEvents:
			if len(d.stages.Names) == 0 || !sp.typeIs(protowire.BytesType) {
				break
			}
			if err := d.wireEvent(sp.sub()); err != nil {
				return err
			}
		case fSpanAttributes:
			if !sp.typeIs(protowire.BytesType) {
				break
			}
			// Attributes are read where they stand, so that a span with
			// many of them allocates nothing.
			key, val, err := keyValue(sp.sub(), d.wantsAttribute)
			if err != nil {
				return err
			}
			if key != nil {
				d.spanAttribute(key, val)
			}
		}
	}
	if sp.err != nil {
		return sp.err
	}
	d.span(b, ref, service, name, kind, code, start, end, tid)
	return nil
}

// wireEvent records a span event if it marks a stage.
func (d *Decoder) wireEvent(ev walker) error {
	var (
		t    uint64
		name string
	)
	for ev.next() {
		switch ev.num {
		case fEventTime:
			if ev.typeIs(protowire.Fixed64Type) {
				t = ev.u
			}
		case fEventName:
			if ev.typeIs(protowire.BytesType) && name == "" {
				name = d.stageName(ev.val)
			}
		case fEventAttributes:
			if !ev.typeIs(protowire.BytesType) || name != "" || d.stages.Attribute == "" {
				break
			}
			_, val, err := keyValue(ev.sub(), func(k []byte) bool { return string(k) == d.stages.Attribute })
			if err != nil {
				return err
			}
			name = d.stageName(val)
		}
	}
	if ev.err != nil {
		return ev.err
	}
	if name != "" {
		d.stageEvent(t, name)
	}
	return nil
}

// keyValue reads a KeyValue and returns its key and value, or a nil key when
// want refuses the key (the value is then not rendered). Values must be
// strings, bools or ints; others return errNeedsPdata if wanted. The
// returned slices view the request. Encoders write the key and the value in
// either order, so the value is rendered only once both are known.
func keyValue(kv walker, want func(key []byte) bool) (key, val []byte, err error) {
	var (
		value  walker
		hasVal bool
	)
	for kv.next() {
		switch {
		case kv.is(fKeyValueKey, protowire.BytesType):
			key = kv.val
		case kv.is(fKeyValueValue, protowire.BytesType):
			value, hasVal = kv.sub(), true
		}
	}
	if kv.err != nil {
		return nil, nil, kv.err
	}
	if key == nil || want != nil && !want(key) {
		return nil, nil, nil
	}
	if !hasVal {
		return key, nil, nil
	}
	for value.next() {
		switch value.num {
		case fAnyString:
			if value.is(fAnyString, protowire.BytesType) {
				val = value.val
			}
		case fAnyBool:
			if value.is(fAnyBool, protowire.VarintType) {
				val = boolText[min(value.u, 1)]
			}
		case fAnyInt:
			if value.is(fAnyInt, protowire.VarintType) {
				// Rare enough in dimensions that a small allocation is
				// fine; string attributes cost nothing.
				val = strconv.AppendInt(nil, int64(value.u), 10)
			}
		default:
			return nil, nil, errNeedsPdata
		}
	}
	return key, val, value.err
}

var boolText = [2][]byte{[]byte("false"), []byte("true")}

// Nesting and element bounds. Attribute values nest (arrays and maps of
// values), and the pdata decoders recurse once per level: a request of a
// few megabytes nesting a million arrays overflows the goroutine stack and
// kills the process. Real attributes nest a few levels. pdata also builds
// an object of some 240 bytes per element: 14 MiB of empty JSON spans took
// 1.2 GiB.
const (
	// maxValueDepth bounds the nesting of an attribute value: a string is
	// depth 1, an array of strings 2.
	maxValueDepth = 64
	// maxJSONDepth bounds the nesting of brackets in an OTLP/JSON request:
	// the request's own structure (about 10 levels) and 3 per level of
	// attribute value ({"arrayValue": {"values": [...]}}).
	maxJSONDepth = 256
	// maxElements bounds the messages (spans, events, links, attributes,
	// values; JSON objects and arrays) of a request pdata decodes: some
	// 250 MB at most. A batch of 8192 spans with 20 attributes each has
	// about 350 000.
	maxElements = 1 << 20
)

// Field numbers of the messages only the nesting check reads.
const (
	fScopeSpansScope = 1
	fScopeAttributes = 3
	fSpanLinks       = 13
	fLinkAttributes  = 4
	fAnyArray        = 5
	fAnyKVList       = 6
	fArrayValues     = 1
	fKVListValues    = 1
)

// errTooDeep is an attribute value nested deeper than maxValueDepth.
type errTooDeep struct{ off int }

func (e *errTooDeep) Error() string {
	return fmt.Sprintf("malformed OTLP protobuf ExportTraceServiceRequest: attribute value at byte %d nests arrays or maps more than %d levels deep", e.off, maxValueDepth)
}

// errTooManyElements is a request with more than maxElements messages.
var errTooManyElements = fmt.Errorf("OTLP ExportTraceServiceRequest holds more than %d spans, events, links, attributes and values (JSON: objects and arrays): send smaller batches", maxElements)

// checkValueDepth walks every attribute value of a protobuf request
// (resource, scope, span, event and link attributes) and fails on one
// nested deeper than maxValueDepth, on more than maxElements messages or on
// malformed protobuf, without recursing deeper than that itself. Run it
// before pdata decodes a request.
func checkValueDepth(body []byte) error {
	c := &elementCheck{}
	return c.walk(walker{b: body}, "request")
}

// elementCheck counts the messages walked.
type elementCheck struct{ n int }

func (c *elementCheck) count() error {
	if c.n++; c.n > maxElements {
		return errTooManyElements
	}
	return nil
}

// walk goes through a message at path, following the fields that lead on
// towards attributes.
func (c *elementCheck) walk(w walker, path string) error {
	if err := c.count(); err != nil {
		return err
	}
	for w.next() {
		if w.typ != protowire.BytesType {
			continue
		}
		var err error
		switch path {
		case "request":
			if w.num == fRequestResourceSpans {
				err = c.walk(w.sub(), "resourceSpans")
			}
		case "resourceSpans":
			switch w.num {
			case fResourceSpansResource:
				err = c.walk(w.sub(), "resource")
			case fResourceSpansScopeSpans, fResourceSpansLibrarySpans:
				err = c.walk(w.sub(), "scopeSpans")
			}
		case "resource":
			if w.num == fResourceAttributes {
				err = c.keyValue(w.sub(), 1)
			}
		case "scopeSpans":
			switch w.num {
			case fScopeSpansScope:
				err = c.walk(w.sub(), "scope")
			case fScopeSpansSpans:
				err = c.walk(w.sub(), "span")
			}
		case "scope":
			if w.num == fScopeAttributes {
				err = c.keyValue(w.sub(), 1)
			}
		case "span":
			switch w.num {
			case fSpanAttributes:
				err = c.keyValue(w.sub(), 1)
			case fSpanEvents:
				err = c.walk(w.sub(), "event")
			case fSpanLinks:
				err = c.walk(w.sub(), "link")
			}
		case "event":
			if w.num == fEventAttributes {
				err = c.keyValue(w.sub(), 1)
			}
		case "link":
			if w.num == fLinkAttributes {
				err = c.keyValue(w.sub(), 1)
			}
		}
		if err != nil {
			return err
		}
	}
	return w.err
}

// keyValue checks a KeyValue whose value is at the given depth.
func (c *elementCheck) keyValue(kv walker, depth int) error {
	if err := c.count(); err != nil {
		return err
	}
	for kv.next() {
		if kv.num == fKeyValueValue && kv.typ == protowire.BytesType {
			if err := c.anyValue(kv.sub(), depth); err != nil {
				return err
			}
		}
	}
	return kv.err
}

// anyValue checks an AnyValue at the given depth.
func (c *elementCheck) anyValue(v walker, depth int) error {
	if depth > maxValueDepth {
		return &errTooDeep{off: v.base}
	}
	if err := c.count(); err != nil {
		return err
	}
	for v.next() {
		if v.typ != protowire.BytesType {
			continue
		}
		switch v.num {
		case fAnyArray:
			arr := v.sub()
			for arr.next() {
				if arr.num == fArrayValues && arr.typ == protowire.BytesType {
					if err := c.anyValue(arr.sub(), depth+1); err != nil {
						return err
					}
				}
			}
			if arr.err != nil {
				return arr.err
			}
		case fAnyKVList:
			list := v.sub()
			for list.next() {
				if list.num == fKVListValues && list.typ == protowire.BytesType {
					if err := c.keyValue(list.sub(), depth+1); err != nil {
						return err
					}
				}
			}
			if list.err != nil {
				return list.err
			}
		}
	}
	return v.err
}

// checkJSONDepth fails on a JSON document whose brackets nest deeper than
// maxJSONDepth or that holds more than maxElements objects and arrays; it
// does not otherwise validate the JSON.
func checkJSONDepth(body []byte) error {
	depth, elements, inString, escaped := 0, 0, false, false
	for i, c := range body {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			if depth++; depth > maxJSONDepth {
				return fmt.Errorf("malformed OTLP JSON ExportTraceServiceRequest: brackets at byte %d nest more than %d levels deep (attribute values nest at most %d levels)", i, maxJSONDepth, maxValueDepth)
			}
			if elements++; elements > maxElements {
				return errTooManyElements
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return nil
}
