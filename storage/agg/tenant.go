package agg

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/value"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/wlog"

	"github.com/hopwatch/hopwatch/sample"
)

// Metric names of the span metrics, as Tempo's metrics-generator writes them.
const (
	MetricCalls   = "traces_spanmetrics_calls_total"
	MetricLatency = "traces_spanmetrics_latency"
)

// tenantStore is one tenant's aggregate state, ingest WAL and TSDB.
type tenantStore struct {
	id     string
	dir    string
	store  *Store
	logger *slog.Logger
	db     *tsdb.DB
	wal    *wlog.WL

	// maxSeries is the active series limit in force (0: none), set by
	// Store.applyLimits and read once per batch without s.mtx, so that a
	// limit change never waits for an append nor an append for it.
	maxSeries atomic.Int64

	// mtx guards everything below. Append holds it across the WAL write and
	// the state update, so a checkpoint taken under it sees every sample of
	// the WAL segments before its cut and none after.
	mtx            sync.Mutex
	series         map[string]*series
	nextRef        uint64
	lastFlushMs    int64
	lastCheckpoint time.Time
	// needCheckpoint is set when a batch was applied without its WAL
	// record (Prepared.Apply): the next Flush checkpoints the tenant.
	needCheckpoint bool
	// unlogged are series a batch applied without its WAL record added:
	// their series record goes before the next record that is logged, so
	// that later batches' samples on them replay. (Replay keeps a series
	// it already holds under the same ref, so a checkpoint taken in
	// between does no harm.)
	unlogged []*series

	// seqs holds, per streaming writer, the last seq applied: restored from
	// the checkpoint and the WAL, so a resend after a restart is still
	// recognised.
	seqs map[string]streamSeq

	// prep is the batch prepared under mtx, if any.
	prep Prepared

	// Scratch space reused across calls under mtx.
	enc       []byte
	enc2      []byte
	recs      [][]byte
	batchRefs []*series
	remap     []uint32
	newSeries []*series
	created   []uint64
	expired   []*series
}

// streamSeq is the last seq applied for a streaming writer, and when.
type streamSeq struct {
	seq      uint64
	lastUsed int64 // Unix seconds
}

// StreamSeqTTL is how long a streaming writer's last seq is kept after its
// last batch: a resend later than that is applied again.
const StreamSeqTTL = time.Hour

// dropUnadmitted removes from b the series refs has no series for (new
// series over the tenant's limit) and their samples, counting them in
// b.Refused; it returns refs matching the compacted b.Series.
func (t *tenantStore) dropUnadmitted(b *sample.Batch, refs []*series) []*series {
	const dropped = math.MaxUint32
	remap := t.remap[:0]
	kept := uint32(0)
	for _, s := range refs {
		if s == nil {
			remap = append(remap, dropped)
			continue
		}
		remap = append(remap, kept)
		kept++
	}
	t.remap = remap
	n := 0
	for _, smp := range b.Samples {
		to := remap[smp.Series]
		if to == dropped {
			b.Refused.Samples++
			if b.Series[smp.Series].Family == sample.FamilySpan {
				b.Refused.Spans++
			}
			continue
		}
		smp.Series = to
		b.Samples[n] = smp
		n++
	}
	b.Samples = b.Samples[:n]
	for i, to := range remap {
		if to != dropped {
			b.Series[to], refs[to] = b.Series[i], refs[i]
		}
	}
	clear(b.Series[kept:])
	b.Series = b.Series[:kept]
	return refs[:kept]
}

// append logs the batch to the WAL and adds it to the aggregates.
func (t *tenantStore) append(b *sample.Batch) error {
	p, err := t.prepare(b)
	if err != nil {
		return err
	}
	return p.Commit()
}

// Prepared is a batch a tenant's aggregates have checked and admitted
// (Store.Prepare) but not yet applied. It holds the tenant's append lock
// until Commit, Apply or Abort, exactly one of which must be called, once:
// so nothing another append does can change what was decided for it. It
// is not to be used after that (the tenant reuses it for its next batch).
type Prepared struct {
	t     *tenantStore
	b     *sample.Batch
	refs  []*series
	fresh []*series
	done  bool
}

