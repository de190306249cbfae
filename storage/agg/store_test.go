package agg

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/crc32"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

func TestFlushWritesExactSpanMetrics(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, _ := openStore(t, opts)

	start := base.Add(-30 * time.Second).UnixNano()
	first := []obs{
		{seriesA, start, 1_000_000, traceID(1)},          // le 0.002
		{seriesA, start + 1, 2_000_000, traceID(2)},      // exactly on 0.002: bounds are inclusive
		{seriesA, start + 2, 20_000_000_000, traceID(3)}, // beyond 16.384: +Inf only; the slowest
		{seriesA, start + 3, 500_000_000, traceID(4)},    // a native bucket bound (2^-1)
		{seriesA, start + 4, 1_000_000_000, traceID(5)},  // a native bucket bound (2^0)
		{seriesA, start + 5, 3_000_000, traceID(6)},
		{seriesB, start + 6, 100_000_000, traceID(7)},
		{seriesB, start + 7, 123_456_789, traceID(8)}, // the slowest of B
	}
	appendObs(t, s, first)
	now := base
	require.NoError(t, s.Flush(context.Background(), now))
	ts := now.UnixMilli()
	requireAggregates(t, s, testTenant, ts, first)

	db := s.DB(testTenant)
	// A new series starts at zero one millisecond before its first value.
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 6}}, floatPoints(t, db, MetricCalls, seriesA))
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 2}}, floatPoints(t, db, MetricCalls, seriesB))
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 3}}, floatPoints(t, db, MetricLatency+"_bucket", seriesA, "le", "0.004"))
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 21.506}}, floatPoints(t, db, MetricLatency+"_sum", seriesA))
	hs := histPoints(t, db, MetricLatency, seriesA)
	require.Len(t, hs, 2)
	require.Equal(t, ts-1, hs[0].T)
	require.Zero(t, hs[0].H.Count)

	// The exemplar is the slowest sample's, on the classic bucket it fell in
	// and on the native histogram.
	eq, err := db.ExemplarQuerier(context.Background())
	require.NoError(t, err)
	requireExemplar := func(lset labels.Labels, want obs, wantLe string) {
		t.Helper()
		res, err := eq.Select(math.MinInt64, math.MaxInt64, []*labels.Matcher{
			labels.MustNewMatcher(labels.MatchRegexp, model.MetricNameLabel, MetricLatency+"(_bucket)?"),
			labels.MustNewMatcher(labels.MatchEqual, "service", lset.Get("service")),
		})
		require.NoError(t, err)
		require.Len(t, res, 2, "%v", res)
		for _, r := range res {
			if r.SeriesLabels.Get(model.MetricNameLabel) == MetricLatency+"_bucket" {
				require.Equal(t, wantLe, r.SeriesLabels.Get("le"))
			} else {
				require.Equal(t, MetricLatency, r.SeriesLabels.Get(model.MetricNameLabel))
			}
			require.Len(t, r.Exemplars, 1)
			ex := r.Exemplars[0]
			require.Equal(t, labels.FromStrings("trace_id", hex.EncodeToString(want.trace[:])), ex.Labels)
			require.Equal(t, float64(want.dur)/1e9, ex.Value)
			require.True(t, ex.HasTs)
			require.Equal(t, (want.start+want.dur)/1e6, ex.Ts)
		}
	}
	requireExemplar(seriesA, first[2], "+Inf")
	requireExemplar(seriesB, first[7], "0.128")

	// A later flush carries on cumulatively without another zero, and picks
	// the slowest sample since the previous flush as the next exemplar.
	// Exemplars of a series must come in time order: start after the last.
	start2 := base.Add(-5 * time.Second).UnixNano()
	second := []obs{
		{seriesA, start2, 4_000_000, traceID(9)},
		{seriesC, start2 + 1, 70_000_000, traceID(10)},
	}
	appendObs(t, s, second)
	now2 := now.Add(15 * time.Second)
	require.NoError(t, s.Flush(context.Background(), now2))
	ts2 := now2.UnixMilli()
	requireAggregates(t, s, testTenant, ts2, append(first, second...))
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 6}, {ts2, 7}}, floatPoints(t, db, MetricCalls, seriesA))
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 2}, {ts2, 2}}, floatPoints(t, db, MetricCalls, seriesB))
	require.Equal(t, []fpoint{{ts2 - 1, 0}, {ts2, 1}}, floatPoints(t, db, MetricCalls, seriesC))
	res, err := eq.Select(math.MinInt64, math.MaxInt64, matchers(MetricLatency, seriesA))
	require.NoError(t, err)
	require.Len(t, res, 1)
	require.Len(t, res[0].Exemplars, 2)
	require.Equal(t, hex.EncodeToString(second[0].trace[:]), res[0].Exemplars[1].Labels.Get("trace_id"))
}

