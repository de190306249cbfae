package agg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/prometheus/prometheus/util/compression"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/sample"
)

// DefaultBuckets are the classic histogram bounds in seconds: Tempo's
// metrics-generator default (0.002 doubling to 16.384), so dashboards built
// on Tempo's buckets read the same le values.
var defaultBuckets = []float64{0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384}

// Options configures a Store.
type Options struct {
	// Dir holds one directory per tenant.
	Dir string
	// Retention is how long the TSDB keeps aggregate samples.
	Retention time.Duration
	// ClassicHistograms writes _bucket/_sum/_count series with ClassicBuckets.
	ClassicHistograms bool
	ClassicBuckets    []float64
	// NativeHistograms writes a native histogram series at NativeSchema.
	NativeHistograms bool
	NativeSchema     int32
	// ExemplarLabel names the trace id label of exemplars.
	ExemplarLabel string
	// MaxExemplars is the size of each tenant's in-memory exemplar buffer.
	MaxExemplars int64
	// CheckpointInterval is how often the aggregate state is written out so
	// that older WAL segments can be deleted; it bounds replay time.
	CheckpointInterval time.Duration
	// SeriesIdleTimeout closes a series (staleness markers, memory freed)
	// that received no sample for this long; 0 keeps series forever.
	SeriesIdleTimeout time.Duration
	// MaxSeriesPerTenant bounds a tenant's active series (Mimir's
	// max_global_series_per_user); samples of further new series are
	// refused and counted in the batch. 0 means no limit. A tenant's
	// override (SetTenantLimits) takes its place.
	MaxSeriesPerTenant int
	// WALSegmentSize is the size of one ingest WAL segment file.
	WALSegmentSize int
	// WALFsync fsyncs the WAL before every acknowledgement. Off, an
	// acknowledged batch survives a crash of the process (it is in the
	// kernel's page cache) but not of the machine.
	WALFsync bool
}

// DefaultOptions returns the options hopwatch runs with when none are given.
func DefaultOptions() Options {
	return Options{
		Dir:                "./data",
		Retention:          15 * 24 * time.Hour,
		ClassicHistograms:  true,
		ClassicBuckets:     slices.Clone(defaultBuckets),
		NativeHistograms:   true,
		NativeSchema:       5,
		ExemplarLabel:      "trace_id",
		MaxExemplars:       100_000,
		CheckpointInterval: 5 * time.Minute,
		SeriesIdleTimeout:  15 * time.Minute,
		MaxSeriesPerTenant: 150000,
		WALSegmentSize:     32 << 20,
	}
}

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Dir == "" {
		add("Dir must be set")
	}
	if o.Retention <= 0 {
		add("Retention must be positive, got %s", o.Retention)
	}
	if !o.ClassicHistograms && !o.NativeHistograms {
		add("at least one of ClassicHistograms and NativeHistograms must be on")
	}
	if o.ClassicHistograms {
		if len(o.ClassicBuckets) == 0 {
			add("ClassicBuckets must not be empty")
		}
		for i, b := range o.ClassicBuckets {
			if !(b > 0) || math.IsInf(b, 0) {
				add("ClassicBuckets[%d] = %g: bounds must be positive and finite", i, b)
			}
			if i > 0 && b <= o.ClassicBuckets[i-1] {
				add("ClassicBuckets[%d] = %g: bounds must increase", i, b)
			}
		}
	}
	if o.NativeSchema < nativehist.MinSchema || o.NativeSchema > nativehist.MaxSchema {
		add("NativeSchema %d outside [%d, %d]", o.NativeSchema, nativehist.MinSchema, nativehist.MaxSchema)
	}
	if !model.LegacyValidation.IsValidLabelName(o.ExemplarLabel) {
		add("ExemplarLabel %q is not a valid label name", o.ExemplarLabel)
	}
	if o.MaxExemplars < 0 {
		add("MaxExemplars must not be negative, got %d", o.MaxExemplars)
	}
	if o.MaxSeriesPerTenant < 0 {
		add("MaxSeriesPerTenant must not be negative, got %d", o.MaxSeriesPerTenant)
	}
	if o.SeriesIdleTimeout < 0 {
		add("SeriesIdleTimeout must not be negative, got %s", o.SeriesIdleTimeout)
	}
	if o.CheckpointInterval <= 0 {
		add("CheckpointInterval must be positive, got %s", o.CheckpointInterval)
	}
	if o.WALSegmentSize < 64<<10 || o.WALSegmentSize%(32<<10) != 0 {
		add("WALSegmentSize must be a multiple of 32KiB and at least 64KiB, got %d", o.WALSegmentSize)
	}
	return errors.Join(errs...)
}