// prepare takes t.mtx and decides on b everything that depends on its
// contents: a stream seq already applied (sample.ErrDuplicate), unknown
// families, and the series over the tenant's limit, which it takes out of b
// (counted in b.Refused). On error t.mtx is released and nothing changed.
func (t *tenantStore) prepare(b *sample.Batch) (*Prepared, error) {
	t.mtx.Lock()
	if b.Seq != 0 {
		if last, ok := t.seqs[b.Writer]; ok && b.Seq <= last.seq {
			t.mtx.Unlock()
			return nil, sample.ErrDuplicate
		}
	}
	lay := &t.store.layout
	refs := t.batchRefs[:0]
	fresh := t.newSeries[:0]
	limit := int(t.maxSeries.Load())
	limited := false
	for _, bs := range b.Series {
		s := t.series[bs.Key]
		if s == nil && limit > 0 && len(t.series)+len(fresh) >= limit {
			refs = append(refs, nil)
			limited = true
			continue
		}
		if s == nil {
			// nextRef advances only once the batch is logged: number the
			// new series of this batch after it, one ref each.
			if bs.Family >= sample.NumFamilies {
				clear(refs)
				clear(fresh)
				t.mtx.Unlock()
				return nil, fmt.Errorf("hopwatch/agg: unknown series family %d", bs.Family)
			}
			s = lay.newSeries(t.nextRef+uint64(len(fresh)), bs.Key, bs.Labels, bs.Family)
			fresh = append(fresh, s)
		}
		refs = append(refs, s)
	}
	if limited {
		refs = t.dropUnadmitted(b, refs)
	}
	t.batchRefs, t.newSeries = refs, fresh
	// One batch is prepared at a time per tenant (t.mtx is held until it
	// finishes), so its state lives in the tenant: no allocation.
	t.prep = Prepared{t: t, b: b, refs: refs, fresh: fresh}
	return &t.prep, nil
}

// Abort releases a prepared batch without applying anything of it.
func (p *Prepared) Abort() {
	if p.done {
		return
	}
	p.done = true
	clear(p.refs)
	clear(p.fresh)
	p.t.mtx.Unlock()
}

// Commit logs the prepared batch to the tenant's WAL and adds it to the
// aggregates. When the WAL write fails nothing of the batch is applied and
// the error says so; when it returns nil the batch survives a crash.
func (p *Prepared) Commit() error { return p.finish(false) }

// Apply is Commit for a batch another log already holds durably (the raw
// tier's WAL, written after Prepare): the batch is added to the aggregates
// even when its WAL record cannot be written, because the client is told it
// was kept and would otherwise never see it counted. A failed WAL write is
// returned for logging and counted, and the tenant's next Flush takes a
// checkpoint, which makes the aggregates durable again without the record.
func (p *Prepared) Apply() error { return p.finish(true) }

func (p *Prepared) finish(always bool) error {
	if p.done {
		return errors.New("hopwatch/agg: prepared batch committed twice")
	}
	p.done = true
	t, b, refs, fresh := p.t, p.b, p.refs, p.fresh
	defer t.mtx.Unlock()
	defer clear(fresh)
	defer clear(refs)

	recs := t.recs[:0]
	defer func() { clear(recs); t.recs = recs[:0] }()
	if len(fresh) > 0 || len(t.unlogged) > 0 {
		t.enc2 = appendSeriesRecord(t.enc2[:0], append(t.unlogged, fresh...))
		recs = append(recs, t.enc2)
	}
	typ := recSamples
	if b.Seq != 0 {
		typ = recSamplesSeq
	}
	enc := append(t.enc[:0], typ)
	enc = binary.AppendUvarint(enc, uint64(len(b.Samples)))
	var prev int64
	for i := range b.Samples {
		smp := &b.Samples[i]
		s := refs[smp.Series]
		enc = binary.AppendUvarint(enc, s.ref)
		enc = binary.AppendVarint(enc, smp.Start-prev)
		prev = smp.Start
		enc = binary.AppendUvarint(enc, uint64(smp.Duration))
		var flags byte
		if smp.Failed {
			flags |= flagFailed
		}
		if smp.TraceID != ([16]byte{}) && s.exemplarCandidate(smp.Duration) {
			enc = append(enc, flags|flagTrace)
			enc = append(enc, smp.TraceID[:]...)
		} else {
			enc = append(enc, flags)
		}
	}
	if b.Seq != 0 {
		enc = appendString(enc, b.Writer)
		enc = binary.AppendUvarint(enc, b.Seq)
	}
	t.enc = enc
	recs = append(recs, enc)

	start := time.Now()
	err := t.wal.Log(recs...)
	if err != nil {
		err = fmt.Errorf("hopwatch/agg: tenant %s: write WAL: %w", t.id, err)
	} else if t.store.opts.WALFsync {
		if serr := t.wal.Sync(); serr != nil {
			err = fmt.Errorf("hopwatch/agg: tenant %s: fsync WAL: %w", t.id, serr)
		}
	}
	if err != nil {
		t.store.metrics.walFailures.Inc()
		if !always {
			return err
		}
		// Applied without its record: only a checkpoint makes it durable.
		t.needCheckpoint = true
		t.unlogged = append(t.unlogged, fresh...)
	} else {
		t.store.metrics.walWriteDuration.Observe(time.Since(start).Seconds())
		clear(t.unlogged)
		t.unlogged = t.unlogged[:0]
	}

	// Logged: now the batch is ours. New series become visible only now, so
	// a failed write leaves no series without its WAL record.
	lay := &t.store.layout
	for _, s := range fresh {
		t.series[s.key] = s
		t.nextRef++
	}
	if b.Seq != 0 {
		t.seqs[b.Writer] = streamSeq{seq: b.Seq, lastUsed: time.Now().Unix()}
	}
	for i := range b.Samples {
		smp := &b.Samples[i]
		refs[smp.Series].observe(lay, smp.Duration, smp.Start+smp.Duration, &smp.TraceID, smp.Failed)
	}
	t.store.metrics.samplesAppended.Add(float64(len(b.Samples)))
	return err
}

