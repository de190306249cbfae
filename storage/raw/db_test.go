package raw

import (
	"bufio"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

func testOptions(dir string) Options {
	o := DefaultOptions()
	o.Dir = dir
	o.ChunkSize = 1000
	o.WALSegmentSize = 128 << 10
	return o
}

// testBatches splits n samples of dataset D1 over nSeries series into
// batches of size batch, with distinct trace ids.
func testBatches(t testing.TB, nSeries, n, batch int) []*sample.Batch {
	ds, err := dataset.Generate(dataset.D1, n, 11)
	require.NoError(t, err)
	var series []sample.Series
	for i := range nSeries {
		l := labels.FromStrings("service", "svc", "span_name", fmt.Sprintf("op-%d", i))
		series = append(series, sample.Series{Key: l.String(), Labels: l})
	}
	var out []*sample.Batch
	for off := 0; off < n; off += batch {
		b := &sample.Batch{Series: series}
		for i := off; i < min(off+batch, n); i++ {
			var id [16]byte
			id[0], id[1], id[2], id[15] = byte(i), byte(i>>8), byte(i>>16), 1
			b.Samples = append(b.Samples, sample.Sample{Series: uint32(i % nSeries), Start: ds[i].T, Duration: ds[i].Latency, TraceID: id})
		}
		out = append(out, b)
	}
	return out
}

type point struct{ t, lat int64 }

// readAll returns every sample of every series, per series label string,
// sorted by time, decoding chunks and the open chunk.
func readAll(t testing.TB, db *DB) map[string][]point {
	return readRange(t, db, minTime, 1<<62)
}

// readRange is readAll over the series with samples in [mint, maxt].
func readRange(t testing.TB, db *DB, mint, maxt int64) map[string][]point {
	out := map[string][]point{}
	var d chunkenc.Decoder
	var s chunkenc.Samples
	for _, sr := range db.Select(mint, maxt) {
		var ps []point
		for _, c := range sr.Chunks {
			_, err := d.DecodeChunk(c, db.bounds, &s)
			require.NoError(t, err)
			for i := range s.T {
				ps = append(ps, point{s.T[i], s.Latency[i]})
			}
		}
		for i := range sr.Open.T {
			ps = append(ps, point{sr.Open.T[i], sr.Open.Latency[i]})
		}
		slices.SortFunc(ps, func(a, b point) int {
			if a.t != b.t {
				return int(a.t - b.t)
			}
			return int(a.lat - b.lat)
		})
		out[sr.Labels.String()] = ps
	}
	return out
}

func expected(batches []*sample.Batch) map[string][]point {
	out := map[string][]point{}
	for _, b := range batches {
		for _, s := range b.Samples {
			k := b.Series[s.Series].Labels.String()
			out[k] = append(out[k], point{s.Start, s.Duration})
		}
	}
	for k := range out {
		slices.SortFunc(out[k], func(a, b point) int {
			if a.t != b.t {
				return int(a.t - b.t)
			}
			return int(a.lat - b.lat)
		})
	}
	return out
}

func TestAppendSelectExact(t *testing.T) {
	db, err := Open(testOptions(t.TempDir()), nil, nil)
	require.NoError(t, err)
	defer db.Close()
	batches := testBatches(t, 3, 10_000, 500)
	for _, b := range batches {
		tooOld, err := db.Append(b)
		require.NoError(t, err)
		require.Zero(t, tooOld)
	}
	require.Equal(t, expected(batches), readAll(t, db))

	// Matchers and time range narrow the result; summaries are readable.
	first := batches[0].Samples[0].Start
	res := db.Select(first, first+int64(time.Second), labels.MustNewMatcher(labels.MatchEqual, "span_name", "op-1"))
	require.Len(t, res, 1)
	require.Equal(t, "op-1", res[0].Labels.Get("span_name"))
	for _, c := range res[0].Chunks {
		sum, err := chunkenc.ReadSummary(c, db.bounds)
		require.NoError(t, err)
		require.LessOrEqual(t, sum.MinT, first+int64(time.Second))
	}
}

func TestChunksKeepSlowestTraceIDs(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.Exemplars = ExemplarPolicy{Slowest: 3, Reservoir: 2}
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	batches := testBatches(t, 1, 1000, 1000)
	_, err = db.Append(batches[0])
	require.NoError(t, err)
	res := db.Select(minTime, 1<<62)
	require.Len(t, res, 1)
	require.Len(t, res[0].Chunks, 1)
	var d chunkenc.Decoder
	var s chunkenc.Samples
	_, err = d.DecodeChunk(res[0].Chunks[0], db.bounds, &s)
	require.NoError(t, err)
	require.Len(t, s.Exemplars, 5)
	// The three largest latencies are among the exemplars, with the trace
	// id that was sent for them.
	sent := map[[16]byte]int64{}
	for _, smp := range batches[0].Samples {
		sent[smp.TraceID] = smp.Duration
	}
	lat := slices.Clone(s.Latency)
	slices.Sort(lat)
	top := lat[len(lat)-3:]
	var got []int64
	for _, ex := range s.Exemplars {
		require.Equal(t, sent[ex.TraceID], s.Latency[ex.Index])
		got = append(got, s.Latency[ex.Index])
	}
	for _, v := range top {
		require.Contains(t, got, v)
	}
}

func TestOutOfOrderWindow(t *testing.T) {
	reg := prometheus.NewRegistry()
	opts := testOptions(t.TempDir())
	opts.OutOfOrderWindow = time.Minute
	db, err := Open(opts, reg, nil)
	require.NoError(t, err)
	defer db.Close()
	l := labels.FromStrings("service", "a")
	base := int64(1_800_000_000_000_000_000)
	b := &sample.Batch{Series: []sample.Series{{Key: "a", Labels: l}}, Samples: []sample.Sample{
		{Start: base, Duration: 5},
		{Start: base - int64(30*time.Second), Duration: 6}, // within the window: kept
		{Start: base - int64(2*time.Minute), Duration: 7},  // too old
	}}
	tooOld, err := db.Append(b)
	require.NoError(t, err)
	require.Equal(t, 1, tooOld)
	require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.tooOld))
	require.Equal(t, map[string][]point{l.String(): {{base - int64(30*time.Second), 6}, {base, 5}}}, readAll(t, db))
}

