package raw

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/prometheus/prometheus/util/compression"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// Options configures a DB.
type Options struct {
	// Dir holds the DB's WAL, head checkpoint and blocks.
	Dir string
	// ChunkSize is the number of samples a head chunk is cut at.
	ChunkSize int
	// OutOfOrderWindow is how far behind a series' newest sample a sample
	// may be and still be accepted.
	OutOfOrderWindow time.Duration
	// Schema is the native histogram schema of the chunk summaries.
	Schema int32
	// Exemplars selects the trace ids kept per chunk.
	Exemplars ExemplarPolicy
	// WALSegmentSize is the size of one WAL segment file.
	WALSegmentSize int
	// BlockDuration is the time range of a block cut from the head.
	BlockDuration time.Duration
	// MaxBlockDuration bounds the range of a compacted block.
	MaxBlockDuration time.Duration
	// Retention drops blocks whose newest sample is older than this before
	// the time Compact is given; 0 keeps everything.
	Retention time.Duration
	// RetentionBytes drops the oldest blocks while the blocks take more
	// bytes than this; 0 means no limit.
	RetentionBytes int64
	// CheckpointWALSize is how many bytes the WAL may grow past the last
	// head checkpoint before a compaction writes a new one and deletes the
	// WAL behind it: it bounds the replay after a crash. 0 checkpoints
	// only when blocks are cut and at Close.
	CheckpointWALSize int64
	// Fsync makes every acknowledged append wait for an fsync of the WAL
	// (shared by concurrent appends through group commit). Off, an
	// acknowledged append survives a crash of the process, not of the
	// machine.
	Fsync bool
}

// DefaultOptions returns the raw tier's defaults.
func DefaultOptions() Options {
	return Options{
		ChunkSize:        8192,
		OutOfOrderWindow: 10 * time.Minute,
		Schema:           5,
		Exemplars:        ExemplarPolicy{Slowest: 8, Reservoir: 4},
		WALSegmentSize:   64 << 20,
		BlockDuration:    2 * time.Hour,
		MaxBlockDuration: 24 * time.Hour,
		Retention:        15 * 24 * time.Hour,
		// Replay applies about 75 MiB of WAL per CPU second
		// (BenchmarkOpen in docs/BENCHMARKS.md): a crash costs at most
		// about 2 s of replay, plus a compaction interval's worth of WAL.
		// Each checkpoint rewrites the head, so much smaller would write
		// a large head over and over.
		CheckpointWALSize: 128 << 20,
	}
}

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Dir == "" {
		add("Dir must be set")
	}
	if o.ChunkSize < 1 || o.ChunkSize > chunkenc.MaxSamples {
		add("ChunkSize %d outside [1, %d]", o.ChunkSize, chunkenc.MaxSamples)
	}
	if o.OutOfOrderWindow < 0 {
		add("OutOfOrderWindow %s is negative", o.OutOfOrderWindow)
	}
	if o.Schema < nativehist.MinSchema || o.Schema > nativehist.MaxSchema {
		add("Schema %d outside [%d, %d]", o.Schema, nativehist.MinSchema, nativehist.MaxSchema)
	}
	if o.Exemplars.Slowest < 0 || o.Exemplars.Reservoir < 0 {
		add("Exemplars: negative counts %d/%d", o.Exemplars.Slowest, o.Exemplars.Reservoir)
	}
	if o.BlockDuration <= 0 {
		add("BlockDuration %s must be positive", o.BlockDuration)
	}
	if o.MaxBlockDuration < o.BlockDuration {
		add("MaxBlockDuration %s is shorter than BlockDuration %s", o.MaxBlockDuration, o.BlockDuration)
	}
	if o.CheckpointWALSize < 0 {
		add("CheckpointWALSize %d is negative", o.CheckpointWALSize)
	}
	if o.Retention < 0 || o.RetentionBytes < 0 {
		add("Retention %s and RetentionBytes %d must not be negative", o.Retention, o.RetentionBytes)
	}
	if o.WALSegmentSize < 64<<10 || o.WALSegmentSize%(32<<10) != 0 {
		add("WALSegmentSize must be a multiple of 32KiB and at least 64KiB, got %d", o.WALSegmentSize)
	}
	return errors.Join(errs...)
}