// flush appends the current value of every series to the TSDB at now.
func (t *tenantStore) flush(ctx context.Context, now time.Time) (int, error) {
	t.mtx.Lock()
	defer t.mtx.Unlock()

	ts := now.UnixMilli()
	if ts <= t.lastFlushMs {
		// Two flushes within a millisecond would write conflicting samples.
		ts = t.lastFlushMs + 1
	}
	lay := &t.store.layout
	app := t.db.AppenderV2(ctx)
	f := flusher{t: t, app: app, lay: lay, ts: ts}
	created := t.created[:0]
	expired := t.expired[:0]
	idle := t.store.opts.SeriesIdleTimeout.Milliseconds()
	for _, s := range t.series {
		switch {
		case s.active || s.lastActive == 0:
			s.active, s.lastActive = false, ts
		case idle > 0 && ts-s.lastActive > idle:
			// Idle past the timeout: the series ends, with Prometheus
			// staleness markers so PromQL stops showing it at once, and
			// its memory goes. If it comes back it starts from zero, which
			// rate() reads as a counter reset.
			if s.out != nil {
				f.stale(s)
			}
			expired = append(expired, s)
			continue
		}
		if s.out == nil {
			s.out = t.store.outSeries(s.lset, s.family)
		}
		if !s.created {
			// Start every new counter at zero, one millisecond before its
			// first value, so that rate() and increase() count the first
			// flush interval instead of losing it (what Tempo does too).
			f.zero(s)
			created = append(created, s.ref)
		}
		f.series(s)
	}
	if err := app.Commit(); err != nil {
		_ = app.Rollback()
		return 0, fmt.Errorf("hopwatch/agg: tenant %s: commit flush: %w", t.id, err)
	}
	t.lastFlushMs = ts
	for _, s := range expired {
		delete(t.series, s.key)
	}
	t.store.metrics.seriesExpired.Add(float64(len(expired)))
	clear(expired)
	t.expired = expired[:0]
	if len(created) > 0 {
		// Recorded after the commit: a crash in between costs at most one
		// extra zero sample on restart, never a lost count.
		t.enc2 = appendCreatedRecord(t.enc2[:0], created)
		if err := t.wal.Log(t.enc2); err != nil {
			return f.samples, fmt.Errorf("hopwatch/agg: tenant %s: write WAL: %w", t.id, err)
		}
		for _, s := range t.series {
			s.created = true
		}
	}
	t.created = created
	if f.failed > 0 {
		t.logger.Warn("flush refused samples", "tenant", t.id, "refused", f.failed, "err", f.firstErr)
		t.store.metrics.flushRefused.Add(float64(f.failed))
	}
	return f.samples, nil
}

// flusher appends the samples of one flush.
type flusher struct {
	t        *tenantStore
	app      storage.AppenderV2
	lay      *layout
	ts       int64
	samples  int
	failed   int
	firstErr error
}

func (f *flusher) add(ref *storage.SeriesRef, ls labels.Labels, ts int64, v float64, h *histogram.Histogram, ex []exemplar.Exemplar) {
	r, err := f.app.Append(*ref, ls, 0, ts, v, h, nil, storage.AppendV2Options{Exemplars: ex})
	var partial *storage.AppendPartialError
	switch {
	case err == nil:
	case errors.As(err, &partial):
		// The sample went in; only an exemplar was refused (for example a
		// duplicate after restart). Not worth a warning.
	default:
		f.failed++
		if f.firstErr == nil {
			f.firstErr = err
		}
		return
	}
	*ref = r
	f.samples++
}

func (f *flusher) zero(s *series) {
	o, ts := s.out, f.ts-1
	fam := &families[s.family]
	if fam.counter != "" {
		f.add(&o.callsRef, o.calls, ts, 0, nil, nil)
	}
	if fam.failed != "" {
		f.add(&o.failedRef, o.failed, ts, 0, nil, nil)
	}
	if fam.gauge != "" {
		return // a gauge has no start to mark
	}
	if s.classic != nil {
		f.add(&o.countRef, o.count, ts, 0, nil, nil)
		f.add(&o.sumRef, o.sum, ts, 0, nil, nil)
		for i := range o.buckets {
			f.add(&o.bucketRefs[i], o.buckets[i], ts, 0, nil, nil)
		}
	}
	if s.native != nil {
		h := &histogram.Histogram{Schema: f.lay.nbounds.Schema(), ZeroThreshold: 0}
		f.add(&o.nativeRef, o.native, ts, 0, h, nil)
	}
}

