// Package watermark tracks how far in event time each writer of a tenant
// has delivered, and from it the tenant's watermark: the point in time up
// to which the tenant's data is complete.
//
// A writer is one producer of data: an OTLP resource (its
// service.instance.id) or a stream with an explicit writer id. Its
// position is the latest event time it has delivered (or promised, with a
// heartbeat). A tenant's watermark is the minimum position over its active
// writers, so a window that ends at or before the watermark has all its
// data and can be evaluated without missing late spans.
//
// Two ways out of the minimum keep one writer from holding a tenant back
// for ever:
//   - A writer silent for longer than the heartbeat timeout is idle and
//     leaves the minimum; its next write brings it back.
//   - A writer can be excluded by API at once, without closing its streams
//     and without waiting for the timeout. Its data is still accepted. The
//     exclusion lasts until the writer is included again by API: a write
//     does not end it, since an excluded writer is typically one that keeps
//     writing behind (a backfill, a node catching up) and would otherwise
//     pull the watermark back with its very next batch.
//
// The watermark never goes backwards: a writer that joins, or comes back,
// behind it delivers late data for windows already complete. With no
// active writer the watermark follows the wall clock, and it never runs
// ahead of it.
//
// The tracker is hand-written because it is hopwatch's own core: it sits on
// the ingest path (one map lookup under a per-tenant lock per request, no
// allocation for a known writer) and its semantics (exclusion, idle
// timeout, monotonicity) are what the alerting gate relies on.
package watermark

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// State is where a writer stands with respect to its tenant's watermark.
type State uint8

// The states.
const (
	// Active writers hold the watermark.
	Active State = iota + 1
	// Idle writers have been silent longer than the heartbeat timeout.
	Idle
	// Excluded writers were taken out by API.
	Excluded
)

