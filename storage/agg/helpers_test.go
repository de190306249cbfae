package agg

import (
	"context"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

const testTenant = "team-a"

var (
	seriesA = labels.FromStrings("service", "api", "span_name", "GET /users")
	seriesB = labels.FromStrings("service", "db", "span_name", "SELECT users")
	seriesC = labels.FromStrings("service", "cache", "span_name", "GET")
)

// base is the wall-clock time the tests pretend it is. It lies in the past,
// so Flush never checkpoints on its own (the last checkpoint is "now" at
// Open): tests checkpoint explicitly where they mean to.
var base = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// obs is one latency sample as a test appends it.
type obs struct {
	lset  labels.Labels
	start int64 // Unix ns
	dur   int64 // ns
	trace [16]byte
}

func traceID(b byte) [16]byte {
	var id [16]byte
	for i := range id {
		id[i] = b + byte(i)
	}
	return id
}

// batchOf builds the batch ingest would hand over for these samples.
func batchOf(os []obs) *sample.Batch {
	var b sample.Batch
	idx := map[string]uint32{}
	for _, o := range os {
		key := o.lset.String()
		i, ok := idx[key]
		if !ok {
			i = uint32(len(b.Series))
			idx[key] = i
			b.Series = append(b.Series, sample.Series{Key: key, Labels: o.lset})
		}
		b.Samples = append(b.Samples, sample.Sample{Series: i, Start: o.start, Duration: o.dur, TraceID: o.trace})
	}
	return &b
}

// genObs returns n samples spread over the given series with durations from
// 0.5 ms to ~30 s, deterministic in seed.
func genObs(seed int64, n int, series ...labels.Labels) []obs {
	out := make([]obs, n)
	for i := range out {
		k := seed*7919 + int64(i)*104729
		out[i] = obs{
			lset:  series[int(k)%len(series)],
			start: base.Add(-time.Minute).UnixNano() + k%1_000_000_000,
			dur:   500_000 + (k*k)%30_000_000_000/(1+k%97),
			trace: traceID(byte(k)),
		}
	}
	return out
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func testOptions(dir string) Options {
	opts := DefaultOptions()
	opts.Dir = dir
	return opts
}

// openStore opens a store with a fresh registry (a TSDB registers its
// metrics once per registry) and closes it when the test ends unless the
// test closed it or crashed it.
func openStore(t *testing.T, opts Options) (*Store, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := Open(opts, reg, testLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s, reg
}

func appendObs(t *testing.T, s *Store, os []obs) {
	t.Helper()
	require.NoError(t, s.Append(context.Background(), testTenant, batchOf(os)))
}

// crash abandons a store as a killed process would: no checkpoint, no
// padding of the WAL's last page. Only the TSDB is closed, to release its
// directory lock; the WAL (which takes no lock) stays open until the test
// ends, so that nothing more is written to its files before the reopen.
func crash(t *testing.T, s *Store) {
	t.Helper()
	s.mtx.Lock()
	s.closed = true
	s.mtx.Unlock()
	for _, ts := range s.snapshotTenants() {
		require.NoError(t, ts.db.Close())
		w := ts.wal
		t.Cleanup(func() { _ = w.Close() })
	}
}

func walDir(opts Options, tenantID string) string {
	return filepath.Join(opts.Dir, "tenants", tenantID, "wal")
}

// lastSegment returns the path of the newest WAL segment holding data.
func lastSegment(t *testing.T, opts Options, tenantID string) string {
	t.Helper()
	dir := walDir(opts, tenantID)
	lo, hi, err := wlog.Segments(dir)
	require.NoError(t, err)
	for i := hi; i >= lo; i-- {
		fi, err := os.Stat(wlog.SegmentName(dir, i))
		require.NoError(t, err)
		if fi.Size() > 0 {
			return wlog.SegmentName(dir, i)
		}
	}
	t.Fatalf("no WAL segment with data in %s", dir)
	return ""
}

type fpoint struct {
	T int64
	V float64
}

type hpoint struct {
	T int64
	H *histogram.Histogram
}

// matchers selects exactly the series of metric name for lset, plus the
// extra label pairs.
func matchers(name string, lset labels.Labels, extra ...string) []*labels.Matcher {
	ms := []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, name)}
	lset.Range(func(l labels.Label) {
		ms = append(ms, labels.MustNewMatcher(labels.MatchEqual, l.Name, l.Value))
	})
	for i := 0; i+1 < len(extra); i += 2 {
		ms = append(ms, labels.MustNewMatcher(labels.MatchEqual, extra[i], extra[i+1]))
	}
	return ms
}

// selectSeries returns every series matching ms with its float and
// histogram samples, keyed by the series' labels.
func selectSeries(t *testing.T, db *tsdb.DB, ms ...*labels.Matcher) (map[string][]fpoint, map[string][]hpoint) {
	t.Helper()
	q, err := db.Querier(math.MinInt64, math.MaxInt64)
	require.NoError(t, err)
	defer q.Close()
	floats, hists := map[string][]fpoint{}, map[string][]hpoint{}
	ss := q.Select(context.Background(), true, nil, ms...)
	var it chunkenc.Iterator
	for ss.Next() {
		key := ss.At().Labels().String()
		it = ss.At().Iterator(it)
		for vt := it.Next(); vt != chunkenc.ValNone; vt = it.Next() {
			switch vt {
			case chunkenc.ValFloat:
				ts, v := it.At()
				floats[key] = append(floats[key], fpoint{ts, v})
			case chunkenc.ValHistogram:
				ts, h := it.AtHistogram(nil)
				hists[key] = append(hists[key], hpoint{ts, h})
			default:
				t.Fatalf("series %s: unexpected value type %v", key, vt)
			}
		}
		require.NoError(t, it.Err())
	}
	require.NoError(t, ss.Err())
	return floats, hists
}

// floatPoints returns the samples of the one float series matching.
func floatPoints(t *testing.T, db *tsdb.DB, name string, lset labels.Labels, extra ...string) []fpoint {
	t.Helper()
	floats, hists := selectSeries(t, db, matchers(name, lset, extra...)...)
	require.Empty(t, hists)
	require.Len(t, floats, 1, "series %s%s %v", name, lset, extra)
	for _, ps := range floats {
		return ps
	}
	return nil
}

// histPoints returns the samples of the one native histogram series matching.
func histPoints(t *testing.T, db *tsdb.DB, name string, lset labels.Labels) []hpoint {
	t.Helper()
	floats, hists := selectSeries(t, db, matchers(name, lset)...)
	require.Empty(t, floats)
	require.Len(t, hists, 1, "series %s%s", name, lset)
	for _, ps := range hists {
		return ps
	}
	return nil
}

func floatAt(t *testing.T, ps []fpoint, ts int64) float64 {
	t.Helper()
	for _, p := range ps {
		if p.T == ts {
			return p.V
		}
	}
	t.Fatalf("no sample at %d in %v", ts, ps)
	return 0
}

func histAt(t *testing.T, ps []hpoint, ts int64) *histogram.Histogram {
	t.Helper()
	for _, p := range ps {
		if p.T == ts {
			return p.H
		}
	}
	t.Fatalf("no histogram sample at %d", ts)
	return nil
}

type seriesWant struct {
	lset labels.Labels
	durs []int64 // in the order appended
}

func groupObs(os []obs) []seriesWant {
	var out []seriesWant
	idx := map[string]int{}
	for _, o := range os {
		key := o.lset.String()
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, seriesWant{lset: o.lset})
		}
		out[i].durs = append(out[i].durs, o.dur)
	}
	return out
}