type storeMetrics struct {
	flushDuration    prometheus.Histogram
	flushSamples     prometheus.Counter
	flushFailures    prometheus.Counter
	flushRefused     prometheus.Counter
	samplesAppended  prometheus.Counter
	walWriteDuration prometheus.Histogram
	walFailures      prometheus.Counter
	checkpoints      prometheus.Counter
	checkpointFailed prometheus.Counter
	walRepairs       prometheus.Counter
	seriesExpired    prometheus.Counter
	activeSeries     *prometheus.GaugeVec
	seriesLimit      *prometheus.GaugeVec
	tenants          prometheus.Gauge
}

func newStoreMetrics(reg prometheus.Registerer) *storeMetrics {
	f := promauto.With(reg)
	return &storeMetrics{
		flushDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_agg_flush_duration_seconds",
			Help:                        "Time to flush the in-memory aggregates of all tenants to the TSDB.",
			Buckets:                     prometheus.ExponentialBuckets(0.0005, 4, 9),
			NativeHistogramBucketFactor: 1.1,
		}),
		flushSamples: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_flushed_samples_total",
			Help: "Samples appended to the TSDB by flushes.",
		}),
		flushFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_flush_failures_total",
			Help: "Tenant flushes that failed to commit.",
		}),
		flushRefused: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_flush_refused_samples_total",
			Help: "Samples the TSDB refused during a flush.",
		}),
		samplesAppended: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_samples_appended_total",
			Help: "Latency samples written to the ingest WAL and aggregated.",
		}),
		walWriteDuration: f.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_ingest_wal_write_duration_seconds",
			Help:                        "Time to write (and, with --storage.wal.fsync, fsync) one batch to the ingest WAL.",
			Buckets:                     prometheus.ExponentialBuckets(1e-6, 4, 10),
			NativeHistogramBucketFactor: 1.1,
		}),
		walFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_ingest_wal_write_failures_total",
			Help: "Batches whose ingest WAL write (or fsync) failed.",
		}),
		checkpoints: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_checkpoints_total",
			Help: "Checkpoints of the aggregate state written.",
		}),
		checkpointFailed: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_checkpoint_failures_total",
			Help: "Checkpoints that failed.",
		}),
		walRepairs: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_ingest_wal_repairs_total",
			Help: "Corrupt ingest WAL tails truncated at the last good record on replay.",
		}),
		seriesExpired: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_agg_series_expired_total",
			Help: "Series closed after --spanmetrics.series-idle-timeout without samples (with staleness markers).",
		}),
		activeSeries: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopwatch_agg_active_series",
			Help: "Span series held in memory, by tenant.",
		}, []string{"tenant"}),
		seriesLimit: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "hopwatch_agg_series_limit",
			Help: "Active series limit in force, by tenant: the tenant's override or --limits.max-series-per-tenant (0: no limit).",
		}, []string{"tenant"}),
		tenants: f.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_tenants",
			Help: "Tenants with open storage.",
		}),
	}
}

