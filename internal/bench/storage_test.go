package bench

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStorageBenchRuns runs the storage benchmark small, to keep the
// command working; figures come from `hopwatch bench storage`.
func TestStorageBenchRuns(t *testing.T) {
	var out bytes.Buffer
	o := DefaultStorageOptions()
	o.Samples, o.Runs = 20_000, 1
	res, err := Storage(&out, o)
	require.NoError(t, err)
	require.Len(t, res, 4)
	for _, r := range res {
		require.Positive(t, r.Hopwatch)
		require.Less(t, r.Hopwatch, 16.0, r.Dataset)
	}
	require.Contains(t, out.String(), "| D1 |")
}
