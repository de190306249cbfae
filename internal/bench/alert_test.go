package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// TestAlertBenchRuns runs the alert benchmark once, with a short warm-up,
// against a real Alertmanager, to keep `hopwatch bench alert` working:
// both alerts must reach Alertmanager and its webhook. It asserts no
// delay; figures come from the command.
func TestAlertBenchRuns(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	o := DefaultAlertOptions()
	o.Alertmanager = alertmanagerBinary(t)
	o.Runs, o.WarmUp, o.Timeout = 1, 6*time.Second, 20*time.Second
	var out bytes.Buffer
	res, err := Alert(context.Background(), &out, o, nil)
	require.NoError(t, err, out.String())
	require.Len(t, res.Runs, 1)
	r := res.Runs[0]
	for name, a := range map[string]AlertTiming{"raw": r.Raw, "window": r.Window} {
		require.True(t, a.Fired, "%s rule at Alertmanager\n%s", name, out.String())
		require.True(t, a.Hooked, "%s rule at the webhook\n%s", name, out.String())
		require.Positive(t, a.Crossing, name)
	}
	require.Contains(t, out.String(), "| 1 | window |")
}

// alertmanagerBinary is $HOPWATCH_ALERTMANAGER (scripts/test builds
// Alertmanager v0.31.1 and sets it), else an Alertmanager on the machine.
func alertmanagerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HOPWATCH_ALERTMANAGER"); p != "" {
		return p
	}
	if p := DefaultAlertOptions().Alertmanager; fileExists(p) {
		return p
	}
	p, err := exec.LookPath("alertmanager")
	require.NoError(t, err, "no Alertmanager: run the tests with scripts/test (it builds one) or set HOPWATCH_ALERTMANAGER")
	return p
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
