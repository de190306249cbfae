package raw

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestStoreTenantsAndDeletion(t *testing.T) {
	dir := t.TempDir()
	reg := prometheus.NewRegistry()
	opts := testOptions(dir)
	s, err := OpenStore(opts, reg, nil)
	require.NoError(t, err)
	batches := testBatches(t, 2, 2000, 500)
	for _, id := range []string{"a", "b"} {
		for _, b := range batches {
			_, err := s.Append(id, b)
			require.NoError(t, err)
		}
	}
	_, err = s.Append("../escape", batches[0])
	require.Error(t, err, "tenant IDs are validated before they become paths")
	require.Equal(t, expected(batches), readAll(t, s.DB("a")))

	n, err := testutil.GatherAndCount(reg, "hopwatch_raw_samples_appended_total")
	require.NoError(t, err)
	require.Equal(t, 2, n, "one series per tenant")

	require.NoError(t, s.DeleteTenant("a"))
	require.Nil(t, s.DB("a"))
	_, err = os.Stat(filepath.Join(dir, "a"))
	require.True(t, os.IsNotExist(err))
	n, err = testutil.GatherAndCount(reg, "hopwatch_raw_samples_appended_total")
	require.NoError(t, err)
	require.Equal(t, 1, n, "the deleted tenant's metrics are gone")

	// The tenant can come back, empty.
	_, err = s.Append("a", batches[0])
	require.NoError(t, err)
	require.Equal(t, expected(batches[:1]), readAll(t, s.DB("a")))
	require.NoError(t, s.Close())

	// Tenant b survives a reopen untouched.
	s, err = OpenStore(opts, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	defer s.Close()
	require.Equal(t, expected(batches), readAll(t, s.DB("b")))
}