// Store is the aggregate tier of all tenants.
type Store struct {
	opts    Options
	reg     prometheus.Registerer
	logger  *slog.Logger
	metrics *storeMetrics
	layout  layout

	mtx     sync.RWMutex
	tenants map[string]*tenantStore
	closed  bool
	// overrides are the per-tenant limits of SetTenantLimits, also for
	// tenants whose storage is not open yet. Guarded by mtx.
	overrides map[string]TenantLimits
}

// TenantLimits are one tenant's overrides of the Options' limits, as the
// cluster's tenant metadata sets them. A zero field keeps the Options'
// value.
type TenantLimits struct {
	// MaxSeries replaces Options.MaxSeriesPerTenant.
	MaxSeries int
}

// SetTenantLimits replaces every tenant's overrides: a tenant missing from
// limits goes back to the Options. Each tenant's next batch sees the new
// limits; a lowered series limit refuses new series only, the series a
// tenant has keep being accepted until they go idle. A tenant with an
// invalid override (a negative field) keeps the Options' limits and is
// named in the error. SetTenantLimits keeps no reference to limits.
func (s *Store) SetTenantLimits(limits map[string]TenantLimits) error {
	var errs []error
	next := make(map[string]TenantLimits, len(limits))
	for id, l := range limits {
		if l.MaxSeries < 0 {
			errs = append(errs, fmt.Errorf("hopwatch/agg: tenant %s: MaxSeries must not be negative, got %d", id, l.MaxSeries))
			continue
		}
		if l != (TenantLimits{}) {
			next[id] = l
		}
	}
	s.mtx.Lock()
	defer s.mtx.Unlock()
	s.overrides = next
	s.applyAllLimits()
	return errors.Join(errs...)
}

// SetDefaultMaxSeries replaces Options.MaxSeriesPerTenant, the series
// limit of every tenant without an override (0: no limit), as the
// cluster's replicated default sets it. Like an override, a lowered limit
// refuses new series only.
func (s *Store) SetDefaultMaxSeries(n int) error {
	if n < 0 {
		return fmt.Errorf("hopwatch/agg: MaxSeriesPerTenant must not be negative, got %d", n)
	}
	s.mtx.Lock()
	defer s.mtx.Unlock()
	s.opts.MaxSeriesPerTenant = n
	s.applyAllLimits()
	return nil
}

// MaxSeries returns the active series limit in force for a tenant (0: no
// limit).
func (s *Store) MaxSeries(tenantID string) int {
	s.mtx.RLock()
	defer s.mtx.RUnlock()
	return s.maxSeries(tenantID)
}

// maxSeries is MaxSeries with s.mtx held.
func (s *Store) maxSeries(tenantID string) int {
	if l := s.overrides[tenantID].MaxSeries; l > 0 {
		return l
	}
	return s.opts.MaxSeriesPerTenant
}

// applyAllLimits sets every open tenant's limits; the caller holds s.mtx.
func (s *Store) applyAllLimits() {
	for _, t := range s.tenants {
		s.applyLimits(t)
	}
}

// applyLimits sets a tenant's limits from the options and overrides. The
// caller holds s.mtx (or is Open).
func (s *Store) applyLimits(t *tenantStore) {
	limit := s.maxSeries(t.id)
	t.maxSeries.Store(int64(limit))
	s.metrics.seriesLimit.WithLabelValues(t.id).Set(float64(limit))
}

