package client

import (
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

func TestSeriesValidation(t *testing.T) {
	const (
		span    = hopwatchv1.HopKind_HOP_KIND_SPAN
		stage   = hopwatchv1.HopKind_HOP_KIND_STAGE
		queue   = hopwatchv1.HopKind_HOP_KIND_QUEUE
		network = hopwatchv1.HopKind_HOP_KIND_NETWORK
	)
	// hopwatch's dimensions: http.method, and an attribute "service" that
	// hopwatch renames so as not to clash with its own label.
	dims := []string{"http_method", "__service"}
	ok := func(kind hopwatchv1.HopKind, labels ...string) {
		t.Helper()
		_, _, err := newSeries(kind, labels, dims)
		require.NoError(t, err)
	}
	bad := func(want string, kind hopwatchv1.HopKind, labels ...string) {
		t.Helper()
		_, _, err := newSeries(kind, labels, dims)
		require.ErrorIs(t, err, ErrInvalidSeries)
		require.ErrorContains(t, err, want)
	}
	ok(span, "service", "api", "span_name", "GET /")
	ok(span, "service", "api", "span_name", "GET /", "span_kind", "SPAN_KIND_SERVER", "status_code", "STATUS_CODE_ERROR", "http_method", "GET")
	ok(span, "service", "api", "span_name", "GET /", "__service", "web")
	ok(stage, "service", "api", "span_name", "consume", "from_stage", "enqueue", "to_stage", "dequeue")
	ok(queue, "producer", "api", "consumer", "worker")
	ok(network, "client", "api", "server", "db")

	bad("unknown kind HOP_KIND_UNSPECIFIED", hopwatchv1.HopKind_HOP_KIND_UNSPECIFIED, "service", "api")
	bad("3 label strings, want name-value pairs", queue, "producer", "api", "consumer")
	bad("empty label name", queue, "producer", "api", "", "worker")
	bad(`label name "1x" has character '1' at offset 0`, queue, "producer", "api", "1x", "y")
	bad(`label name "http-method" has character '-' at offset 4`, span, "service", "api", "span_name", "x", "http-method", "y")
	bad("names starting with __ are reserved", span, "service", "api", "span_name", "x", "__name__", "y")
	bad("label name of 1025 bytes is longer than the limit of 1024", queue, "producer", "api", strings.Repeat("a", 1025), "y")
	bad(`label "consumer" has an empty value`, queue, "producer", "api", "consumer", "")
	bad(`label "consumer" has a value that is not valid UTF-8`, queue, "producer", "api", "consumer", "\xff")
	bad(`label "producer" given twice`, queue, "producer", "api", "producer", "web", "consumer", "worker")
	bad(`HOP_KIND_STAGE needs label "to_stage"`, stage, "service", "api", "span_name", "consume", "from_stage", "enqueue")
	bad(`HOP_KIND_QUEUE takes no label "topic"`, queue, "producer", "api", "consumer", "worker", "topic", "orders")
	bad(`HOP_KIND_SPAN takes no label "region": besides service, span_name, span_kind, status_code, only hopwatch's dimension labels, listed in Options.SpanDimensions (http_method, __service)`,
		span, "service", "api", "span_name", "x", "region", "eu")
	bad(`HOP_KIND_STAGE takes no label "http_method"`, stage, "service", "api", "span_name", "consume", "from_stage", "enqueue", "to_stage", "dequeue", "http_method", "GET")
	bad(`span_kind "server" is not one of SPAN_KIND_UNSPECIFIED`, span, "service", "api", "span_name", "x", "span_kind", "server")
	bad(`status_code "500" is not one of STATUS_CODE_UNSET`, span, "service", "api", "span_name", "x", "status_code", "500")
}

func TestSeriesRefs(t *testing.T) {
	ts := startServer(t)
	o := testOptions(ts)
	o.MaxSeries = 2
	c := newTestClient(t, o)
	ss := ts.accept(t)
	wait := ss.serveInBackground(t, newStore(), 10)

	a, err := c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "producer", "api", "consumer", "worker")
	require.NoError(t, err)
	again, err := c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "consumer", "worker", "producer", "api")
	require.NoError(t, err)
	require.Equal(t, a, again, "the same series in another label order")
	b, err := c.Series(hopwatchv1.HopKind_HOP_KIND_NETWORK, "client", "api", "server", "worker")
	require.NoError(t, err)
	require.NotEqual(t, a, b)
	_, err = c.Series(hopwatchv1.HopKind_HOP_KIND_NETWORK, "client", "api", "server", "db")
	require.ErrorIs(t, err, ErrTooManySeries)
	_, err = c.Series(hopwatchv1.HopKind_HOP_KIND_QUEUE, "producer", "api")
	require.ErrorIs(t, err, ErrInvalidSeries)

	require.NoError(t, c.Close(context.Background()))
	wait()
}