func TestFlushTwiceInOneMillisecondAdvancesTheTimestamp(t *testing.T) {
	s, _ := openStore(t, testOptions(t.TempDir()))
	os := []obs{{seriesA, base.UnixNano(), 5_000_000, traceID(1)}}
	appendObs(t, s, os)
	require.NoError(t, s.Flush(context.Background(), base))
	appendObs(t, s, os)
	require.NoError(t, s.Flush(context.Background(), base))
	ts := base.UnixMilli()
	require.Equal(t, []fpoint{{ts - 1, 0}, {ts, 1}, {ts + 1, 2}}, floatPoints(t, s.DB(testTenant), MetricCalls, seriesA))
}

func TestSumIsExactBeyond64Bits(t *testing.T) {
	s, _ := openStore(t, testOptions(t.TempDir()))
	sr := s.layout.newSeries(0, "k", seriesA, sample.FamilySpan)
	for range 3 {
		sr.observe(&s.layout, math.MaxInt64, 0, nil, false)
	}
	require.Equal(t, uint64(1), sr.sumHi)
	require.Equal(t, 3*float64(math.MaxInt64)/1e9, sr.sumSeconds())
	require.Equal(t, uint64(3), sr.classic[len(sr.classic)-1])
}

func TestNewSeriesOfOneBatchGetDistinctRefs(t *testing.T) {
	s, _ := openStore(t, testOptions(t.TempDir()))
	appendObs(t, s, genObs(1, 30, seriesA, seriesB, seriesC))
	appendObs(t, s, genObs(2, 30, seriesA, labels.FromStrings("service", "new1"), labels.FromStrings("service", "new2")))
	ts, err := s.tenant(testTenant)
	require.NoError(t, err)
	refs := map[uint64]string{}
	for key, sr := range ts.series {
		require.NotContains(t, refs, sr.ref, "series %s and %s share a ref", key, refs[sr.ref])
		refs[sr.ref] = key
	}
	require.Len(t, refs, 5)
	require.Equal(t, uint64(5), ts.nextRef)
}

// TestRecovery appends, stops in some way and reopens: the aggregates of the
// reopened store are exactly those of everything acknowledged.
func TestRecovery(t *testing.T) {
	f := func(t *testing.T, stop func(t *testing.T, s *Store), midCheckpoint, midFlush bool) {
		opts := testOptions(t.TempDir())
		opts.WALSegmentSize = 64 << 10 // several segments to replay
		s, _ := openStore(t, opts)
		var all []obs
		for i := range 40 {
			os := genObs(int64(i), 512, seriesA, seriesB, seriesC, labels.FromStrings("service", "batch", "n", string(rune('a'+i%26))))
			appendObs(t, s, os)
			all = append(all, os...)
			if i == 20 && midCheckpoint {
				ts, err := s.tenant(testTenant)
				require.NoError(t, err)
				require.NoError(t, ts.checkpoint(base))
				lo, _, err := wlog.Segments(walDir(opts, testTenant))
				require.NoError(t, err)
				require.Positive(t, lo, "the checkpoint deletes the segments it covers")
			}
			if i == 30 && midFlush {
				require.NoError(t, s.Flush(context.Background(), base))
			}
		}
		_, hi, err := wlog.Segments(walDir(opts, testTenant))
		require.NoError(t, err)
		require.Greater(t, hi, 2)
		stop(t, s)

		s2, _ := openStore(t, opts)
		now := base.Add(time.Minute)
		require.NoError(t, s2.Flush(context.Background(), now))
		requireAggregates(t, s2, testTenant, now.UnixMilli(), all)

		calls := floatPoints(t, s2.DB(testTenant), MetricCalls, seriesA)
		if midFlush {
			// The series was created before the crash: no second zero.
			require.Len(t, calls, 3)
			require.Equal(t, fpoint{base.UnixMilli() - 1, 0}, calls[0])
		} else {
			require.Equal(t, fpoint{now.UnixMilli() - 1, 0}, calls[0])
			require.Len(t, calls, 2)
		}

		// And once more: what the second store appended survives too.
		more := genObs(99, 100, seriesA, seriesC)
		appendObs(t, s2, more)
		all = append(all, more...)
		stop(t, s2)
		s3, _ := openStore(t, opts)
		now = now.Add(time.Minute)
		require.NoError(t, s3.Flush(context.Background(), now))
		requireAggregates(t, s3, testTenant, now.UnixMilli(), all)
	}
	crashStop := func(t *testing.T, s *Store) { crash(t, s) }
	closeStop := func(t *testing.T, s *Store) { require.NoError(t, s.Close()) }

	t.Run("crash", func(t *testing.T) { f(t, crashStop, false, false) })
	t.Run("crash after checkpoint", func(t *testing.T) { f(t, crashStop, true, false) })
	t.Run("crash after flush", func(t *testing.T) { f(t, crashStop, false, true) })
	t.Run("crash after checkpoint and flush", func(t *testing.T) { f(t, crashStop, true, true) })
	t.Run("close", func(t *testing.T) { f(t, closeStop, false, false) })
	t.Run("close after checkpoint and flush", func(t *testing.T) { f(t, closeStop, true, true) })
}