type dbMetrics struct {
	appended    prometheus.Counter
	tooOld      prometheus.Counter
	sampledOut  prometheus.Counter
	series      prometheus.Gauge
	chunksCut   prometheus.Counter
	walCommits  prometheus.Counter
	walRecords  prometheus.Counter
	walRepairs  prometheus.Counter
	replayed    prometheus.Counter
	unknownRefs prometheus.Counter

	blocksWritten   prometheus.Counter
	blocksCompacted prometheus.Counter
	blocksDeleted   prometheus.Counter
	blocksCorrupt   prometheus.Counter
	checkpoints     prometheus.Counter
	// compactionFailures counts block writes, merges, deletions and
	// checkpoints that failed; each is retried at the next compaction, and
	// none holds up the others.
	compactionFailures prometheus.Counter
}

func newDBMetrics(reg prometheus.Registerer) *dbMetrics {
	f := promauto.With(reg)
	c := func(name, help string) prometheus.Counter {
		return f.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	return &dbMetrics{
		appended:    c("hopwatch_raw_samples_appended_total", "Raw samples logged and added to the head."),
		tooOld:      c("hopwatch_raw_samples_too_old_total", "Raw samples refused: older than the series' newest sample by more than the out-of-order window."),
		sampledOut:  c("hopwatch_raw_samples_sampled_out_total", "Raw samples not kept because sampling under overload left their trace out; the kept ones carry the weight."),
		series:      f.NewGauge(prometheus.GaugeOpts{Name: "hopwatch_raw_head_series", Help: "Series in the raw head."}),
		chunksCut:   c("hopwatch_raw_head_chunks_cut_total", "Head chunks encoded."),
		walCommits:  c("hopwatch_raw_wal_commits_total", "WAL writes; each serves one or more appends (group commit)."),
		walRecords:  c("hopwatch_raw_wal_records_total", "Records written to the WAL."),
		walRepairs:  c("hopwatch_raw_wal_repairs_total", "Corrupt WAL tails truncated at the last good record on replay."),
		replayed:    c("hopwatch_raw_wal_replayed_samples_total", "Samples re-applied from the WAL at start."),
		unknownRefs: c("hopwatch_raw_wal_unknown_series_samples_total", "WAL samples skipped on replay because their series record was missing."),

		blocksWritten:   c("hopwatch_raw_blocks_written_total", "Blocks cut from the head."),
		blocksCompacted: c("hopwatch_raw_blocks_compacted_total", "Blocks merged into larger ones."),
		blocksDeleted:   c("hopwatch_raw_blocks_deleted_total", "Blocks deleted by retention."),
		blocksCorrupt:   c("hopwatch_raw_blocks_corrupt_total", "Blocks found corrupt at open and moved aside (renamed <ulid>.corrupt), so that the tenant opens without them."),
		checkpoints:     c("hopwatch_raw_head_checkpoints_total", "Head checkpoints written (each lets older WAL segments go)."),

		compactionFailures: c("hopwatch_raw_compaction_failures_total", "Raw compaction steps that failed (a block cut from the head, a merge of blocks, a deletion, a checkpoint); each is logged and retried at the next compaction without holding up the others."),
	}
}

// DB is the raw tier of one tenant.
type DB struct {
	opts    Options
	logger  *slog.Logger
	metrics *dbMetrics
	bounds  *nativehist.Bounds
	wal     *wlog.WL
	commit  *groupCommit

	// appendMtx is held shared by appends (from WAL write to head update)
	// and exclusively by a head checkpoint, so a checkpoint sees every
	// logged sample applied and none half-way.
	appendMtx sync.RWMutex

	// wallNow is the wall-clock time of the last Compact (minTime before
	// the first): the out-of-order window never counts from later than
	// this, so a sample stamped in the future does not shut its series out.
	wallNow atomic.Int64

	// compactMtx serialises compaction, checkpoints and Close.
	compactMtx sync.Mutex
	// uninstalled are blocks cut from the head, named by the checkpoint,
	// not yet renamed into place and opened (guarded by compactMtx).
	uninstalled []ulid.ULID
	closed      bool // guarded by compactMtx

	blocksMtx sync.RWMutex
	blocks    []*Block

	// mtx guards the series maps; each series has its own lock.
	mtx     sync.RWMutex
	series  map[string]*memSeries // by sample.Series.Key
	byRef   map[uint64]*memSeries
	nextRef uint64

	// work pools the per-append scratch space.
	work sync.Pool
}

// memSeries is one series in the head.
type memSeries struct {
	ref  uint64
	key  string
	lset labels.Labels

	mtx sync.Mutex
	// The open chunk: samples not yet encoded, in arrival order.
	t   []int64
	lat []int64
	ids [][16]byte
	// wt holds the weights of the open chunk's samples, or nothing while
	// every weight is 1 (no sampling): len(wt) is 0 or len(t). 32 bits
	// suffice for 2^MaxSamplingLevel and keep the column at 4 B a sample.
	wt []uint32
	// Encoded chunks, in cut order; their time ranges may overlap when
	// out-of-order samples arrived.
	chunks []headChunk
	maxT   int64
	rng    *rand.Rand
}

type headChunk struct {
	data       []byte
	minT, maxT int64
}

type appendWork struct {
	refs     []*memSeries
	maxT     []int64
	keep     []bool
	rec      []byte
	enc      chunkenc.Encoder
	cut      chunkenc.Samples
	weights  []uint64 // the memory of cut.Weight, which is nil for unweighted chunks
	order    []int
	ids      [][16]byte
	exIdx    []int
	seriesRc []byte
}

// Open opens the DB in opts.Dir and replays its WAL.
func Open(opts Options, reg prometheus.Registerer, logger *slog.Logger) (*DB, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/raw: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	bounds, err := nativehist.NewBounds(opts.Schema)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("hopwatch/raw: create %s: %w", opts.Dir, err)
	}
	db := &DB{
		opts:    opts,
		logger:  logger,
		metrics: newDBMetrics(reg),
		bounds:  bounds,
		series:  map[string]*memSeries{},
		byRef:   map[uint64]*memSeries{},
		nextRef: 1,
	}
	db.work.New = func() any { return &appendWork{} }
	db.wallNow.Store(minTime)
	w, err := wlog.NewSize(logger, prometheus.WrapRegistererWithPrefix("hopwatch_raw_", reg), opts.Dir+"/wal", opts.WALSegmentSize, compression.None)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/raw: open WAL: %w", err)
	}
	db.wal = w
	cp, err := db.readCheckpoint()
	if err == nil && cp != nil {
		err = db.checkCheckpoint(cp)
	}
	if err != nil {
		_ = db.close()
		return nil, err
	}
	if err := db.loadBlocks(checkpointPending(cp)); err != nil {
		_ = db.close()
		return nil, err
	}
	first, err := db.loadCheckpoint(cp)
	if err != nil {
		_ = db.close()
		return nil, err
	}
	if err := db.replay(first); err != nil {
		_ = db.close()
		return nil, err
	}
	db.commit = newGroupCommit(w, opts.Fsync, func(n int) {
		db.metrics.walCommits.Inc()
		db.metrics.walRecords.Add(float64(n))
	})
	return db, nil
}