// crash abandons db as if the process had died: nothing is closed or
// flushed beyond what each acknowledged append already wrote.
func crash(*DB) {}

func TestReplayRestoresTheHead(t *testing.T) {
	dir := t.TempDir()
	db, err := Open(testOptions(dir), nil, nil)
	require.NoError(t, err)
	batches := testBatches(t, 4, 20_000, 700)
	for _, b := range batches[:len(batches)/2] {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	crash(db)

	db, err = Open(testOptions(dir), nil, nil)
	require.NoError(t, err)
	require.Equal(t, expected(batches[:len(batches)/2]), readAll(t, db))
	// Series come back under their keys: appending more creates none.
	keys := db.seriesKeys()
	for _, b := range batches[len(batches)/2:] {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.Equal(t, keys, db.seriesKeys())
	require.NoError(t, db.Close())

	db, err = Open(testOptions(dir), nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(batches), readAll(t, db))
}

func TestTornWALTailIsRepaired(t *testing.T) {
	for _, damage := range []string{"truncate", "flip", "garbage"} {
		t.Run(damage, func(t *testing.T) {
			dir := t.TempDir()
			db, err := Open(testOptions(dir), nil, nil)
			require.NoError(t, err)
			batches := testBatches(t, 2, 3000, 500)
			for _, b := range batches {
				_, err := db.Append(b)
				require.NoError(t, err)
			}
			crash(db)
			segs, err := filepath.Glob(filepath.Join(dir, "wal", "0*"))
			require.NoError(t, err)
			var last string
			for _, s := range segs {
				if fi, _ := os.Stat(s); fi.Size() > 0 {
					last = s
				}
			}
			data, err := os.ReadFile(last)
			require.NoError(t, err)
			switch damage {
			case "truncate":
				data = data[:len(data)-100]
			case "flip":
				data[len(data)-50] ^= 0xff
			case "garbage":
				data = append(data, 0x01, 0xde, 0xad, 0xbe, 0xef, 0x00, 0x42)
			}
			require.NoError(t, os.WriteFile(last, data, 0o644))

			reg := prometheus.NewRegistry()
			db, err = Open(testOptions(dir), reg, nil)
			require.NoError(t, err)
			require.Equal(t, 1.0, testutil.ToFloat64(db.metrics.walRepairs))
			got := readAll(t, db)
			want := expected(batches[:len(batches)-1])
			for k, ps := range want {
				require.GreaterOrEqual(t, len(got[k]), len(ps), "every batch before the damaged last one survives")
			}
			// The repaired WAL takes new appends that survive a restart.
			_, err = db.Append(batches[0])
			require.NoError(t, err)
			before := readAll(t, db)
			require.NoError(t, db.Close())
			db, err = Open(testOptions(dir), nil, nil)
			require.NoError(t, err)
			defer db.Close()
			require.Equal(t, before, readAll(t, db))
		})
	}
}

func TestConcurrentAppendsGroupCommit(t *testing.T) {
	opts := testOptions(t.TempDir())
	opts.Fsync = true
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	batches := testBatches(t, 8, 16_000, 100)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < len(batches); i += 8 {
				_, err := db.Append(batches[i])
				require.NoError(t, err)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, expected(batches), readAll(t, db))
	// Group commit: fewer WAL writes than appends (series records aside).
	require.Less(t, testutil.ToFloat64(db.metrics.walCommits), float64(len(batches)+8))
	crash(db)
	db, err = Open(opts, nil, nil)
	require.NoError(t, err)
	defer db.Close()
	require.Equal(t, expected(batches), readAll(t, db))
}

func TestSelectExemplarsPolicy(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 1))
	lat := []int64{5, 9, 1, 9, 3, 7, 2}
	ids := make([][16]byte, len(lat))
	for i := range ids {
		ids[i][0] = byte(i + 1)
	}
	f := func(p ExemplarPolicy, want []uint32) {
		t.Helper()
		got, _ := selectExemplars(nil, lat, ids, p, rng, nil)
		var idx []uint32
		for _, e := range got {
			idx = append(idx, e.Index)
			require.Equal(t, byte(e.Index+1), e.TraceID[0])
		}
		if want != nil {
			require.Equal(t, want, idx)
		}
		require.True(t, slices.IsSorted(idx))
	}
	f(ExemplarPolicy{Slowest: 2}, []uint32{1, 3})
	f(ExemplarPolicy{Slowest: 3}, []uint32{1, 3, 5})
	f(ExemplarPolicy{All: true}, []uint32{0, 1, 2, 3, 4, 5, 6})
	f(ExemplarPolicy{Slowest: 10}, []uint32{0, 1, 2, 3, 4, 5, 6})
	got, _ := selectExemplars(nil, lat, ids, ExemplarPolicy{Slowest: 1, Reservoir: 2}, rng, nil)
	require.Len(t, got, 3)
}

