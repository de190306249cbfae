package promutil

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestUnregisterAllAllowsRegisteringAgain(t *testing.T) {
	reg := prometheus.NewRegistry()
	for range 2 {
		tr := NewTrackingRegisterer(prometheus.WrapRegistererWith(prometheus.Labels{"tenant": "a"}, reg))
		c := promauto.With(tr).NewCounter(prometheus.CounterOpts{Name: "x_total", Help: "x"})
		c.Inc()
		n, err := testutil.GatherAndCount(reg, "x_total")
		require.NoError(t, err)
		require.Equal(t, 1, n)
		tr.UnregisterAll()
		n, err = testutil.GatherAndCount(reg, "x_total")
		require.NoError(t, err)
		require.Zero(t, n)
	}
}
