package ratelimit

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Options configures a Limiter.
type Options struct {
	// Name is the limited quantity, such as "spans" or "bytes": the value
	// of the limit label on the limiter's metrics and the limiter's key in
	// the exchange, so every node names it the same. Lower case letters,
	// digits and underscores.
	Name string
	// Default is every tenant's cluster-wide limit unless SetTenantLimits
	// overrides it (the --limits.* flags).
	Default Limit
	// IdleTimeout: a tenant without decisions for this long (and whose
	// bucket has refilled) is forgotten, with its metric series. 0 means
	// 10 minutes.
	IdleTimeout time.Duration
	// Clock is the monotonic clock; nil means MonotonicClock().
	Clock Clock
}

// DefaultOptions returns the options of a spans limiter without a limit.
func DefaultOptions() Options {
	return Options{Name: "spans", IdleTimeout: 10 * time.Minute}
}

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// EnsureDefaults fills zero fields.
func (o *Options) EnsureDefaults() {
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 10 * time.Minute
	}
	if o.Clock == nil {
		o.Clock = MonotonicClock()
	}
}

// Validate reports every invalid field.
func (o Options) Validate() error {
	var errs []error
	if !nameRE.MatchString(o.Name) {
		errs = append(errs, fmt.Errorf("hopwatch/ratelimit: Name %q: want lower case letters, digits and underscores", o.Name))
	}
	if err := o.Default.validate("Default"); err != nil {
		errs = append(errs, err)
	}
	if o.IdleTimeout < 0 {
		errs = append(errs, fmt.Errorf("hopwatch/ratelimit: IdleTimeout %v is negative", o.IdleTimeout))
	}
	return errors.Join(errs...)
}

// rebaseAfter bounds a bucket's age: token time grows at the bucket's rate
// from its epoch and must stay within 63 bits (at maxRate, 106 days).
// Maintenance replaces older buckets by equal ones with a new epoch.
const rebaseAfter = int64(time.Hour)

// Limiter admits or refuses batches of one quantity per tenant, on this
// node, from the node's share of each tenant's cluster-wide limit.
//
// Threading: every method is safe for concurrent use. AllowN, Allow and
// ReturnN take no lock and do not allocate once the tenant is known; the
// first decision of a tenant (or after its eviction) takes the limiter's
// mutex to create it. An Exchange maintains the limiter: it sets shares
// and evicts idle tenants; without one, every node admits the whole limit.
type Limiter struct {
	name  string
	clock Clock
	idle  int64

	// tenants maps a tenant ID to its record; lookups take no lock and
	// write nothing (a striped map under read locks would make the hot
	// stripe's reader count one more line that every core writes).
	tenants index

	// mu serialises changes of conf, tenant creation and eviction; conf is
	// read without it.
	mu   sync.Mutex
	conf atomic.Pointer[limitsConf]

	// interval is the exchange interval (1 s until an exchange sets it):
	// the RetryAfter of a node whose share is 0, which the next exchange
	// may change.
	interval atomic.Int64

	metrics *limiterMetrics
	logger  *slog.Logger
}

// limitsConf is the limiter's configuration at one moment; replaced, never
// changed.
type limitsConf struct {
	def       Limit
	overrides map[string]Limit
	// nodes is the number of live members: a tenant whose owner has not
	// answered admits 1/nodes of its limit here.
	nodes int
}

func (c *limitsConf) limit(tenant string) Limit {
	if o, ok := c.overrides[tenant]; ok {
		return o.resolve(c.def)
	}
	return c.def.resolve(Limit{})
}

// New returns a limiter. A nil registerer registers nothing, a nil logger
// discards.
func New(opts Options, reg prometheus.Registerer, logger *slog.Logger) (*Limiter, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{
		name:   opts.Name,
		clock:  opts.Clock,
		idle:   int64(opts.IdleTimeout),
		logger: logger.With("component", "ratelimit", "limit", opts.Name),
	}
	l.conf.Store(&limitsConf{def: opts.Default, nodes: 1})
	l.interval.Store(int64(time.Second))
	m, err := newLimiterMetrics(l, reg)
	if err != nil {
		return nil, err
	}
	l.metrics = m
	return l, nil
}

// Name returns the limited quantity's name (Options.Name).
func (l *Limiter) Name() string { return l.name }

// Allow is AllowN(tenant, 1).
func (l *Limiter) Allow(tenant string) Decision { return l.AllowN(tenant, 1) }