func TestOptionsValidate(t *testing.T) {
	o := Options{ChunkSize: 0, OutOfOrderWindow: -1, Schema: 9, WALSegmentSize: 1000}
	err := o.Validate()
	for _, want := range []string{"Dir", "ChunkSize", "OutOfOrderWindow", "Schema", "WALSegmentSize"} {
		require.ErrorContains(t, err, want)
	}
	require.NoError(t, testOptions("x").Validate())
}

// TestMain lets TestSIGKILLLosesNothingAcknowledged run this test binary as
// an appending child process.
func TestMain(m *testing.M) {
	if dir := os.Getenv("HOPWATCH_RAW_CHILD_DIR"); dir != "" {
		childAppend(dir)
		return
	}
	os.Exit(m.Run())
}

// childOptions are the child's options: with HOPWATCH_RAW_CHILD_COMPACT
// set, small blocks and checkpoints, so that a kill can land in the middle
// of a block write, a checkpoint or a WAL truncation.
func childOptions(dir string, compact bool) Options {
	o := testOptions(dir)
	if compact {
		o.BlockDuration = time.Second
		o.MaxBlockDuration = 4 * time.Second
		o.OutOfOrderWindow = 100 * time.Millisecond
		o.Retention = 0
		o.CheckpointWALSize = 256 << 10
	}
	return o
}

