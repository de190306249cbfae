package main

import (
	"bytes"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBenchClusterProcessesRuns keeps `hopwatch bench cluster --processes`
// working: three nodes, one SIGKILL of the leader, a few writes. It asserts
// no timing; the figures come from the command (docs/BENCHMARKS.md).
func TestBenchClusterProcessesRuns(t *testing.T) {
	// The nodes are this test binary, which runs hopwatch with this set.
	t.Setenv("HOPWATCH_TEST_RUN_MAIN", "1")
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "cluster", "--processes", "--kills=1", "--writes=10", "--dir=" + dir}, &stdout, &stderr)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	out := stdout.String()
	require.Regexp(t, `\| to the leader \| 10 \| [0-9.]+ \|`, out)
	require.Regexp(t, `\| to a follower \(forwarded to the leader\) \| 10 \| [0-9.]+ \|`, out)
	require.Regexp(t, `(?m)^\| 1 \| n[123] \| n[123] \| [0-9., ]* \| [0-9.]+ \| [0-9.]+ \| [0-9]+ \| [0-9.]+ \|$`, out)
	require.Contains(t, out, "leader failover (SIGKILL → a survivor committed a tenant PUT): median ")
	left, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, left, "the run's data directories are removed")
}

func TestBenchClusterArgs(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, run([]string{"bench", "cluster", "--processes", "--writes=0"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "with --processes, --writes must be positive")
}

func TestBenchRatelimitArgs(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, run([]string{"bench", "ratelimit", "--batch=0"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "limit, overload, batch and tenants must be positive")
}
