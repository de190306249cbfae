package dataset

import (
	"math"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDatasetsAreDeterministicAndShaped(t *testing.T) {
	for _, name := range All {
		a, err := Generate(name, 200_000, 1)
		require.NoError(t, err)
		b, err := Generate(name, 200_000, 1)
		require.NoError(t, err)
		require.Equal(t, a, b, name)
		for i := 1; i < len(a); i++ {
			require.GreaterOrEqual(t, a[i].T, a[i-1].T, "%s: time goes back at %d", name, i)
			require.Positive(t, a[i].Latency)
		}
		lat := make([]float64, len(a))
		for i, s := range a {
			lat[i] = float64(s.Latency)
		}
		sort.Float64s(lat)
		median := lat[len(lat)/2]
		switch name {
		case D1, D2, D4:
			require.InEpsilon(t, 2e6, median, 0.02, name)
		case D3:
			require.InEpsilon(t, 300e3*math.Exp(0.5*0.13), median, 0.1, name)
		}
		span := float64(a[len(a)-1].T-a[0].T) / 1e9
		rate := float64(len(a)) / span
		switch name {
		case D1, D2:
			require.InEpsilon(t, 10_000, rate, 0.02, name)
		case D4:
			require.InEpsilon(t, 1000, rate, 0.001, name)
		}
	}
	d2, _ := Generate(D2, 1000, 1)
	for _, s := range d2 {
		require.Zero(t, s.T%1000)
		require.Zero(t, s.Latency%1000)
	}
}

func TestEntropyBounds(t *testing.T) {
	// The figures the issue quotes: about 5.1 B for D1 and 2.6 B for D2.
	require.InDelta(t, 5.1, EntropyBound(D1)/8, 0.05)
	require.InDelta(t, 2.6, EntropyBound(D2)/8, 0.05)
	for _, n := range All {
		require.False(t, math.IsNaN(EntropyBound(n)), n)
	}
}
