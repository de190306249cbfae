package ingest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/hopwatch/hopwatch/ingest/watermark"
)

// TestWriterIDs: the header names a request's one writer; without it each
// resource's service.instance.id, else service.name@host.name, else
// service.name does.
func TestWriterIDs(t *testing.T) {
	end := time.Now().Add(-time.Minute)
	td := ptrace.NewTraces()
	for _, attrs := range []map[string]string{
		{"service.name": "a", "service.instance.id": "a-7f9c", "host.name": "h1"},
		{"service.name": "b", "host.name": "h2"},
		{"service.name": "c"},
	} {
		rs := td.ResourceSpans().AppendEmpty()
		for k, v := range attrs {
			rs.Resource().Attributes().PutStr(k, v)
		}
		s := rs.ScopeSpans().AppendEmpty().Spans().AppendEmpty()
		s.SetName("op")
		s.SetTraceID(pcommon.TraceID{1})
		s.SetStartTimestamp(pcommon.NewTimestampFromTime(end.Add(-time.Millisecond)))
		s.SetEndTimestamp(pcommon.NewTimestampFromTime(end))
	}
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)

	ids := func(header string) []string {
		r, err := New(DefaultOptions(), nopAppender{}, nil, nil)
		require.NoError(t, err)
		_, err = r.export(context.Background(), protoHTTP, "anonymous", header, len(body), decodeProtobuf(body))
		require.NoError(t, err)
		_, ws := r.Watermarks().Writers("anonymous", time.Now().UnixNano())
		var out []string
		for _, w := range ws {
			require.Equal(t, watermark.Active, w.State)
			require.Equal(t, end.UnixNano(), w.Position)
			out = append(out, w.ID)
		}
		return out
	}
	require.Equal(t, []string{"a-7f9c", "b@h2", "c"}, ids(""))
	require.Equal(t, []string{"collector-0"}, ids("collector-0"))
}