func TestTornWALTailIsRepaired(t *testing.T) {
	f := func(t *testing.T, damage func(t *testing.T, seg string), keepSecond bool) {
		opts := testOptions(t.TempDir())
		s, _ := openStore(t, opts)
		first := genObs(1, 300, seriesA, seriesB)
		second := genObs(2, 300, seriesA, seriesB, seriesC)
		appendObs(t, s, first)
		appendObs(t, s, second)
		crash(t, s)
		damage(t, lastSegment(t, opts, testTenant))

		s2, reg := openStore(t, opts)
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP hopwatch_ingest_wal_repairs_total Corrupt ingest WAL tails truncated at the last good record on replay.
# TYPE hopwatch_ingest_wal_repairs_total counter
hopwatch_ingest_wal_repairs_total 1
`), "hopwatch_ingest_wal_repairs_total"))
		kept := first
		var empty []labels.Labels
		if keepSecond {
			kept = append(kept, second...)
		} else {
			// The second batch was logged as two records: the series
			// record of seriesC, intact, and the torn samples record.
			empty = append(empty, seriesC)
		}
		now := base
		require.NoError(t, s2.Flush(context.Background(), now))
		requireAggregates(t, s2, testTenant, now.UnixMilli(), kept, empty...)

		third := genObs(3, 300, seriesA, seriesC)
		appendObs(t, s2, third)
		kept = append(kept, third...)
		crash(t, s2)

		s3, reg := openStore(t, opts)
		require.Equal(t, 0.0, testutil.ToFloat64(s3.metrics.walRepairs))
		require.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP hopwatch_ingest_wal_repairs_total Corrupt ingest WAL tails truncated at the last good record on replay.
# TYPE hopwatch_ingest_wal_repairs_total counter
hopwatch_ingest_wal_repairs_total 0
`), "hopwatch_ingest_wal_repairs_total"))
		now = now.Add(time.Minute)
		require.NoError(t, s3.Flush(context.Background(), now))
		requireAggregates(t, s3, testTenant, now.UnixMilli(), kept)
	}
	t.Run("garbage appended", func(t *testing.T) {
		f(t, func(t *testing.T, seg string) {
			fh, err := os.OpenFile(seg, os.O_APPEND|os.O_WRONLY, 0)
			require.NoError(t, err)
			_, err = fh.Write([]byte("\xff\xfe garbage from a dying disk \xde\xad\xbe\xef"))
			require.NoError(t, err)
			require.NoError(t, fh.Close())
		}, true)
	})
	t.Run("truncated mid-record", func(t *testing.T) {
		f(t, func(t *testing.T, seg string) {
			fi, err := os.Stat(seg)
			require.NoError(t, err)
			require.NoError(t, os.Truncate(seg, fi.Size()-50))
		}, false)
	})
	t.Run("last record flipped", func(t *testing.T) {
		f(t, func(t *testing.T, seg string) {
			b, err := os.ReadFile(seg)
			require.NoError(t, err)
			b[len(b)-10] ^= 0x55
			require.NoError(t, os.WriteFile(seg, b, 0o644))
		}, false)
	})
}