// AllowN decides on a batch of n units (spans, bytes) of a tenant at once:
// either all are admitted or none. The decision reads the tenant's pocket
// on this processor and, when the pocket cannot cover the batch, the
// monotonic clock and the tenant's bucket (pocket.go); nothing else: no
// lock, no network, no allocation once the tenant is known. n <= 0 is
// admitted.
func (l *Limiter) AllowN(tenant string, n int64) Decision {
	n = max(n, 0)
	t := l.tenant(tenant)
	if n > t.maxBatch.Load() {
		t.maxBatch.Store(n) // racy max: a lost update only delays the floor
	}
	p := t.pocket()
	var b *bucket
	if p.spend(n) {
		p.admitted.Add(n)
		b = t.b.Load()
	} else if missing := l.allowFromBucket(&b, t, p, tenant, n); missing > 0 {
		return Decision{RetryAfter: b.wait(missing, time.Duration(l.interval.Load())), lim: &b.lim}
	}
	return Decision{Allowed: true, lim: &b.lim}
}

// growForBatch raises the burst of the tenant's bucket b, which refused a
// batch of n units larger than it, to hold n (the tenant's global burst
// allows n): a node's part of the burst must never be smaller than one
// request, or the node refuses every such request whatever the load. The
// bucket keeps its level, except that a full bucket stays full: it has
// been idle for as long as a global bucket takes to fill (burst/rate is
// the same at every share), and a global bucket would take the batch. It
// reports whether the bucket grew; false when another reconfiguration
// replaced b meanwhile. Refusals of this kind are rare (the first batch of
// a new size), so taking t.mu here costs the hot path nothing.
func (l *Limiter) growForBatch(t *tenant, b *bucket, n int64) bool {
	now := l.clock.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.b.Load() != b || b.gone || b.unlimited {
		return false
	}
	t.batch = max(t.batch, n)
	level := b.retire(now)
	if pocketed := t.reclaim(); level < math.MaxInt64-pocketed {
		level += pocketed
	}
	if level >= b.lim.local.Burst && b.lim.local.Rate > 0 {
		level = math.MaxInt64
	}
	t.b.Store(newBucket(now, t.localLimit(b.lim.global), b.lim.global, level, len(t.pockets)))
	return true
}

// allowFromBucket decides on a batch that the pocket p could not cover,
// and sets *bp to the bucket that decided. It returns 0 if the batch is
// admitted, else how many units are missing. (Scalars rather than a
// Decision: a struct returned through two calls is copied through memory
// twice, which costs a refusal more than its arithmetic.)
func (l *Limiter) allowFromBucket(bp **bucket, t *tenant, p *pocket, id string, n int64) (missing int64) {
	reclaimed := false
	for {
		b := t.b.Load()
		*bp = b
		if b.unlimited {
			p.admitted.Add(n)
			return 0
		}
		o, got, missing := b.take(l.clock.Now(), n, b.lease)
		switch o {
		case admitted:
			if got > 0 {
				p.tokens.Add(got)
				if !t.leased.Load() {
					t.leased.Store(true)
				}
			}
			p.admitted.Add(n)
			return 0
		case refused:
			if !reclaimed && t.leased.Load() {
				// Tokens may sit in other processors' pockets: put them
				// back and decide again.
				reclaimed = true
				if tokens := t.reclaim(); tokens > 0 && b.give(l.clock.Now(), tokens) == admitted {
					continue
				}
			}
			if n > b.lim.local.Burst && n <= b.lim.global.Burst && l.growForBatch(t, b, n) {
				continue // the bucket now holds the batch: decide again
			}
			p.refused.Add(n)
			return missing
		}
		t = l.current(t, b, id)
		p = t.pocket()
	}
}

// ReturnN gives back n units that AllowN admitted for tenant when the
// batch was refused after all (by another limit): they go back into the
// bucket, up to its size. The admission stays counted.
func (l *Limiter) ReturnN(tenantID string, n int64) {
	if n <= 0 {
		return
	}
	now := l.clock.Now()
	t := l.tenants.load(tenantID)
	if t == nil {
		return // evicted since: its bucket was full
	}
	for {
		b := t.b.Load()
		if b.give(now, n) == admitted {
			return
		}
		if b.gone {
			return
		}
		t = l.current(t, b, tenantID)
	}
}