// childAppend appends batches forever, printing the number of samples
// acknowledged after each append, until it is killed; with compaction on,
// it compacts after every 10 appends.
func childAppend(dir string) {
	compact := os.Getenv("HOPWATCH_RAW_CHILD_COMPACT") != ""
	db, err := Open(childOptions(dir, compact), nil, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(1)
	}
	batches := testBatches(&testing.T{}, 4, 400_000, 200)
	acked := 0
	for i, b := range batches {
		if _, err := db.Append(b); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		acked += len(b.Samples)
		fmt.Println(acked)
		if compact && i%10 == 9 {
			if err := db.Compact(dataNow(db)); err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
		}
	}
	time.Sleep(time.Hour)
}

func TestSIGKILLLosesNothingAcknowledged(t *testing.T) {
	f := func(compact bool, killAt int) {
		t.Helper()
		dir := t.TempDir()
		exe, err := os.Executable()
		require.NoError(t, err)
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), "HOPWATCH_RAW_CHILD_DIR="+dir)
		if compact {
			cmd.Env = append(cmd.Env, "HOPWATCH_RAW_CHILD_COMPACT=1")
		}
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		sc := bufio.NewScanner(out)
		acked := 0
		for sc.Scan() {
			n, err := strconv.Atoi(sc.Text())
			require.NoError(t, err, sc.Text())
			acked = n
			if acked >= killAt {
				break
			}
		}
		// Kill mid-append (or mid-compaction): the child is working as
		// fast as it can.
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		_ = cmd.Wait()

		db, err := Open(childOptions(dir, compact), nil, nil)
		require.NoError(t, err)
		defer db.Close()
		total := 0
		for _, ps := range readAll(t, db) {
			total += len(ps)
		}
		require.GreaterOrEqual(t, total, acked, "every acknowledged sample survives")
		if compact {
			require.NotEmpty(t, db.Blocks(), "the child cut blocks")
		}
		// And nothing is invented: the data is a prefix of what was sent.
		want := expected(testBatches(t, 4, 400_000, 200)[:total/200])
		require.Equal(t, want, readAll(t, db))
	}
	f(false, 50_000)
	// With blocks cut, merged and checkpoints written as the child goes.
	for _, killAt := range []int{30_000, 61_000, 92_000} {
		f(true, killAt)
	}
}

func TestSelectPinnedHoldsBlocksUntilReleased(t *testing.T) {
	db, err := Open(blockOptions(t.TempDir()), nil, nil)
	require.NoError(t, err)
	defer func() { require.NoError(t, db.Close()) }()
	for _, b := range testBatches(t, 3, 30_000, 500) {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.NoError(t, db.Compact(dataNow(db)))
	require.NotEmpty(t, db.Blocks())
	want := db.Select(math.MinInt64, math.MaxInt64)

	sel, release := db.SelectPinned(math.MinInt64, math.MaxInt64)
	// Retention now drops every block; the pinned views must stay
	// readable until release.
	db.opts.Retention = time.Nanosecond
	compacted := make(chan error, 1)
	go func() { compacted <- db.Compact(dataNow(db)) }()
	var d chunkenc.Decoder
	var got chunkenc.Samples
	for i := range sel {
		require.Equal(t, want[i].Chunks, sel[i].Chunks)
		for _, c := range sel[i].Chunks {
			_, err := d.DecodeChunk(c, db.bounds, &got)
			require.NoError(t, err)
		}
	}
	select {
	case err := <-compacted:
		t.Fatalf("compaction deleted pinned blocks (err %v)", err)
	case <-time.After(50 * time.Millisecond):
	}
	release()
	require.NoError(t, <-compacted)
}