func TestCorruptCheckpointFailsOpenWithAdvice(t *testing.T) {
	f := func(t *testing.T, damage func(b []byte) []byte) {
		opts := testOptions(t.TempDir())
		s, err := Open(opts, prometheus.NewRegistry(), testLogger(t))
		require.NoError(t, err)
		appendObs(t, s, genObs(1, 100, seriesA, seriesB))
		require.NoError(t, s.Close())

		path := filepath.Join(opts.Dir, "tenants", testTenant, "checkpoint")
		b, err := os.ReadFile(path)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(path, damage(b), 0o644))

		_, err = Open(opts, prometheus.NewRegistry(), testLogger(t))
		require.ErrorIs(t, err, errCorruptCheckpoint)
		require.ErrorContains(t, err, path)
		require.ErrorContains(t, err, "move it aside")

		// Following the advice works: the tenant starts from its WAL alone,
		// and Open released everything it opened before failing.
		require.NoError(t, os.Rename(path, path+".bad"))
		s2, _ := openStore(t, opts)
		require.Equal(t, []string{testTenant}, s2.Tenants())
	}
	withCRC := func(b []byte) []byte { return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)) }
	for name, damage := range map[string]func([]byte) []byte{
		"empty":          func([]byte) []byte { return nil },
		"bad magic":      func(b []byte) []byte { b[0] = 'X'; return b },
		"bit flip":       func(b []byte) []byte { b[len(b)/2] ^= 1; return b },
		"truncated":      func(b []byte) []byte { return b[:len(b)-7] },
		"garbage":        func([]byte) []byte { return []byte("HWAGGCP2 and then some nonsense") },
		"valid checksum": func(b []byte) []byte { return withCRC(append([]byte(nil), b[:len(b)-20]...)) },
		"huge count": func([]byte) []byte {
			return withCRC([]byte(checkpointMagic + "\x00\x00\x00\x00\x00\xff\xff\xff\xff\x0f"))
		},
	} {
		t.Run(name, func(t *testing.T) { f(t, damage) })
	}
}

// TestHistogramLayoutChange reopens with another bucket layout. Observed:
// Open succeeds and logs a warning; every series restarts from zero — its
// calls, _count, _sum and native histogram as well as the buckets (a counter
// reset for rate()) — and counts only what is appended after the reopen.
// The series count as created, so the buckets new to the layout get no zero
// sample before their first value.
func TestHistogramLayoutChange(t *testing.T) {
	f := func(t *testing.T, change func(*Options)) {
		opts := testOptions(t.TempDir())
		s, err := Open(opts, prometheus.NewRegistry(), testLogger(t))
		require.NoError(t, err)
		before := genObs(1, 200, seriesA, seriesB)
		appendObs(t, s, before)
		require.NoError(t, s.Flush(context.Background(), base))
		nA := float64(len(groupObs(before)[0].durs))
		require.NoError(t, s.Close())

		change(&opts)
		s2, _ := openStore(t, opts)
		now := base.Add(time.Minute)
		require.NoError(t, s2.Flush(context.Background(), now))
		db := s2.DB(testTenant)
		require.Equal(t, []fpoint{{base.UnixMilli() - 1, 0}, {base.UnixMilli(), nA}, {now.UnixMilli(), 0}},
			floatPoints(t, db, MetricCalls, seriesA))
		require.Zero(t, histAt(t, histPoints(t, db, MetricLatency, seriesA), now.UnixMilli()).Count)

		after := genObs(2, 50, seriesA, seriesB, seriesC)
		appendObs(t, s2, after)
		now = now.Add(time.Minute)
		require.NoError(t, s2.Flush(context.Background(), now))
		requireAggregates(t, s2, testTenant, now.UnixMilli(), after)
	}
	t.Run("classic buckets", func(t *testing.T) {
		f(t, func(o *Options) { o.ClassicBuckets = []float64{0.01, 0.1, 1, 10} })
	})
	t.Run("native schema", func(t *testing.T) {
		f(t, func(o *Options) { o.NativeSchema = 3 })
	})
}