// current returns the tenant to try again after its bucket b was found
// retired: the same tenant once its new bucket is in place, or the
// tenant's new record if it was evicted.
func (l *Limiter) current(t *tenant, b *bucket, id string) *tenant {
	if b.gone {
		return l.create(id)
	}
	if t.b.Load() == b {
		// A reconfiguration is between retiring b and storing its
		// successor, a few instructions away.
		runtime.Gosched()
	}
	return t
}

func (l *Limiter) tenant(id string) *tenant {
	if t := l.tenants.load(id); t != nil {
		return t
	}
	return l.create(id)
}

// create makes a tenant's record with a full bucket at the share every
// node assumes before the owner answers: 1/nodes.
func (l *Limiter) create(id string) *tenant {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t := l.tenants.loadLive(id); t != nil {
		return t
	}
	// The ID may be a view into a request buffer: keep a copy.
	id = strings.Clone(id)
	c := l.conf.Load()
	now := l.clock.Now()
	t := &tenant{id: id, state: shareInitial, pockets: make([]pocket, runtime.GOMAXPROCS(0))}
	t.share = 1 / float64(c.nodes)
	t.lastAt, t.idleSince = now, now
	g := c.limit(id)
	t.b.Store(newBucket(now, t.localLimit(g), g, math.MaxInt64, len(t.pockets)))
	l.tenants.add(t)
	l.metrics.tenants.Inc()
	return t
}