// Close checkpoints the head, so that the next Open loads the checkpoint
// instead of replaying the WAL, and closes the WAL and the blocks. Appends
// must have returned. Were the checkpoint to fail, the WAL still holds
// everything and Open replays it.
func (db *DB) Close() error {
	db.compactMtx.Lock()
	defer db.compactMtx.Unlock()
	if db.closed {
		return nil
	}
	var errs []error
	if err := db.checkpoint(); err != nil {
		db.logger.Warn("raw head checkpoint at close failed; the next start replays the WAL", "err", err)
		errs = append(errs, err)
	}
	return errors.Join(append(errs, db.close())...)
}

// discard closes the DB without a checkpoint, once the appends that raced
// with it are done: its data is about to be deleted.
func (db *DB) discard() error {
	db.compactMtx.Lock()
	defer db.compactMtx.Unlock()
	db.appendMtx.Lock()
	defer db.appendMtx.Unlock()
	return db.close()
}

// close closes the WAL and the blocks; the caller holds compactMtx.
func (db *DB) close() error {
	if db.closed {
		return nil
	}
	db.closed = true
	errs := []error{db.wal.Close()}
	db.blocksMtx.Lock()
	blocks := db.blocks
	db.blocks = nil
	db.blocksMtx.Unlock()
	// Outside the lock: closing waits for pinned readers, which may still
	// be selecting.
	for _, b := range blocks {
		errs = append(errs, b.Close())
	}
	return errors.Join(errs...)
}

