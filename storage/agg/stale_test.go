package agg

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/value"
	"github.com/stretchr/testify/require"
)

func TestIdleSeriesGetStalenessMarkers(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.SeriesIdleTimeout = 15 * time.Minute
	s, _ := openStore(t, opts)
	defer s.Close()
	appendObs(t, s, genObs(1, 20, seriesA, seriesB))
	require.NoError(t, s.Flush(t.Context(), base))
	// B stays busy, A goes quiet.
	appendObs(t, s, genObs(2, 5, seriesB))
	require.NoError(t, s.Flush(t.Context(), base.Add(10*time.Minute)))
	appendObs(t, s, genObs(3, 5, seriesB))
	end := base.Add(16 * time.Minute)
	require.NoError(t, s.Flush(t.Context(), end))

	db := s.DB(testTenant)
	ps := floatPoints(t, db, MetricCalls, seriesA)
	last := ps[len(ps)-1]
	require.Equal(t, end.UnixMilli(), last.T)
	require.True(t, value.IsStaleNaN(last.V), "A ends with a staleness marker")
	hs := histPoints(t, db, MetricLatency, seriesA)
	require.True(t, value.IsStaleNaN(hs[len(hs)-1].H.Sum), "the native histogram too")
	psB := floatPoints(t, db, MetricCalls, seriesB)
	require.False(t, math.IsNaN(psB[len(psB)-1].V), "B goes on")
	require.Equal(t, 1.0, testutil.ToFloat64(s.metrics.seriesExpired))
	require.Equal(t, 1, s.tenants[testTenant].seriesCount())

	// A comes back from zero.
	appendObs(t, s, genObs(4, 1, seriesA))
	require.NoError(t, s.Flush(t.Context(), end.Add(time.Minute)))
	ps = floatPoints(t, db, MetricCalls, seriesA)
	require.Equal(t, 1.0, ps[len(ps)-1].V)
}
