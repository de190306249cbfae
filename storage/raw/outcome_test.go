package raw

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

// TestFailedAppendCountsNothing: an append whose WAL write fails keeps
// nothing, and counts nothing either: its samples too old for the
// out-of-order window are counted when the retry is kept, once.
func TestFailedAppendCountsNothing(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.OutOfOrderWindow = time.Minute
	db, err := Open(opts, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	defer db.Close()
	l := labels.FromStrings("service", "a")
	base := int64(1_800_000_000_000_000_000)
	batch := func() *sample.Batch {
		return &sample.Batch{Series: []sample.Series{{Family: sample.FamilySpan, Key: "a", Labels: l}}, Samples: []sample.Sample{
			{Start: base, Duration: 5},
			{Start: base - int64(2*time.Minute), Duration: 7}, // too old
		}}
	}
	_, err = db.Append(&sample.Batch{Series: batch().Series, Samples: batch().Samples[:1]})
	require.NoError(t, err)

	db.commit.mtx.Lock()
	db.commit.failed = errors.New("disk gone")
	db.commit.mtx.Unlock()
	_, err = db.Append(batch())
	require.Error(t, err)
	require.Zero(t, testutil.ToFloat64(db.metrics.tooOld), "a batch not kept counts nothing")
	require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.appended))

	db.commit.mtx.Lock()
	db.commit.failed = nil
	db.commit.mtx.Unlock()
	tooOld, err := db.Append(batch())
	require.NoError(t, err)
	require.Equal(t, 1, tooOld)
	require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.tooOld), "counted once, when kept")
}