// getOrCreate returns the series for bs, logging a series record before a
// new series becomes visible: a samples record can then never precede the
// record of its series in the WAL.
func (db *DB) getOrCreate(bs *sample.Series, w *appendWork) (*memSeries, error) {
	db.mtx.RLock()
	s := db.series[bs.Key]
	db.mtx.RUnlock()
	if s != nil {
		return s, nil
	}
	db.mtx.Lock()
	defer db.mtx.Unlock()
	if s := db.series[bs.Key]; s != nil {
		return s, nil
	}
	ref := db.nextRef
	w.seriesRc = appendSeriesRecord(w.seriesRc[:0], ref, bs.Key, bs.Labels)
	if err := db.commit.commit(w.seriesRc); err != nil {
		return nil, err
	}
	db.nextRef++
	s = db.newSeries(ref, bs.Key, bs.Labels)
	return s, nil
}

// newSeries registers a series; the caller holds db.mtx.
func (db *DB) newSeries(ref uint64, key string, lset labels.Labels) *memSeries {
	s := &memSeries{ref: ref, key: key, lset: lset, maxT: minTime, rng: rand.New(rand.NewPCG(ref, 0x5eed))}
	db.series[key] = s
	db.byRef[ref] = s
	db.metrics.series.Set(float64(len(db.series)))
	return s
}

const minTime = -1 << 63

// Append logs the batch's samples to the WAL and adds them to the head.
// Samples further behind their series' newest sample than the
// out-of-order window are refused and counted; it returns how many.
// When Append returns nil the accepted samples survive a crash.
func (db *DB) Append(b *sample.Batch) (tooOld int, err error) {
	tooOld, _, err = db.AppendSampled(b, 0)
	return tooOld, err
}

