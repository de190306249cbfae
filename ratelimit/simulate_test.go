package ratelimit

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestSimulate runs a short simulation and checks its shape, not its
// figures (those depend on the machine's timing; docs/ratelimit.md has
// them): every window and phase is there, the ring changes are counted,
// and nothing is left running (goleak).
func TestSimulate(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for 12 s")
	}
	res, err := Simulate(context.Background(), SimulateOptions{Limit: Limit{Rate: 2000, Burst: 2000}, Batch: 20, Phase: 3 * time.Second, Interval: 500 * time.Millisecond, Tenants: 1000})
	require.NoError(t, err)
	require.Len(t, res.Windows, 12)
	require.Len(t, res.Phases, 4)
	for _, p := range res.Phases {
		require.Equal(t, 2, p.Counted, p.Name)
	}
	require.Len(t, res.Moves, 4)
	require.Equal(t, "node4", res.Moves[0].TenantOwnerAfter)
	require.InDelta(t, 0.25, res.Moves[0].MovedFraction, 0.05)
	require.InDelta(t, 0.25, res.Moves[1].MovedFraction, 0.05)
	require.InDelta(t, 1.0/3, res.Moves[2].MovedFraction, 0.05)
	for _, w := range res.Windows {
		require.Positive(t, w.Offered)
	}
	var buf bytes.Buffer
	require.NoError(t, res.Print(&buf))
	t.Log("\n" + buf.String())
}

func TestSimulateOptions(t *testing.T) {
	_, err := Simulate(context.Background(), SimulateOptions{Phase: time.Second})
	require.ErrorContains(t, err, "Phase")
}

// TestSimulateReport runs the full simulation with the default options
// (40 s) and prints its report, the figures of docs/ratelimit.md, until
// `hopwatch bench ratelimit` calls Simulate:
//
//	HOPWATCH_RATELIMIT_SIM=1 go test ./ratelimit -run TestSimulateReport -v -count 1
func TestSimulateReport(t *testing.T) {
	if os.Getenv("HOPWATCH_RATELIMIT_SIM") == "" {
		t.Skip("set HOPWATCH_RATELIMIT_SIM=1 to run the 40 s simulation")
	}
	res, err := Simulate(context.Background(), SimulateOptions{})
	require.NoError(t, err)
	require.NoError(t, res.Print(os.Stdout))
}
