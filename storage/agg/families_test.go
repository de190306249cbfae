package agg

import (
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

// TestServiceGraphFamilies checks that edge, unpaired and dropped series
// write Tempo's service graph metrics, with failures counted, and that the
// counts survive a crash.
func TestServiceGraphFamilies(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, _ := openStore(t, opts)
	edge := labels.FromStrings("client", "api", "server", "db", "connection_type", "database")
	unpaired := labels.FromStrings("client", "api")
	start := base.Add(-time.Minute).UnixNano()
	b := &sample.Batch{
		Series: []sample.Series{
			{Family: sample.FamilyEdgeServer, Key: "s", Labels: edge},
			{Family: sample.FamilyEdgeClient, Key: "c", Labels: edge},
			{Family: sample.FamilyUnpaired, Key: "u", Labels: unpaired},
		},
		Samples: []sample.Sample{
			{Series: 0, Start: start, Duration: 3_000_000, TraceID: traceID(1)},
			{Series: 1, Start: start, Duration: 4_000_000, TraceID: traceID(1)},
			{Series: 0, Start: start, Duration: 9_000_000, TraceID: traceID(2), Failed: true},
			{Series: 1, Start: start, Duration: 10_000_000, TraceID: traceID(2), Failed: true},
			{Series: 2, Start: start},
			{Series: 2, Start: start},
			{Series: 2, Start: start},
		},
	}
	require.NoError(t, s.Append(t.Context(), testTenant, b))
	crash(t, s)

	s, _ = openStore(t, opts)
	defer s.Close()
	require.NoError(t, s.Flush(t.Context(), base))
	db := s.DB(testTenant)
	ts := base.UnixMilli()
	f := func(name string, lset labels.Labels, want float64) {
		t.Helper()
		require.Equal(t, want, floatAt(t, floatPoints(t, db, name, lset), ts), name)
	}
	f("traces_service_graph_request_total", edge, 2)
	f("traces_service_graph_request_failed_total", edge, 1)
	f("traces_service_graph_request_server_seconds_count", edge, 2)
	f("traces_service_graph_request_server_seconds_sum", edge, 0.012)
	f("traces_service_graph_request_client_seconds_sum", edge, 0.014)
	f("traces_service_graph_unpaired_spans_total", unpaired, 3)
	require.Equal(t, uint64(2), histAt(t, histPoints(t, db, "traces_service_graph_request_server_seconds", edge), ts).Count)

	// The client side writes no request counter of its own, the counters
	// no histogram, and nothing lands under the span metric names.
	floats, hists := selectSeries(t, db, labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+"))
	for k := range floats {
		require.NotContains(t, k, "traces_spanmetrics")
		require.NotContains(t, k, "unpaired_spans_total_bucket")
	}
	require.Len(t, hists, 2, "native histograms: server and client seconds")
}
