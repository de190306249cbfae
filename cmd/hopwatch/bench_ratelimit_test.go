package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestBenchRatelimitProcessesRuns keeps `hopwatch bench ratelimit
// --processes` working: three node processes, then a fourth that joins
// and leaves, four 3 s phases. It asserts no accuracy figure (those depend
// on the machine; docs/BENCHMARKS.md has them), only that every phase is
// printed and that the ring changes moved the share of tenants jump
// hashing moves: a quarter of them (the sample of 10,000 lands within a
// few points of it).
func TestBenchRatelimitProcessesRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for about 14 s")
	}
	// The nodes are this test binary, which runs hopwatch with this set.
	t.Setenv("HOPWATCH_TEST_RUN_MAIN", "1")
	var stdout, stderr bytes.Buffer
	code := run([]string{"bench", "ratelimit", "--processes", "--phase=3s", "--limit=2000", "--batch=20"}, &stdout, &stderr)
	require.Equal(t, 0, code, "stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	out := stdout.String()
	t.Log("\n" + out)
	require.Regexp(t, `(?m)^70/20/10 +0s +[0-9]+ +[0-9]+ `, out)
	require.Regexp(t, `(?m)^10/20/70 +5s +[0-9]+ +[0-9]+ `, out)
	require.Regexp(t, `(?m)^70/20/10 +1 +[0-9.]+% +[0-9.]+% +[0-9.]+% +[0-9.]+%$`, out)
	require.Regexp(t, `(?m)^10/20/70 +1 +[0-9.]+% +[0-9.]+% +[0-9.]+% +[0-9.]+%$`, out)
	require.Regexp(t, `(?m)^node4 joins +1 +[0-9.]+% +[0-9.]+% +[0-9.]+% +[0-9.]+%$`, out)
	require.Regexp(t, `(?m)^node4 leaves +1 +[0-9.]+% +[0-9.]+% +[0-9.]+% +[0-9.]+%$`, out)
	require.Regexp(t, `(?m)^node4 process added at the end of the ring +3 -> 4 members: +2[3-7]\.[0-9]% moved \(ideal 25\.0%\)$`, out)
	require.Regexp(t, `(?m)^node4 process removed \(the last of the ring\) +4 -> 3 members: +2[3-7]\.[0-9]% moved \(ideal 25\.0%\)$`, out)
}

func TestBenchRatelimitProcessesArgs(t *testing.T) {
	var stdout, stderr bytes.Buffer
	require.Equal(t, 1, run([]string{"bench", "ratelimit", "--processes", "--phase=2s"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "with --processes, --phase must be at least 3s")
	stderr.Reset()
	require.Equal(t, 1, run([]string{"bench", "ratelimit", "node", "--id=a", "--members=b=127.0.0.1:1"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), `--id "a" is not in --members`)
}