// AppendSampled is Append at a sampling level (see sampling.go): it keeps
// only the samples of the traces the level keeps, each with weight
// 2^level, and returns how many it left out besides how many were too old.
// Level 0 keeps everything and is Append. The batch is not modified.
func (db *DB) AppendSampled(b *sample.Batch, level int) (tooOld, sampledOut int, err error) {
	if err := checkSamplingLevel(level); err != nil {
		return 0, 0, err
	}
	db.appendMtx.RLock()
	defer db.appendMtx.RUnlock()
	w := db.work.Get().(*appendWork)
	defer db.work.Put(w)
	w.refs, w.maxT = w.refs[:0], w.maxT[:0]
	for i := range b.Series {
		if b.Series[i].Family != sample.FamilySpan {
			// The raw tier keeps span durations; service graph edges and
			// counters live in the aggregates only.
			w.refs = append(w.refs, nil)
			w.maxT = append(w.maxT, 0)
			continue
		}
		s, err := db.getOrCreate(&b.Series[i], w)
		if err != nil {
			return 0, 0, err
		}
		w.refs = append(w.refs, s)
		s.mtx.Lock()
		w.maxT = append(w.maxT, s.maxT)
		s.mtx.Unlock()
	}
	window := db.opts.OutOfOrderWindow.Nanoseconds()
	wallNow := db.wallNow.Load()
	threshold := samplingThreshold(level)
	weight := uint32(1) << level
	w.keep = w.keep[:0]
	rec := w.rec[:0]
	if level == 0 {
		rec = append(rec, recSamples)
	} else {
		rec = append(rec, recWeightedSamples)
	}
	rec = appendUvarintPlaceholder(rec)
	countAt := len(rec)
	if level > 0 {
		rec = appendUvarint(rec, uint64(weight))
	}
	kept := 0
	var prevT int64
	for i := range b.Samples {
		smp := &b.Samples[i]
		s := w.refs[smp.Series]
		if s == nil {
			w.keep = append(w.keep, false)
			continue
		}
		// Sampling comes first: a sample left out never reaches the raw
		// tier, so it moves no series' out-of-order window either.
		if traceRandomness(&smp.TraceID) < threshold {
			w.keep = append(w.keep, false)
			sampledOut++
			continue
		}
		// The window counts from the newest sample known so far, this
		// batch's included, but from no later than the wall clock of the
		// last compaction: a sample stamped days ahead must not make every
		// later one of its series too old.
		maxT := w.maxT[smp.Series]
		from := maxT
		if wallNow != minTime {
			from = min(from, wallNow)
		}
		ok := maxT == minTime || smp.Start >= satSub(from, window)
		w.keep = append(w.keep, ok)
		if !ok {
			tooOld++
			continue
		}
		w.maxT[smp.Series] = max(maxT, smp.Start)
		kept++
		rec = appendUvarint(rec, s.ref)
		rec = appendVarint(rec, smp.Start-prevT)
		prevT = smp.Start
		rec = appendUvarint(rec, uint64(smp.Duration))
		rec = append(rec, smp.TraceID[:]...)
	}
	rec = fillCount(rec, countAt, kept)
	w.rec = rec
	if kept > 0 {
		if err := db.commit.commit(rec); err != nil {
			clear(w.refs)
			return 0, 0, err
		}
	}
	// Counted once the batch is kept: a failed append counts nothing, so
	// its retry counts once.
	if tooOld > 0 {
		db.metrics.tooOld.Add(float64(tooOld))
	}
	if sampledOut > 0 {
		db.metrics.sampledOut.Add(float64(sampledOut))
	}
	if kept == 0 {
		clear(w.refs)
		return tooOld, sampledOut, nil
	}
	for i := range b.Samples {
		if w.keep[i] {
			smp := &b.Samples[i]
			db.add(w.refs[smp.Series], smp.Start, smp.Duration, smp.TraceID, weight, w)
		}
	}
	db.metrics.appended.Add(float64(kept))
	clear(w.refs)
	return tooOld, sampledOut, nil
}

// add puts one sample of the given weight in its series' open chunk,
// cutting it when full.
func (db *DB) add(s *memSeries, t, latency int64, id [16]byte, weight uint32, w *appendWork) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	s.addWeight(weight)
	s.t = append(s.t, t)
	s.lat = append(s.lat, latency)
	s.ids = append(s.ids, id)
	s.maxT = max(s.maxT, t)
	if len(s.t) >= db.opts.ChunkSize {
		db.cut(s, w)
	}
}

// addWeight records the weight of the sample about to be appended to the
// open chunk; the caller holds s.mtx. The column exists only once a weight
// other than 1 arrives, so the unsampled case neither stores nor encodes
// one.
func (s *memSeries) addWeight(weight uint32) {
	if len(s.wt) == 0 {
		if weight == 1 {
			return
		}
		for range s.t {
			s.wt = append(s.wt, 1)
		}
	}
	s.wt = append(s.wt, weight)
}