func TestOptionsValidate(t *testing.T) {
	f := func(mutate func(*Options), want ...string) {
		t.Helper()
		opts := DefaultOptions()
		mutate(&opts)
		err := opts.Validate()
		if len(want) == 0 {
			require.NoError(t, err)
			return
		}
		require.Error(t, err)
		for _, w := range want {
			require.ErrorContains(t, err, w)
		}
		_, err = Open(opts, nil, nil)
		require.ErrorContains(t, err, "invalid options")
		require.ErrorContains(t, err, want[0])
	}
	f(func(*Options) {})
	f(func(o *Options) { o.ClassicHistograms = false; o.ClassicBuckets = nil })
	f(func(o *Options) { o.MaxExemplars = 0 })
	f(func(o *Options) { o.Dir = "" }, "Dir")
	f(func(o *Options) { o.Retention = 0 }, "Retention")
	f(func(o *Options) { o.Retention = -time.Hour }, "Retention", "-1h")
	f(func(o *Options) { o.ClassicHistograms, o.NativeHistograms = false, false }, "ClassicHistograms", "NativeHistograms")
	f(func(o *Options) { o.ClassicBuckets = nil }, "ClassicBuckets")
	f(func(o *Options) { o.ClassicBuckets = []float64{0, 1} }, "ClassicBuckets[0]", "positive")
	f(func(o *Options) { o.ClassicBuckets = []float64{1, math.Inf(1)} }, "ClassicBuckets[1]", "finite")
	f(func(o *Options) { o.ClassicBuckets = []float64{math.NaN()} }, "ClassicBuckets[0]")
	f(func(o *Options) { o.ClassicBuckets = []float64{1, 2, 2} }, "ClassicBuckets[2]", "increase")
	f(func(o *Options) { o.NativeSchema = 9 }, "NativeSchema 9")
	f(func(o *Options) { o.NativeSchema = -5 }, "NativeSchema -5")
	f(func(o *Options) { o.ExemplarLabel = "" }, "ExemplarLabel")
	f(func(o *Options) { o.ExemplarLabel = "trace-id" }, "ExemplarLabel", "trace-id")
	f(func(o *Options) { o.MaxExemplars = -1 }, "MaxExemplars")
	f(func(o *Options) { o.CheckpointInterval = 0 }, "CheckpointInterval")
	f(func(o *Options) { o.WALSegmentSize = 32 << 10 }, "WALSegmentSize")
	f(func(o *Options) { o.WALSegmentSize = 100 << 10 }, "WALSegmentSize")

	t.Run("all problems at once", func(t *testing.T) {
		opts := Options{ClassicHistograms: true, ClassicBuckets: []float64{-1}, NativeSchema: 42, MaxExemplars: -3, ExemplarLabel: "0x"}
		err := opts.Validate()
		for _, field := range []string{"Dir", "Retention", "ClassicBuckets[0]", "NativeSchema", "ExemplarLabel", "MaxExemplars", "CheckpointInterval", "WALSegmentSize"} {
			require.ErrorContains(t, err, field)
		}
		var joined interface{ Unwrap() []error }
		require.True(t, errors.As(err, &joined))
		require.Len(t, joined.Unwrap(), 8)
	})
}

func TestAppendRefusesBadTenantAndClosedStore(t *testing.T) {
	opts := testOptions(t.TempDir())
	s, err := Open(opts, nil, nil)
	require.NoError(t, err)
	require.Error(t, s.Append(context.Background(), "../escape", batchOf(genObs(1, 1, seriesA))))
	require.Empty(t, s.Tenants())
	require.NoError(t, s.Close())
	require.ErrorIs(t, s.Append(context.Background(), testTenant, batchOf(genObs(1, 1, seriesA))), errClosed)
	require.NoError(t, s.Close())
}

func TestZeroTraceIDIsNoExemplar(t *testing.T) {
	s, _ := openStore(t, testOptions(t.TempDir()))
	start := base.Add(-10 * time.Second).UnixNano()
	// The slowest sample has no trace (all-zero id); the exemplar is the
	// slowest sample that has one.
	appendObs(t, s, []obs{
		{seriesA, start, 5_000_000, traceID(1)},
		{seriesA, start + 1, 9_000_000, [16]byte{}},
	})
	require.NoError(t, s.Flush(context.Background(), base))
	eq, err := s.DB(testTenant).ExemplarQuerier(context.Background())
	require.NoError(t, err)
	res, err := eq.Select(0, math.MaxInt64, []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, MetricLatency+"_bucket")})
	require.NoError(t, err)
	require.NotEmpty(t, res)
	for _, r := range res {
		for _, ex := range r.Exemplars {
			require.Equal(t, hex.EncodeToString(func() []byte { id := traceID(1); return id[:] }()), ex.Labels.Get("trace_id"))
		}
	}
}
