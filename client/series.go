package client

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

// SeriesRef names a series registered with Client.Series. It is valid
// only for the Client that returned it.
type SeriesRef uint32

// series is a registered series: its message, shared read-only by every
// batch that refers to it, and its encoded size within a batch.
type series struct {
	msg   *hopwatchv1.HopSeries
	bytes int
}

// kindLabels lists, per kind, the labels a series must carry and the
// optional ones it may carry. A span series may also carry hopwatch's
// dimension labels (Options.SpanDimensions); the other kinds carry exactly
// theirs, since the metric families they feed have fixed label sets.
var kindLabels = map[hopwatchv1.HopKind]struct {
	required, optional []string
}{
	hopwatchv1.HopKind_HOP_KIND_SPAN:    {required: []string{"service", "span_name"}, optional: []string{"span_kind", "status_code"}},
	hopwatchv1.HopKind_HOP_KIND_STAGE:   {required: []string{"service", "span_name", "from_stage", "to_stage"}},
	hopwatchv1.HopKind_HOP_KIND_QUEUE:   {required: []string{"producer", "consumer"}},
	hopwatchv1.HopKind_HOP_KIND_NETWORK: {required: []string{"client", "server"}},
}

// OTLP's names, the values hopwatch gives span_kind and status_code.
var (
	spanKinds   = []string{"SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"}
	statusCodes = []string{"STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"}
)

// newSeries checks a series and returns it with its labels sorted by name,
// and its identity within a client. The checks are those that would make
// hopwatch refuse a whole batch, so that one bad series is refused here
// rather than costing every record sent with it. dims are the labels a
// span series may carry besides its own.
func newSeries(kind hopwatchv1.HopKind, labels, dims []string) (series, string, error) {
	spec, ok := kindLabels[kind]
	if !ok {
		return series{}, "", fmt.Errorf("%w: unknown kind %s", ErrInvalidSeries, kind)
	}
	if len(labels)%2 != 0 {
		return series{}, "", fmt.Errorf("%w: %s: %d label strings, want name-value pairs", ErrInvalidSeries, kind, len(labels))
	}
	ls := make([]*hopwatchv1.Label, 0, len(labels)/2)
	for i := 0; i < len(labels); i += 2 {
		name, value := labels[i], labels[i+1]
		if !(kind == hopwatchv1.HopKind_HOP_KIND_SPAN && slices.Contains(dims, name)) {
			if err := checkLabelName(name); err != nil {
				return series{}, "", fmt.Errorf("%w: %s: %w", ErrInvalidSeries, kind, err)
			}
		}
		if value == "" {
			return series{}, "", fmt.Errorf("%w: %s: label %q has an empty value; leave it out instead", ErrInvalidSeries, kind, name)
		}
		if !utf8.ValidString(value) {
			return series{}, "", fmt.Errorf("%w: %s: label %q has a value that is not valid UTF-8", ErrInvalidSeries, kind, name)
		}
		ls = append(ls, &hopwatchv1.Label{Name: name, Value: value})
	}
	slices.SortFunc(ls, func(a, b *hopwatchv1.Label) int { return strings.Compare(a.Name, b.Name) })
	for i := 1; i < len(ls); i++ {
		if ls[i].Name == ls[i-1].Name {
			return series{}, "", fmt.Errorf("%w: %s: label %q given twice", ErrInvalidSeries, kind, ls[i].Name)
		}
	}
	has := func(name string) *hopwatchv1.Label {
		i, found := slices.BinarySearchFunc(ls, name, func(l *hopwatchv1.Label, n string) int { return strings.Compare(l.Name, n) })
		if !found {
			return nil
		}
		return ls[i]
	}
	for _, name := range spec.required {
		if has(name) == nil {
			return series{}, "", fmt.Errorf("%w: %s needs label %q (required: %s)", ErrInvalidSeries, kind, name, strings.Join(spec.required, ", "))
		}
	}
	for _, l := range ls {
		if slices.Contains(spec.required, l.Name) || slices.Contains(spec.optional, l.Name) {
			continue
		}
		if kind != hopwatchv1.HopKind_HOP_KIND_SPAN {
			return series{}, "", fmt.Errorf("%w: %s takes no label %q (labels: %s)", ErrInvalidSeries, kind, l.Name, strings.Join(spec.required, ", "))
		}
		if !slices.Contains(dims, l.Name) {
			listed := strings.Join(dims, ", ")
			if listed == "" {
				listed = "none"
			}
			return series{}, "", fmt.Errorf("%w: %s takes no label %q: besides %s, only hopwatch's dimension labels, listed in Options.SpanDimensions (%s)",
				ErrInvalidSeries, kind, l.Name, strings.Join(slices.Concat(spec.required, spec.optional), ", "), listed)
		}
	}
	if l := has("span_kind"); l != nil && kind == hopwatchv1.HopKind_HOP_KIND_SPAN && !slices.Contains(spanKinds, l.Value) {
		return series{}, "", fmt.Errorf("%w: %s: span_kind %q is not one of %s", ErrInvalidSeries, kind, l.Value, strings.Join(spanKinds, ", "))
	}
	if l := has("status_code"); l != nil && kind == hopwatchv1.HopKind_HOP_KIND_SPAN && !slices.Contains(statusCodes, l.Value) {
		return series{}, "", fmt.Errorf("%w: %s: status_code %q is not one of %s", ErrInvalidSeries, kind, l.Value, strings.Join(statusCodes, ", "))
	}

	msg := &hopwatchv1.HopSeries{Kind: kind, Labels: ls}
	var key strings.Builder
	fmt.Fprintf(&key, "%d", kind)
	for _, l := range ls {
		key.WriteString("\xff" + l.Name + "\xff" + l.Value)
	}
	// The series' size within a batch: its own size plus the field tag and
	// length prefix of a repeated message field.
	n := proto.Size(msg)
	return series{msg: msg, bytes: n + 1 + protowire.SizeVarint(uint64(n))}, key.String(), nil
}

// checkLabelName accepts Prometheus's classic label names, which every
// store and query language downstream of hopwatch takes as they are.
func checkLabelName(name string) error {
	if strings.HasPrefix(name, "__") {
		return fmt.Errorf("label name %q: names starting with __ are reserved", name)
	}
	return checkLabelChars(name)
}

// checkLabelChars checks a label name's length and characters. hopwatch
// names a dimension that would clash with its own labels __service and
// the like, so dimensions are checked with this alone.
func checkLabelChars(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty label name")
	case len(name) > maxLabelNameLength:
		return fmt.Errorf("label name of %d bytes is longer than the limit of %d", len(name), maxLabelNameLength)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9' {
			continue
		}
		return fmt.Errorf("label name %q has character %q at offset %d; allowed are letters, digits and _, not starting with a digit", name, c, i)
	}
	return nil
}