func (s State) String() string {
	switch s {
	case Active:
		return "active"
	case Idle:
		return "idle"
	case Excluded:
		return "excluded"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Options configure a Tracker.
type Options struct {
	// HeartbeatTimeout is how long a writer may stay silent before it
	// leaves its tenant's watermark.
	HeartbeatTimeout time.Duration
	// ForgetAfter is how long an idle writer is remembered (and listed)
	// before it is dropped. Excluded writers are kept until included.
	ForgetAfter time.Duration
	// MaxWritersPerTenant bounds the writers tracked per tenant; writes
	// from writers beyond it are not tracked, and counted.
	MaxWritersPerTenant int
}

// DefaultOptions returns the tracker's defaults.
func DefaultOptions() Options {
	return Options{HeartbeatTimeout: 30 * time.Second, ForgetAfter: time.Hour, MaxWritersPerTenant: 10000}
}

// Validate checks the options.
func (o Options) Validate() error {
	var errs []error
	if o.HeartbeatTimeout <= 0 {
		errs = append(errs, fmt.Errorf("watermark heartbeat timeout must be positive, got %s", o.HeartbeatTimeout))
	}
	if o.ForgetAfter < o.HeartbeatTimeout {
		errs = append(errs, fmt.Errorf("watermark forget-after (%s) must be at least the heartbeat timeout (%s)", o.ForgetAfter, o.HeartbeatTimeout))
	}
	if o.MaxWritersPerTenant <= 0 {
		errs = append(errs, fmt.Errorf("max writers per tenant must be positive, got %d", o.MaxWritersPerTenant))
	}
	return errors.Join(errs...)
}

// ErrUnknownWriter is returned when a tenant has no writer of that id.
var ErrUnknownWriter = errors.New("no such writer")

// Writer is a snapshot of one writer.
type Writer struct {
	ID    string
	State State
	// Position is the writer's event-time position, Unix ns (0: none yet).
	Position int64
	// LastWrite is when the writer last wrote, Unix ns.
	LastWrite int64
}

type writer struct {
	pos, lastWrite int64
	excluded       bool
}

type tenant struct {
	mtx     sync.Mutex
	writers map[string]*writer
	// mark is the watermark last computed, Unix ns; it only grows.
	mark      atomic.Int64
	untracked atomic.Int64
}

// Tracker tracks the writers and watermarks of every tenant. It is safe
// for concurrent use.
type Tracker struct {
	opts    Options
	mtx     sync.RWMutex
	tenants map[string]*tenant
	// pinned holds the exclusions replicated across the cluster, by tenant
	// and writer (see SetExclusions); nil when exclusions are local.
	pinned map[string]map[string]bool
}

// New returns a tracker; reg, if not nil, receives its metrics, which are
// computed when scraped.
func New(opts Options, reg prometheus.Registerer) (*Tracker, error) {
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	t := &Tracker{opts: opts, tenants: map[string]*tenant{}}
	if reg != nil {
		if err := reg.Register(collector{t}); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *Tracker) tenant(id string, create bool) *tenant {
	t.mtx.RLock()
	tn := t.tenants[id]
	t.mtx.RUnlock()
	if tn != nil || !create {
		return tn
	}
	t.mtx.Lock()
	defer t.mtx.Unlock()
	if tn = t.tenants[id]; tn == nil {
		tn = &tenant{writers: map[string]*writer{}}
		t.tenants[id] = tn
	}
	return tn
}

// Observe records that writer wrote at now (Unix ns) and has delivered
// everything up to position (Unix ns). It does not allocate for a known
// writer.
func (t *Tracker) Observe(tenantID string, writerID []byte, position, now int64) {
	tn := t.tenant(tenantID, true)
	tn.mtx.Lock()
	defer tn.mtx.Unlock()
	w := tn.writers[string(writerID)]
	if w == nil {
		if len(tn.writers) >= t.opts.MaxWritersPerTenant {
			tn.untracked.Add(1)
			return
		}
		w = &writer{excluded: t.isPinned(tenantID, string(writerID))}
		tn.writers[string(writerID)] = w
	}
	w.pos = max(w.pos, position)
	w.lastWrite = max(w.lastWrite, now)
}

// Mark returns the tenant's watermark as last computed, without computing
// it: cheap enough for the ingest path. 0 means none yet.
func (t *Tracker) Mark(tenantID string) int64 {
	if tn := t.tenant(tenantID, false); tn != nil {
		return tn.mark.Load()
	}
	return 0
}

// Watermark computes the tenant's watermark at now (Unix ns). ok is false
// for a tenant that has never written.
func (t *Tracker) Watermark(tenantID string, now int64) (mark int64, ok bool) {
	tn := t.tenant(tenantID, false)
	if tn == nil {
		return 0, false
	}
	tn.mtx.Lock()
	defer tn.mtx.Unlock()
	return t.update(tn, now), true
}

// update recomputes the watermark and forgets long-idle writers; the
// caller holds tn.mtx.
func (t *Tracker) update(tn *tenant, now int64) int64 {
	low := int64(math.MaxInt64)
	for id, w := range tn.writers {
		switch t.state(w, now) {
		case Active:
			low = min(low, w.pos)
		case Idle:
			if now-w.lastWrite > t.opts.ForgetAfter.Nanoseconds() {
				delete(tn.writers, id)
			}
		}
	}
	mark := min(low, now) // no active writer: the wall clock
	if prev := tn.mark.Load(); mark > prev {
		tn.mark.Store(mark)
		return mark
	}
	return tn.mark.Load()
}

func (t *Tracker) state(w *writer, now int64) State {
	switch {
	case w.excluded:
		return Excluded
	case now-w.lastWrite > t.opts.HeartbeatTimeout.Nanoseconds():
		return Idle
	}
	return Active
}

// Writers returns the tenant's watermark at now and its writers, sorted
// by id.
func (t *Tracker) Writers(tenantID string, now int64) (mark int64, ws []Writer) {
	tn := t.tenant(tenantID, false)
	if tn == nil {
		return 0, nil
	}
	tn.mtx.Lock()
	defer tn.mtx.Unlock()
	mark = t.update(tn, now)
	for id, w := range tn.writers {
		ws = append(ws, t.snapshot(id, w, now))
	}
	slices.SortFunc(ws, func(a, b Writer) int { return cmp.Compare(a.ID, b.ID) })
	return mark, ws
}

func (t *Tracker) snapshot(id string, w *writer, now int64) Writer {
	return Writer{ID: id, State: t.state(w, now), Position: w.pos, LastWrite: w.lastWrite}
}

// Exclude takes a writer out of its tenant's watermark until Include.
func (t *Tracker) Exclude(tenantID, writerID string, now int64) (Writer, error) {
	return t.setExcluded(tenantID, writerID, true, now)
}

// Include ends a writer's exclusion.
func (t *Tracker) Include(tenantID, writerID string, now int64) (Writer, error) {
	return t.setExcluded(tenantID, writerID, false, now)
}

func (t *Tracker) setExcluded(tenantID, writerID string, excluded bool, now int64) (Writer, error) {
	tn := t.tenant(tenantID, false)
	if tn == nil {
		return Writer{}, fmt.Errorf("%w %q for tenant %q: the tenant has not written yet", ErrUnknownWriter, writerID, tenantID)
	}
	tn.mtx.Lock()
	defer tn.mtx.Unlock()
	w := tn.writers[writerID]
	if w == nil {
		return Writer{}, fmt.Errorf("%w %q for tenant %q (list the tenant's writers to see their ids)", ErrUnknownWriter, writerID, tenantID)
	}
	w.excluded = excluded
	t.update(tn, now)
	return t.snapshot(writerID, w, now), nil
}

func (t *Tracker) isPinned(tenantID, writerID string) bool {
	t.mtx.RLock()
	defer t.mtx.RUnlock()
	return t.pinned[tenantID][writerID]
}

// SetExclusions makes the excluded writers exactly those given, by tenant:
// the exclusions replicated across the cluster, applied on every node
// alike. A writer listed but not seen yet starts excluded when it first
// writes. With SetExclusions in use, Exclude and Include are not.
func (t *Tracker) SetExclusions(byTenant map[string][]string, now int64) {
	pinned := make(map[string]map[string]bool, len(byTenant))
	for tn, ws := range byTenant {
		pinned[tn] = make(map[string]bool, len(ws))
		for _, w := range ws {
			pinned[tn][w] = true
		}
	}
	t.mtx.Lock()
	t.pinned = pinned
	tenants := make(map[string]*tenant, len(t.tenants))
	maps.Copy(tenants, t.tenants)
	t.mtx.Unlock()
	for id, tn := range tenants {
		tn.mtx.Lock()
		for wid, w := range tn.writers {
			w.excluded = pinned[id][wid]
		}
		t.update(tn, now)
		tn.mtx.Unlock()
	}
}

// Pinned returns the writers of a tenant excluded through SetExclusions.
func (t *Tracker) Pinned(tenantID string) []string {
	t.mtx.RLock()
	defer t.mtx.RUnlock()
	return slices.Sorted(maps.Keys(t.pinned[tenantID]))
}

// Writer returns one writer's state at now; ok is false for a writer the
// tenant has not had (or has forgotten).
func (t *Tracker) Writer(tenantID, writerID string, now int64) (w Writer, ok bool) {
	tn := t.tenant(tenantID, false)
	if tn == nil {
		return Writer{}, false
	}
	tn.mtx.Lock()
	defer tn.mtx.Unlock()
	t.update(tn, now)
	if wr := tn.writers[writerID]; wr != nil {
		return t.snapshot(writerID, wr, now), true
	}
	return Writer{}, false
}

// DeleteTenant forgets a tenant.
func (t *Tracker) DeleteTenant(tenantID string) {
	t.mtx.Lock()
	defer t.mtx.Unlock()
	delete(t.tenants, tenantID)
}

var (
	descMark = prometheus.NewDesc("hopwatch_watermark_seconds",
		"The tenant's watermark, Unix seconds: the minimum event-time position over its active writers; windows ending at or before it are complete.",
		[]string{"tenant"}, nil)
	descLag = prometheus.NewDesc("hopwatch_watermark_lag_seconds",
		"Wall clock minus the tenant's watermark.",
		[]string{"tenant"}, nil)
	descWriters = prometheus.NewDesc("hopwatch_watermark_writers",
		"The tenant's writers by state (active, idle, excluded).",
		[]string{"tenant", "state"}, nil)
	descUntracked = prometheus.NewDesc("hopwatch_watermark_untracked_writes_total",
		"Writes from writers beyond the per-tenant writer limit, not tracked in the watermark.",
		[]string{"tenant"}, nil)
)

// collector computes the watermark metrics at scrape time.
type collector struct{ t *Tracker }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descMark
	ch <- descLag
	ch <- descWriters
	ch <- descUntracked
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now().UnixNano()
	c.t.mtx.RLock()
	ids := make([]string, 0, len(c.t.tenants))
	for id := range c.t.tenants {
		ids = append(ids, id)
	}
	c.t.mtx.RUnlock()
	for _, id := range ids {
		tn := c.t.tenant(id, false)
		if tn == nil {
			continue
		}
		var counts [Excluded + 1]int
		tn.mtx.Lock()
		mark := c.t.update(tn, now)
		for _, w := range tn.writers {
			counts[c.t.state(w, now)]++
		}
		tn.mtx.Unlock()
		ch <- prometheus.MustNewConstMetric(descMark, prometheus.GaugeValue, float64(mark)/1e9, id)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(now-mark)/1e9, id)
		for s := Active; s <= Excluded; s++ {
			ch <- prometheus.MustNewConstMetric(descWriters, prometheus.GaugeValue, float64(counts[s]), id, s.String())
		}
		ch <- prometheus.MustNewConstMetric(descUntracked, prometheus.CounterValue, float64(tn.untracked.Load()), id)
	}
}