// SetTenantLimits replaces every tenant's override of the default limit
// (a zero field keeps the default's). Tenants not in overrides go back to
// the default. An invalid override is refused, naming the tenant, and
// that tenant keeps the default; the others apply. Buckets keep their
// level (up to the new size): a raised limit refills faster, it does not
// refill at once.
func (l *Limiter) SetTenantLimits(overrides map[string]Limit) error {
	var errs []error
	valid := make(map[string]Limit, len(overrides))
	for _, id := range slices.Sorted(maps.Keys(overrides)) {
		if err := overrides[id].validate("tenant " + id); err != nil {
			errs = append(errs, err)
			continue
		}
		valid[id] = overrides[id]
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.conf.Load()
	c := &limitsConf{def: old.def, overrides: valid, nodes: old.nodes}
	l.install(c)
	return errors.Join(errs...)
}

// install makes c the limits in force and reconfigures every tenant whose
// limit it changes. The caller holds l.mu.
func (l *Limiter) install(c *limitsConf) {
	l.conf.Store(c)
	now := l.clock.Now()
	l.tenants.each(func(t *tenant) {
		t.mu.Lock()
		if g := c.limit(t.id); g != t.b.Load().lim.global {
			t.reconfigure(now, g)
		}
		t.mu.Unlock()
	})
}

// SetDefault replaces the default limit, that of every tenant without an
// override (an override's zero fields take it too). Buckets keep their
// level, as with SetTenantLimits. An invalid limit is refused and the
// default in force stays.
func (l *Limiter) SetDefault(def Limit) error {
	if err := def.validate("default"); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.conf.Load()
	if old.def == def {
		return nil
	}
	c := &limitsConf{def: def, overrides: old.overrides, nodes: old.nodes}
	l.install(c)
	return nil
}

// Admitted returns the units admitted for a tenant on this node since it
// was last created (the limiter forgets a tenant idle for the idle
// timeout). The benchmarks read it.
func (l *Limiter) Admitted(tenant string) int64 {
	t := l.tenants.load(tenant)
	if t == nil {
		return 0
	}
	a, _ := t.counts()
	return a
}

// Limit returns the tenant's cluster-wide limit.
func (l *Limiter) Limit(tenant string) Limit { return l.conf.Load().limit(tenant) }

// setNodes sets the number of live members: tenants the owner has not
// answered for take 1/nodes of their limit.
func (l *Limiter) setNodes(nodes int) {
	nodes = max(nodes, 1)
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.conf.Load()
	if old.nodes == nodes {
		return
	}
	c := &limitsConf{def: old.def, overrides: old.overrides, nodes: nodes}
	l.conf.Store(c)
	now := l.clock.Now()
	l.tenants.each(func(t *tenant) {
		t.mu.Lock()
		if t.state != shareAssigned {
			t.share = 1 / float64(nodes)
			t.reconfigure(now, t.b.Load().lim.global)
		}
		t.mu.Unlock()
	})
}

// shareState says where a tenant's share on this node comes from.
type shareState uint8

const (
	// shareInitial: 1/nodes, until the owner first answers.
	shareInitial shareState = iota
	// shareAssigned: the owner's answer.
	shareAssigned
	// shareFallback: 1/nodes, because the owner has not answered for the
	// exchange timeout.
	shareFallback
)

// tenant is one tenant's record in a Limiter.
//
// Layout: the first line is read by every decision and written about once
// per exchange interval (b on reconfigurations; maxBatch when a batch is
// larger than any before; leased when a lease follows a reclaim); the
// decisions' writes go to the pockets (see pocket.go) and, when a pocket
// runs dry, to the bucket, never here, so this line stays in every core's
// cache. The rest belongs to the exchange and reconfigurations.
type tenant struct {
	b        atomic.Pointer[bucket]
	maxBatch atomic.Int64 // largest batch since the last measuring sweep
	id       string
	pockets  []pocket // one per processor, fixed at creation
	leased   atomic.Bool
	_        [cacheLine - 8 - 8 - 16 - 24 - 4]byte

	// Under mu: written by the exchange and by reconfigurations.
	mu                  sync.Mutex
	share               float64
	state               shareState
	assignedAt          int64 // monotonic ns of the owner's last answer
	lastOffered, lastAt int64 // admitted+refused at the last measuring sweep, and when
	idleSince           int64 // monotonic ns of the last sweep that saw no decision
	demand              float64
	measured            bool  // demand holds a figure
	batch               int64 // largest batch offered in the last measured span with decisions
}

// counts returns the units the tenant admitted and refused.
func (t *tenant) counts() (admitted, refused int64) {
	for i := range t.pockets {
		admitted += t.pockets[i].admitted.Load()
		refused += t.pockets[i].refused.Load()
	}
	return admitted, refused
}

// reconfigure replaces the tenant's bucket by one for the global limit g at
// the tenant's share, with the old bucket's level. The old bucket's final
// state comes from an atomic swap, so no decision on it is lost. t.mu is
// held.
func (t *tenant) reconfigure(now int64, g Limit) { t.reconfigureCapped(now, g, math.MaxInt64) }

// reconfigureCapped is reconfigure with the new level at most maxLevel.
func (t *tenant) reconfigureCapped(now int64, g Limit, maxLevel int64) {
	old := t.b.Load()
	if old.gone {
		return
	}
	level := old.retire(now)
	if pocketed := t.reclaim(); level < math.MaxInt64-pocketed {
		level += pocketed
	}
	t.b.Store(newBucket(now, t.localLimit(g), g, min(level, maxLevel), len(t.pockets)))
}

// localLimit is this node's part of a tenant's global limit: the share of
// its rate, and the share of its burst but no less than two of the largest
// batches offered here lately (up to the whole burst). One batch is the
// least that lets a batch pass at all (the even split of a burst of 150
// over two nodes would refuse every request of 100 at any load); the
// second holds what accrues while the next batch is on its way: with room
// for one only, a node offered more than its share throws away the tokens
// that accrue past a batch between two requests, and admits less than its
// share (measured in TestBurstSplit: 4-5% less at 150% of the limit with
// batches of a tenth of it). The node's buckets hold more than a global
// bucket would only by these batches. t.mu is held.
func (t *tenant) localLimit(g Limit) Limit {
	if g.Unlimited() {
		return g
	}
	share := min(max(t.share, 0), 1)
	burst := max(int64(math.Ceil(float64(g.Burst)*share)), min(satAdd(t.batch, t.batch), g.Burst), 1)
	return Limit{Rate: g.Rate * share, Burst: burst}
}

// satAdd is a + b, at most math.MaxInt64 (a, b >= 0).
func satAdd(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// tenantDemand is one tenant's demand measured by sweep.
type tenantDemand struct {
	t      *tenant
	demand float64 // units per second offered over the last measured span
}

// sweep measures each tenant's demand since the last measurement (when at
// least half an interval ago), appends it to dst, evicts the tenants idle
// for the idle timeout whose bucket is full, and rebases old buckets. The
// exchange calls it every round: once per interval, and on early rounds.
func (l *Limiter) sweep(now int64, dst []tenantDemand) []tenantDemand {
	l.mu.Lock()
	defer l.mu.Unlock()
	// Evicted records leave the snapshot in one rebuild at the end; until
	// then, a decision that finds one waits for l.mu in create.
	defer l.tenants.rebuild()
	l.tenants.each(func(t *tenant) {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.b.Load().gone {
			return
		}
		admitted, refused := t.counts()
		offered := admitted + refused
		if offered != t.lastOffered {
			t.idleSince = now
		}
		// Demand and the largest batch are measured over at least half an
		// interval: a round that comes early (the ring changed, a capped
		// share asked again) keeps the last figures rather than report the
		// noise of a few milliseconds; a tenant's first figure is taken
		// whatever the span.
		if dt := now - t.lastAt; dt > 0 && (2*dt >= l.interval.Load() || !t.measured) {
			t.measured = true
			if mb := t.maxBatch.Swap(0); mb > 0 && mb != t.batch {
				t.batch = mb
				t.reconfigure(now, t.b.Load().lim.global)
			}
			t.demand = float64(offered-t.lastOffered) * 1e9 / float64(dt)
			t.lastOffered, t.lastAt = offered, now
		}
		b := t.b.Load()
		if now-t.idleSince >= l.idle && l.evict(now, t) {
			return
		}
		if now-b.epoch >= rebaseAfter {
			t.reconfigure(now, b.lim.global)
		}
		dst = append(dst, tenantDemand{t: t, demand: t.demand})
	})
	return dst
}

// evict forgets an idle tenant if its bucket is full: a new record starts
// full, so forgetting loses nothing. A decision racing the eviction finds
// the gone bucket and looks the tenant up again. l.mu and t.mu are held.
func (l *Limiter) evict(now int64, t *tenant) bool {
	old := t.b.Load()
	if !old.unlimited && old.level(old.full.Load(), old.tokensAt(now)) < old.lim.local.Burst {
		return false // not refilled yet
	}
	if level := old.retire(now); !old.unlimited && level < old.lim.local.Burst {
		// Used between the two looks: keep it.
		t.b.Store(newBucket(now, old.lim.local, old.lim.global, level, len(t.pockets)))
		return false
	}
	t.reclaim() // a full bucket: what the pockets held is forgotten with it
	gone := &bucket{}
	gone.gone = true
	gone.full.Store(retired)
	t.b.Store(gone)
	l.metrics.tenants.Dec()
	l.metrics.evictions.Inc()
	l.logger.Debug("idle tenant evicted", "tenant", t.id)
	return true
}

// applyShare sets a tenant's share as its owner answered it.
//
// When the new share admits less than the demand this node just reported
// (the tenant is over its limit across the cluster) and there are other
// nodes, the bucket keeps at most one batch: a global bucket under that
// load would be empty, its tokens taken by the nodes now refused. Without
// this, tokens a node banked while its share exceeded its load (the
// interval after the load moved away from it) would be spent on top of
// the limit once its share shrinks. The one batch is the tokens accruing
// towards the next batch, which emptying would throw away at every
// exchange (measured: 5% of the limit with batches of 1% of it). A single
// node keeps its bucket: it is the global one.
func (l *Limiter) applyShare(now int64, t *tenant, share float64) {
	c := l.conf.Load()
	g := c.limit(t.id)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.state, t.assignedAt = shareAssigned, now
	saturated := c.nodes > 1 && share*g.Rate < t.demand
	if b := t.b.Load(); share != t.share || b.lim.global != g || saturated {
		t.share = share
		maxLevel := int64(math.MaxInt64)
		if saturated {
			maxLevel = t.batch
		}
		t.reconfigureCapped(now, g, maxLevel)
	}
}

// fallBack sets the even split on a tenant whose owner did not answer,
// unless the owner's last answer is younger than timeout ns: a share known
// a moment ago is closer to right than the even split.
func (l *Limiter) fallBack(now int64, t *tenant, timeout int64) {
	c := l.conf.Load()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.state == shareFallback || t.state == shareAssigned && now-t.assignedAt < timeout {
		return
	}
	if t.state == shareAssigned {
		l.logger.Warn("tenant's share falls back to the even split: its owner has not answered", "tenant", t.id, "nodes", c.nodes)
	}
	t.state = shareFallback
	if share := 1 / float64(c.nodes); share != t.share {
		t.share = share
		t.reconfigure(now, c.limit(t.id))
	}
}

// countFallback sets the fallback gauge: tenants at the even split because
// their owner did not answer.
func (l *Limiter) countFallback() {
	var n int
	l.tenants.each(func(t *tenant) {
		t.mu.Lock()
		if t.state == shareFallback && !t.b.Load().gone {
			n++
		}
		t.mu.Unlock()
	})
	l.metrics.fallback.Set(float64(n))
}