// requireAggregates checks that the flush at ts wrote exactly the aggregates
// of os: calls, _count, exact _sum, cumulative _bucket per le, and the native
// histogram's count, sum and every bucket, computed here from the raw
// durations rather than by the code under test. The series in empty exist
// with no samples (all zero).
func requireAggregates(t *testing.T, s *Store, tenantID string, ts int64, os []obs, empty ...labels.Labels) {
	t.Helper()
	db := s.DB(tenantID)
	require.NotNil(t, db)
	want := groupObs(os)
	for _, l := range empty {
		want = append(want, seriesWant{lset: l})
	}
	floats, _ := selectSeries(t, db, labels.MustNewMatcher(labels.MatchEqual, model.MetricNameLabel, MetricCalls))
	require.Len(t, floats, len(want), "calls_total series")
	for _, w := range want {
		n := float64(len(w.durs))
		var sumNs int64
		var sumSec float64
		for _, d := range w.durs {
			sumNs += d
			sumSec += float64(d) / 1e9
		}
		require.Equal(t, n, floatAt(t, floatPoints(t, db, MetricCalls, w.lset), ts), "calls %s", w.lset)
		if s.opts.ClassicHistograms {
			require.Equal(t, n, floatAt(t, floatPoints(t, db, MetricLatency+"_count", w.lset), ts), "_count %s", w.lset)
			require.Equal(t, float64(sumNs)/1e9, floatAt(t, floatPoints(t, db, MetricLatency+"_sum", w.lset), ts), "_sum %s", w.lset)
			for _, b := range append(s.opts.ClassicBuckets[:len(s.opts.ClassicBuckets):len(s.opts.ClassicBuckets)], math.Inf(1)) {
				var cum float64
				for _, d := range w.durs {
					if float64(d)/1e9 <= b {
						cum++
					}
				}
				le := strconv.FormatFloat(b, 'g', -1, 64)
				require.Equal(t, cum, floatAt(t, floatPoints(t, db, MetricLatency+"_bucket", w.lset, "le", le), ts), "_bucket{le=%q} %s", le, w.lset)
			}
		}
		if s.opts.NativeHistograms {
			h := histAt(t, histPoints(t, db, MetricLatency, w.lset), ts)
			require.Equal(t, s.opts.NativeSchema, h.Schema)
			require.Equal(t, uint64(len(w.durs)), h.Count, "native count %s", w.lset)
			require.Equal(t, sumSec, h.Sum, "native sum %s", w.lset)
			require.Zero(t, h.ZeroCount)
			var inBuckets uint64
			for it := h.PositiveBucketIterator(); it.Next(); {
				bkt := it.At()
				var c uint64
				for _, d := range w.durs {
					if v := float64(d) / 1e9; v > bkt.Lower && v <= bkt.Upper {
						c++
					}
				}
				require.Equal(t, c, bkt.Count, "native bucket (%g, %g] of %s", bkt.Lower, bkt.Upper, w.lset)
				inBuckets += bkt.Count
			}
			require.Equal(t, h.Count, inBuckets, "native buckets of %s", w.lset)
		}
	}
}
