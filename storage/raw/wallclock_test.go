package raw

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

// One span dated 30 days ahead, or in 2262, must neither delete history by
// retention nor close the block range the wall clock is still in: both
// follow the time compaction is given, not the newest sample.
func TestFutureSamplesNeitherDeleteHistoryNorCloseRanges(t *testing.T) {
	dir := t.TempDir()
	opts := DefaultOptions() // 2 h blocks, 10 min out-of-order window, 15 d retention
	opts.Dir = dir
	opts.ChunkSize = 500
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)

	now := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	series := []sample.Series{
		{Key: "a", Labels: labels.FromStrings("service", "a")},
		{Key: "b", Labels: labels.FromStrings("service", "b")},
	}
	// Three days of history up to now, a sample a minute per series.
	var history []*sample.Batch
	for ts := now.Add(-72 * time.Hour); !ts.After(now); ts = ts.Add(time.Hour) {
		b := &sample.Batch{Series: series}
		for m := range 60 {
			at := ts.Add(time.Duration(m) * time.Minute)
			if at.After(now) {
				break
			}
			for s := range series {
				b.Samples = append(b.Samples, sample.Sample{Series: uint32(s), Start: at.UnixNano(), Duration: int64(1000 + m), TraceID: [16]byte{1, byte(m)}})
			}
		}
		history = append(history, b)
	}
	for _, b := range history {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	compactAt(t, db, now.UnixNano())
	require.NotEmpty(t, db.Blocks())

	// The future arrives: in a series with history and in a new one.
	future := &sample.Batch{Series: append(series, sample.Series{Key: "c", Labels: labels.FromStrings("service", "c")}), Samples: []sample.Sample{
		{Series: 0, Start: now.Add(30 * 24 * time.Hour).UnixNano(), Duration: 5, TraceID: [16]byte{2}},
		{Series: 1, Start: time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), Duration: 6, TraceID: [16]byte{3}},
		{Series: 2, Start: time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano(), Duration: 7, TraceID: [16]byte{4}},
	}}
	_, err = db.Append(future)
	require.NoError(t, err)
	all := append(append([]*sample.Batch{}, history...), future)

	check := func() {
		t.Helper()
		requireSamePoints(t, expected(all), readEverything(t, db))
		// The range the wall clock is in (and the one before it, within
		// the out-of-order window) stays open: no block reaches it.
		open := alignDown(now.Add(-opts.OutOfOrderWindow).UnixNano(), opts.BlockDuration.Nanoseconds())
		for _, m := range db.Blocks() {
			require.Less(t, m.MaxTime, open, "block %s", m.ULID)
		}
		require.Zero(t, testutil.ToFloat64(db.metrics.blocksDeleted))
	}
	for range 2 {
		compactAt(t, db, now.Add(time.Minute).UnixNano())
		check()
	}
	// And after a restart, replaying or loading the future samples.
	require.NoError(t, db.Close())
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	compactAt(t, db, now.Add(2*time.Minute).UnixNano())
	check()

	// Retention does apply by the wall clock: 16 days on, the history is
	// gone, and the future samples are still there.
	later := now.Add(16 * 24 * time.Hour)
	compactAt(t, db, later.UnixNano())
	require.Positive(t, testutil.ToFloat64(db.metrics.blocksDeleted))
	got := readEverything(t, db)
	for _, ps := range got {
		for _, p := range ps {
			require.GreaterOrEqual(t, p.t, later.Add(-opts.Retention).UnixNano()-opts.BlockDuration.Nanoseconds())
		}
	}
	require.Len(t, got[labels.FromStrings("service", "c").String()], 1)
}

// readEverything is readAll over every possible time.
func readEverything(t testing.TB, db *DB) map[string][]point {
	return readRange(t, db, math.MinInt64, math.MaxInt64)
}

// requireSamePoints is require.Equal for many points, with a short message.
func requireSamePoints(t testing.TB, want, got map[string][]point) {
	t.Helper()
	for k, ps := range want {
		require.Len(t, got[k], len(ps), "series %s", k)
		for i := range ps {
			require.Equal(t, ps[i], got[k][i], "series %s, point %d", k, i)
		}
	}
	require.Len(t, got, len(want))
}

// A sample stamped in the future moves its series' newest sample there;
// the out-of-order window must still count from the wall clock, or every
// later sample of the series would be refused as too old.
func TestFutureSampleDoesNotShutItsSeriesOut(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.OutOfOrderWindow = time.Minute
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	now := time.Date(2026, 12, 6, 5, 0, 0, 0, time.UTC)
	series := []sample.Series{{Key: "a", Labels: labels.FromStrings("service", "a")}}
	at := func(ts ...time.Time) *sample.Batch {
		b := &sample.Batch{Series: series}
		for i, x := range ts {
			b.Samples = append(b.Samples, sample.Sample{Start: x.UnixNano(), Duration: int64(i + 1), TraceID: [16]byte{1}})
		}
		return b
	}
	tooOld, err := db.Append(at(now.Add(-time.Second), now.Add(time.Duration(300)*24*time.Hour)))
	require.NoError(t, err)
	require.Zero(t, tooOld)
	compactAt(t, db, now.UnixNano())
	// Later samples, a few seconds on, within the window of the wall clock.
	tooOld, err = db.Append(at(now.Add(time.Second), now.Add(2*time.Second), now.Add(-30*time.Second)))
	require.NoError(t, err)
	require.Zero(t, tooOld, "the future sample does not make the present too old")
	// The window itself still holds.
	tooOld, err = db.Append(at(now.Add(-2 * time.Minute)))
	require.NoError(t, err)
	require.Equal(t, 1, tooOld)
	require.Len(t, readEverything(t, db)[series[0].Labels.String()], 5)
}