// stale writes a staleness marker to every output series of s.
func (f *flusher) stale(s *series) {
	o, nan := s.out, math.Float64frombits(value.StaleNaN)
	for _, x := range []struct {
		ref *storage.SeriesRef
		ls  labels.Labels
	}{{&o.callsRef, o.calls}, {&o.failedRef, o.failed}, {&o.gaugeRef, o.gauge}, {&o.countRef, o.count}, {&o.sumRef, o.sum}} {
		if !x.ls.IsEmpty() {
			f.add(x.ref, x.ls, f.ts, nan, nil, nil)
		}
	}
	for i := range o.buckets {
		f.add(&o.bucketRefs[i], o.buckets[i], f.ts, nan, nil, nil)
	}
	if !o.native.IsEmpty() {
		f.add(&o.nativeRef, o.native, f.ts, 0, &histogram.Histogram{Sum: nan}, nil)
	}
}

func (f *flusher) series(s *series) {
	o := s.out
	fam := &families[s.family]
	var ex []exemplar.Exemplar
	exBucket := -1
	if s.exValid {
		ex = []exemplar.Exemplar{{
			Labels: labels.FromStrings(f.t.store.opts.ExemplarLabel, hex.EncodeToString(s.exTraceID[:])),
			Value:  float64(s.exDuration) / 1e9,
			Ts:     s.exEnd / 1e6,
			HasTs:  true,
		}}
		s.exValid = false
		if s.classic != nil {
			for i, b := range f.lay.boundsNs {
				if s.exDuration <= b {
					exBucket = i
					break
				}
			}
			if exBucket < 0 {
				exBucket = len(f.lay.boundsNs)
			}
		}
	}
	count := float64(s.count)
	if fam.counter != "" {
		f.add(&o.callsRef, o.calls, f.ts, count, nil, nil)
	}
	if fam.failed != "" {
		f.add(&o.failedRef, o.failed, f.ts, float64(s.failed), nil, nil)
	}
	if fam.gauge != "" {
		f.add(&o.gaugeRef, o.gauge, f.ts, float64(s.gauge)/1e9, nil, nil)
	}
	if s.classic != nil {
		f.add(&o.countRef, o.count, f.ts, count, nil, nil)
		f.add(&o.sumRef, o.sum, f.ts, s.sumSeconds(), nil, nil)
		var cum uint64
		for i, c := range s.classic {
			cum += c
			var bex []exemplar.Exemplar
			if i == exBucket {
				bex = ex
			}
			f.add(&o.bucketRefs[i], o.buckets[i], f.ts, float64(cum), nil, bex)
		}
	}
	if s.native != nil {
		// A new Histogram each time: the TSDB head keeps the pointer.
		h := &histogram.Histogram{}
		s.native.AppendTo(h)
		f.add(&o.nativeRef, o.native, f.ts, 0, h, ex)
	}
}

// outSeries builds the label sets of the TSDB series one series flushes to.
func (st *Store) outSeries(base labels.Labels, family sample.Family) *outSeries {
	fam := &families[family]
	b := labels.NewBuilder(base)
	with := func(name string, extra ...string) labels.Labels {
		b.Reset(base)
		b.Set(model.MetricNameLabel, name)
		for i := 0; i+1 < len(extra); i += 2 {
			b.Set(extra[i], extra[i+1])
		}
		return b.Labels()
	}
	o := &outSeries{}
	if fam.counter != "" {
		o.calls = with(fam.counter)
	}
	if fam.failed != "" {
		o.failed = with(fam.failed)
	}
	if fam.gauge != "" {
		o.gauge = with(fam.gauge)
	}
	if fam.hist == "" {
		return o
	}
	lay := &st.layout
	if lay.classic {
		o.count = with(fam.hist + "_count")
		o.sum = with(fam.hist + "_sum")
		o.buckets = make([]labels.Labels, len(lay.leValues))
		o.bucketRefs = make([]storage.SeriesRef, len(lay.leValues))
		for i, le := range lay.leValues {
			o.buckets[i] = with(fam.hist+"_bucket", labels.BucketLabel, le)
		}
	}
	if lay.native {
		o.native = with(fam.hist)
	}
	return o
}

// formatLe formats a bucket bound as client_golang does, so le values match
// what Prometheus users already query.
func formatLe(v float64) string {
	return strconv.FormatFloat(v, 'g', -1, 64)
}
