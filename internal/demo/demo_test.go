package demo

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// testNow is a fixed clock so generated timestamps are reproducible.
func testNow() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }

type flatSpan struct {
	span    ptrace.Span
	service string
}

// byTrace indexes spans by trace and span id so structural checks don't
// depend on how spans are grouped into resources.
func byTrace(t *testing.T, td ptrace.Traces) map[pcommon.TraceID]map[pcommon.SpanID]flatSpan {
	t.Helper()
	out := map[pcommon.TraceID]map[pcommon.SpanID]flatSpan{}
	for i := range td.ResourceSpans().Len() {
		rs := td.ResourceSpans().At(i)
		name, ok := rs.Resource().Attributes().Get("service.name")
		require.True(t, ok, "resource %d has no service.name", i)
		require.NotEmpty(t, name.Str())
		for j := range rs.ScopeSpans().Len() {
			spans := rs.ScopeSpans().At(j).Spans()
			for k := range spans.Len() {
				s := spans.At(k)
				m := out[s.TraceID()]
				if m == nil {
					m = map[pcommon.SpanID]flatSpan{}
					out[s.TraceID()] = m
				}
				_, dup := m[s.SpanID()]
				require.False(t, dup, "duplicate span id within a trace")
				m[s.SpanID()] = flatSpan{span: s, service: name.Str()}
			}
		}
	}
	return out
}

func TestTracesStructure(t *testing.T) {
	td := NewGenerator(42).Traces(testNow(), 50)
	traces := byTrace(t, td)
	require.Len(t, traces, 50)

	services := map[string]bool{}
	for tid, spans := range traces {
		require.False(t, tid.IsEmpty())
		roots := 0
		for _, fs := range spans {
			s := fs.span
			services[fs.service] = true
			require.False(t, s.SpanID().IsEmpty())
			require.GreaterOrEqual(t, s.EndTimestamp(), s.StartTimestamp(), "span %q", s.Name())
			require.LessOrEqual(t, s.EndTimestamp().AsTime(), testNow(), "span %q ends after now", s.Name())

			if s.ParentSpanID().IsEmpty() {
				roots++
				continue
			}
			parent, ok := spans[s.ParentSpanID()]
			require.True(t, ok, "parent of %q missing from trace", s.Name())
			if s.Kind() == ptrace.SpanKindServer {
				p := parent.span
				require.Equal(t, ptrace.SpanKindClient, p.Kind(), "server %q parent kind", s.Name())
				require.GreaterOrEqual(t, s.StartTimestamp(), p.StartTimestamp(), "server %q starts before client", s.Name())
				require.LessOrEqual(t, s.EndTimestamp(), p.EndTimestamp(), "server %q ends after client", s.Name())
			}
		}
		require.Equal(t, 1, roots)
	}
	for _, want := range []string{"web-frontend", "api-gateway", "log-processor", "log-indexer", "log-store"} {
		require.True(t, services[want], "service %s missing", want)
	}
}

func TestTracesErrors(t *testing.T) {
	td := NewGenerator(7).Traces(testNow(), 2000)
	errSpans, errTraces := 0, map[pcommon.TraceID]bool{}
	for _, spans := range byTrace(t, td) {
		for _, fs := range spans {
			s := fs.span
			if s.Status().Code() != ptrace.StatusCodeError {
				continue
			}
			errSpans++
			errTraces[s.TraceID()] = true
			require.NotEmpty(t, s.Status().Message())
			// An errored child implies its synchronous parent saw the error too.
			if p, ok := spans[s.ParentSpanID()]; ok && s.Kind() != ptrace.SpanKindConsumer {
				require.Equal(t, ptrace.StatusCodeError, p.span.Status().Code(), "parent of failed %q", s.Name())
			}
		}
	}
	require.Positive(t, errSpans)
	// ~1% of 2000; wide bounds keep the test robust to the seed.
	require.GreaterOrEqual(t, len(errTraces), 5)
	require.LessOrEqual(t, len(errTraces), 60)
}

func TestTracesDeterministic(t *testing.T) {
	var m ptrace.ProtoMarshaler
	a, err := m.MarshalTraces(NewGenerator(3).Traces(testNow(), 200))
	require.NoError(t, err)
	b, err := m.MarshalTraces(NewGenerator(3).Traces(testNow(), 200))
	require.NoError(t, err)
	require.Equal(t, a, b)

	c, err := m.MarshalTraces(NewGenerator(4).Traces(testNow(), 200))
	require.NoError(t, err)
	require.NotEqual(t, a, c)
}

type captureServer struct {
	ptraceotlp.UnimplementedGRPCServer
	mu      sync.Mutex
	spans   int
	tenants []string
}

func (s *captureServer) Export(ctx context.Context, req ptraceotlp.ExportRequest) (ptraceotlp.ExportResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.spans += req.Traces().SpanCount()
	s.tenants = append(s.tenants, md.Get("x-scope-orgid")...)
	return ptraceotlp.NewExportResponse(), nil
}

func (s *captureServer) snapshot() (int, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.spans, append([]string(nil), s.tenants...)
}

func TestRunExports(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := grpc.NewServer()
	capture := &captureServer{}
	ptraceotlp.RegisterGRPCServer(srv, capture)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{
			Endpoint:   lis.Addr().String(),
			Rate:       100,
			Seed:       1,
			BatchEvery: 20 * time.Millisecond,
			Tenant:     "team-a",
		}, nil)
	}()

	require.Eventually(t, func() bool {
		n, _ := capture.snapshot()
		return n > 0
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancellation")
	}

	_, tenants := capture.snapshot()
	require.NotEmpty(t, tenants)
	for _, tn := range tenants {
		require.Equal(t, "team-a", tn)
	}
}

func TestRunRejectsBadOptions(t *testing.T) {
	require.Error(t, Run(context.Background(), Options{}, nil))
	require.Error(t, Run(context.Background(), Options{Endpoint: "127.0.0.1:1", Rate: -1}, nil))
}