// cut encodes the open chunk of s, sorted by time, with its exemplars; the
// caller holds s.mtx.
func (db *DB) cut(s *memSeries, w *appendWork) {
	n := len(s.t)
	c := &w.cut
	c.Reset()
	c.Weight = nil
	weighted := len(s.wt) > 0
	ws := w.weights[:0]
	ids := s.ids
	if slices.IsSorted(s.t) {
		// In-order arrival, the common case: the columns are ready.
		c.T = append(c.T, s.t...)
		c.Latency = append(c.Latency, s.lat...)
		if weighted {
			for _, v := range s.wt {
				ws = append(ws, uint64(v))
			}
		}
	} else {
		w.order = w.order[:0]
		for i := range n {
			w.order = append(w.order, i)
		}
		slices.SortStableFunc(w.order, func(a, b int) int { return cmp.Compare(s.t[a], s.t[b]) })
		w.ids = w.ids[:0]
		for _, i := range w.order {
			c.T = append(c.T, s.t[i])
			c.Latency = append(c.Latency, s.lat[i])
			w.ids = append(w.ids, s.ids[i])
			if weighted {
				ws = append(ws, uint64(s.wt[i]))
			}
		}
		ids = w.ids
	}
	w.weights = ws
	if weighted {
		c.Weight = ws
	}
	c.Exemplars, w.exIdx = selectExemplars(c.Exemplars[:0], c.Latency, ids, db.opts.Exemplars, s.rng, w.exIdx)
	data, err := w.enc.AppendChunk(nil, c, db.bounds)
	if err != nil {
		// Only negative latencies fail, and ingest never produces them.
		db.logger.Error("cannot encode head chunk; keeping it open", "series", s.lset.String(), "err", err)
		return
	}
	s.chunks = append(s.chunks, headChunk{data: data, minT: c.T[0], maxT: c.T[n-1]})
	s.t, s.lat, s.ids, s.wt = s.t[:0], s.lat[:0], s.ids[:0], s.wt[:0]
	db.metrics.chunksCut.Inc()
}

// replay re-applies the WAL from segment from on to the head restored from
// the checkpoint, truncating a corrupt tail.
func (db *DB) replay(from int) error {
	dir := db.wal.Dir()
	first, last, err := wlog.Segments(dir)
	if err != nil {
		return fmt.Errorf("hopwatch/raw: list WAL segments: %w", err)
	}
	first = max(first, from)
	if last < first {
		return nil
	}
	rc, err := wlog.NewSegmentsRangeReader(wlog.SegmentRange{Dir: dir, First: first, Last: last})
	if err != nil {
		return fmt.Errorf("hopwatch/raw: open WAL for replay: %w", err)
	}
	defer rc.Close()
	r := wlog.NewReader(rc)
	sb := labels.NewScratchBuilder(8)
	var (
		samples []walSample
		w       appendWork
		n       int
		start   = time.Now()
	)
	for r.Next() {
		rec := r.Record()
		if len(rec) == 0 {
			continue
		}
		switch rec[0] {
		case recSeries:
			err = decodeSeriesRecord(rec, &sb, func(ref uint64, key string, lset labels.Labels) {
				if db.byRef[ref] == nil {
					db.newSeries(ref, key, lset)
				}
				db.nextRef = max(db.nextRef, ref+1)
			})
		case recSamples, recWeightedSamples:
			samples, err = decodeSamplesRecord(rec, samples[:0])
			for _, smp := range samples {
				s := db.byRef[smp.ref]
				if s == nil {
					db.metrics.unknownRefs.Inc()
					continue
				}
				db.add(s, smp.t, smp.latency, smp.traceID, smp.weight, &w)
				n++
			}
		default:
			err = fmt.Errorf("%w: unknown type %d", errCorruptRecord, rec[0])
		}
		if err != nil {
			db.logger.Warn("skipping undecodable WAL record", "segment", r.Segment(), "offset", r.Offset(), "err", err)
		}
	}
	if err := r.Err(); err != nil {
		var cerr *wlog.CorruptionErr
		if !errors.As(err, &cerr) {
			return fmt.Errorf("hopwatch/raw: read WAL: %w", err)
		}
		db.logger.Warn("WAL tail is corrupt; truncating at the last good record", "segment", cerr.Segment, "offset", cerr.Offset, "err", err)
		db.metrics.walRepairs.Inc()
		if err := db.wal.Repair(err); err != nil {
			return fmt.Errorf("hopwatch/raw: repair WAL: %w", err)
		}
	}
	db.metrics.replayed.Add(float64(n))
	db.logger.Info("raw WAL replay done", "samples", n, "series", len(db.series), "seconds", time.Since(start).Seconds())
	return nil
}

// seriesKeys returns the keys of all series, sorted (for tests).
func (db *DB) seriesKeys() []string {
	db.mtx.RLock()
	defer db.mtx.RUnlock()
	keys := make([]string, 0, len(db.series))
	for k := range db.series {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
