package cluster

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"
)

// TestDefaultLimits: the cluster's default limits are set once by the
// first node (IfUnset), changed by a plain set, kept in snapshots, and a
// join with other values is refused naming the flags and both values.
func TestDefaultLimits(t *testing.T) {
	at := time.Unix(1700000000, 0)
	s := emptyState()
	_, set := s.DefaultLimits()
	require.False(t, set)
	apply := func(l Limits, ifUnset bool) {
		t.Helper()
		c := &command{Op: OpSetDefaultLimits, Defaults: &Defaults{Limits: l, IfUnset: ifUnset}}
		require.NoError(t, c.validate())
		var err error
		s, err = s.apply(c, s.index+1, at)
		require.NoError(t, err)
	}
	first := Limits{IngestionRateSpans: 1000, MaxSeriesPerTenant: 150000}
	apply(first, true)
	apply(Limits{IngestionRateSpans: 5}, true) // a second seed changes nothing
	l, set := s.DefaultLimits()
	require.True(t, set)
	require.Equal(t, first, l)

	back, err := decodeSnapshot(strings.NewReader(stateBytes(t, s)))
	require.NoError(t, err)
	l, _ = back.DefaultLimits()
	require.Equal(t, first, l)

	bad := &command{Op: OpSetDefaultLimits, Defaults: &Defaults{Limits: Limits{IngestionRateSpans: -1}}}
	require.ErrorContains(t, bad.validate(), "defaults.limits.ingestion_rate_spans")

	join := func(l Limits) error {
		md, _ := metadata.FromOutgoingContext(withDefaultLimits(context.Background(), &l))
		return checkDefaultLimits(metadata.NewIncomingContext(context.Background(), md), s)
	}
	require.NoError(t, join(first))
	err = join(Limits{IngestionRateSpans: 500, IngestionRateBytes: 1e6, MaxSeriesPerTenant: 150000})
	require.ErrorIs(t, err, ErrConflict)
	require.ErrorContains(t, err, "--limits.ingestion-rate-spans is 500 on this node and 1000 in the cluster; --limits.ingestion-rate-bytes is 1e+06 on this node and 0 in the cluster")
	require.NoError(t, checkDefaultLimits(context.Background(), s), "a join without limits passes")
	s = emptyState()
	require.NoError(t, join(Limits{IngestionRateSpans: 7}), "a cluster without defaults takes any")
}