// Open opens the store and every tenant already in opts.Dir, replaying
// their WALs. It returns when all data is back in memory.
func Open(opts Options, reg prometheus.Registerer, logger *slog.Logger) (*Store, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/agg: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		// A private registry: metrics are still created, but exported nowhere.
		reg = prometheus.NewRegistry()
	}
	s := &Store{
		opts:    opts,
		reg:     reg,
		logger:  logger,
		metrics: newStoreMetrics(reg),
		tenants: map[string]*tenantStore{},
	}
	s.layout = layout{classic: opts.ClassicHistograms, native: opts.NativeHistograms}
	for _, b := range opts.ClassicBuckets {
		s.layout.boundsSec = append(s.layout.boundsSec, b)
		s.layout.boundsNs = append(s.layout.boundsNs, int64(math.Round(b*1e9)))
		s.layout.leValues = append(s.layout.leValues, formatLe(b))
	}
	s.layout.leValues = append(s.layout.leValues, "+Inf")
	nb, err := nativehist.NewBounds(opts.NativeSchema)
	if err != nil {
		return nil, err
	}
	s.layout.nbounds = nb

	if err := os.MkdirAll(s.tenantsDir(), 0o755); err != nil {
		return nil, fmt.Errorf("hopwatch/agg: create data directory: %w", err)
	}
	entries, err := os.ReadDir(s.tenantsDir())
	if err != nil {
		return nil, fmt.Errorf("hopwatch/agg: read data directory: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() || tenant.Validate(e.Name()) != nil {
			continue
		}
		if _, err := s.openTenant(e.Name()); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Store) tenantsDir() string { return filepath.Join(s.opts.Dir, "tenants") }

// openTenant opens (creating if needed) a tenant's storage and replays its
// WAL. The caller holds s.mtx or is Open.
func (s *Store) openTenant(id string) (*tenantStore, error) {
	dir := filepath.Join(s.tenantsDir(), id)
	t := &tenantStore{
		id:             id,
		dir:            dir,
		store:          s,
		logger:         s.logger.With("tenant", id),
		series:         map[string]*series{},
		seqs:           map[string]streamSeq{},
		lastCheckpoint: time.Now(),
	}
	treg := prometheus.WrapRegistererWith(prometheus.Labels{"tenant": id}, s.reg)

	dbOpts := tsdb.DefaultOptions()
	dbOpts.RetentionDuration = s.opts.Retention.Milliseconds()
	dbOpts.EnableExemplarStorage = s.opts.MaxExemplars > 0
	dbOpts.MaxExemplars = s.opts.MaxExemplars
	db, err := tsdb.Open(filepath.Join(dir, "tsdb"), s.logger.With("tenant", id, "component", "tsdb"), treg, dbOpts, nil)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/agg: tenant %s: open TSDB: %w", id, err)
	}
	t.db = db

	walDir := filepath.Join(dir, "wal")
	first, err := t.loadCheckpoint()
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	w, err := wlog.NewSize(t.logger, prometheus.WrapRegistererWithPrefix("hopwatch_ingest_", treg), walDir, s.opts.WALSegmentSize, compression.None)
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("hopwatch/agg: tenant %s: open WAL: %w", id, err)
	}
	t.wal = w
	if err := t.replay(first); err != nil {
		_ = w.Close()
		_ = db.Close()
		return nil, err
	}
	s.applyLimits(t)
	s.tenants[id] = t
	s.metrics.tenants.Set(float64(len(s.tenants)))
	s.metrics.activeSeries.WithLabelValues(id).Set(float64(len(t.series)))
	return t, nil
}

// errClosed is returned by operations on a closed store.
var errClosed = errors.New("hopwatch/agg: store closed")

func (s *Store) tenant(id string) (*tenantStore, error) {
	s.mtx.RLock()
	t, ok := s.tenants[id]
	closed := s.closed
	s.mtx.RUnlock()
	if closed {
		return nil, errClosed
	}
	if ok {
		return t, nil
	}
	if err := tenant.Validate(id); err != nil {
		return nil, err
	}
	s.mtx.Lock()
	defer s.mtx.Unlock()
	if s.closed {
		return nil, errClosed
	}
	if t, ok := s.tenants[id]; ok {
		return t, nil
	}
	return s.openTenant(id)
}

// Append durably logs a batch for a tenant and adds it to the aggregates.
// When it returns nil the batch survives a crash.
func (s *Store) Append(_ context.Context, tenantID string, b *sample.Batch) error {
	t, err := s.tenant(tenantID)
	if err != nil {
		return err
	}
	return t.append(b)
}

