package server_test

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/hopwatch/hopwatch/internal/server"
)

// TestSeriesLimitPerTenant: spans of new series beyond the tenant's limit
// are refused through partial success with Mimir's reason, counted, and
// absent from both tiers; spans of known series keep being accepted.
func TestSeriesLimitPerTenant(t *testing.T) {
	reg := prometheus.NewRegistry()
	srv, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.Storage.MaxSeriesPerTenant = 3
		c.Ingest.Stages.Names = nil  // one series per span name, nothing else
		c.RawSamplingEnabled = false // the raw tier must hold every accepted span
	})
	start := time.Now().Add(-time.Minute)
	export := func(names ...string) ptraceotlp.ExportResponse {
		t.Helper()
		td := ptrace.NewTraces()
		rs := td.ResourceSpans().AppendEmpty()
		rs.Resource().Attributes().PutStr("service.name", "catalog")
		spans := rs.ScopeSpans().AppendEmpty().Spans()
		for i, n := range names {
			s := spans.AppendEmpty()
			s.SetName(n)
			s.SetKind(ptrace.SpanKindInternal)
			s.SetTraceID(pcommon.TraceID{byte(i + 1), 1})
			s.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
			s.SetEndTimestamp(pcommon.NewTimestampFromTime(start.Add(time.Millisecond)))
		}
		body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
		require.NoError(t, err)
		resp, err := http.Post("http://"+addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf", bytes.NewReader(body))
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		out := ptraceotlp.NewExportResponse()
		require.NoError(t, out.UnmarshalProto(b))
		return out
	}
	resp := export("op-1", "op-2", "op-3")
	require.Zero(t, resp.PartialSuccess().RejectedSpans())
	resp = export("op-1", "op-4", "op-5", "op-4", "op-2")
	require.Equal(t, int64(3), resp.PartialSuccess().RejectedSpans())
	require.Contains(t, resp.PartialSuccess().ErrorMessage(), "per_user_series_limit")
	require.Contains(t, resp.PartialSuccess().ErrorMessage(), "--limits.max-series-per-tenant")
	require.Equal(t, 3.0, counter(t, reg, "hopwatch_discarded_samples_total", map[string]string{"tenant": "anonymous", "reason": "per_user_series_limit"}))

	prom := promClient(t, addrs.Web, "")
	waitFor(t, "accepted spans in PromQL", func() bool {
		v, ok := queryScalar(t, prom, `sum(traces_spanmetrics_calls_total{service="catalog"})`)
		return ok && v == 5
	})
	for _, n := range []string{"op-4", "op-5"} {
		_, ok := queryScalar(t, prom, fmt.Sprintf(`traces_spanmetrics_calls_total{span_name=%q}`, n))
		require.False(t, ok, "refused series %s reached the TSDB", n)
	}
	var rawNames []string
	for _, sr := range server.RawStore(srv).DB("anonymous").Select(math.MinInt64, math.MaxInt64, labels.MustNewMatcher(labels.MatchRegexp, "span_name", "op-.*")) {
		rawNames = append(rawNames, sr.Labels.Get("span_name"))
	}
	require.ElementsMatch(t, []string{"op-1", "op-2", "op-3"}, rawNames, "raw tier series")
}