// Prepare decides on a batch for a tenant everything that depends on its
// contents, before anything of it is written: a stream seq already applied
// (sample.ErrDuplicate), and the series over the tenant's series limit,
// which it takes out of b and counts in b.Refused. The batch is applied by
// the returned Prepared's Commit or Apply, or dropped by Abort; until then
// the tenant's other appends wait, so write what else must hold the batch
// (the raw tier) in between and promptly.
func (s *Store) Prepare(_ context.Context, tenantID string, b *sample.Batch) (*Prepared, error) {
	t, err := s.tenant(tenantID)
	if err != nil {
		return nil, err
	}
	return t.prepare(b)
}

// Flush writes the current aggregates of every tenant to its TSDB at now,
// and checkpoints the tenants whose last checkpoint is CheckpointInterval old.
func (s *Store) Flush(ctx context.Context, now time.Time) error {
	start := time.Now()
	var errs []error
	for _, t := range s.snapshotTenants() {
		n, err := t.flush(ctx, now)
		s.metrics.flushSamples.Add(float64(n))
		if err != nil {
			s.metrics.flushFailures.Inc()
			errs = append(errs, err)
			continue
		}
		s.metrics.activeSeries.WithLabelValues(t.id).Set(float64(t.seriesCount()))
		if last, forced := t.checkpointDue(); forced || now.Sub(last) >= s.opts.CheckpointInterval {
			if err := t.checkpoint(now); err != nil {
				s.metrics.checkpointFailed.Inc()
				errs = append(errs, err)
			}
		}
	}
	s.metrics.flushDuration.Observe(time.Since(start).Seconds())
	return errors.Join(errs...)
}

func (s *Store) snapshotTenants() []*tenantStore {
	s.mtx.RLock()
	defer s.mtx.RUnlock()
	ts := make([]*tenantStore, 0, len(s.tenants))
	for _, t := range s.tenants {
		ts = append(ts, t)
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].id < ts[j].id })
	return ts
}

// Tenants returns the IDs of the tenants with storage.
func (s *Store) Tenants() []string {
	var ids []string
	for _, t := range s.snapshotTenants() {
		ids = append(ids, t.id)
	}
	return ids
}

// DB returns a tenant's TSDB, or nil when the tenant has no data.
func (s *Store) DB(tenantID string) *tsdb.DB {
	s.mtx.RLock()
	defer s.mtx.RUnlock()
	if t, ok := s.tenants[tenantID]; ok {
		return t.db
	}
	return nil
}

// Close checkpoints every tenant and closes its WAL and TSDB. Callers that
// want the latest aggregates in the TSDB call Flush first.
func (s *Store) Close() error {
	s.mtx.Lock()
	if s.closed {
		s.mtx.Unlock()
		return nil
	}
	s.closed = true
	s.mtx.Unlock()
	var errs []error
	for _, t := range s.snapshotTenants() {
		if err := t.checkpoint(time.Now()); err != nil {
			errs = append(errs, err)
		}
		if err := t.wal.Close(); err != nil {
			errs = append(errs, fmt.Errorf("hopwatch/agg: tenant %s: close WAL: %w", t.id, err))
		}
		if err := t.db.Close(); err != nil {
			errs = append(errs, fmt.Errorf("hopwatch/agg: tenant %s: close TSDB: %w", t.id, err))
		}
	}
	return errors.Join(errs...)
}

func (t *tenantStore) seriesCount() int {
	t.mtx.Lock()
	defer t.mtx.Unlock()
	return len(t.series)
}

// checkpointDue returns the time of the last checkpoint and whether a
// batch applied without its WAL record needs one now.
func (t *tenantStore) checkpointDue() (last time.Time, forced bool) {
	t.mtx.Lock()
	defer t.mtx.Unlock()
	return t.lastCheckpoint, t.needCheckpoint
}
