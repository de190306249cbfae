package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"sync"
	"time"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ExchangeOptions configures an Exchange.
type ExchangeOptions struct {
	// Membership is the ring; required.
	Membership Membership
	// Limiters are the limiters whose shares the exchange keeps, with
	// distinct names; every node must run the same names. A limiter
	// belongs to one exchange.
	Limiters []*Limiter
	// Interval is how often this node reports its demand and receives its
	// shares. 0 means 1 s. Every node should use the same.
	Interval time.Duration
	// Timeout: an owner forgets a node's report this old, which gives the
	// node's share to the others; a node whose owner has not answered for
	// this long admits limit/n. 0 means 3 intervals.
	Timeout time.Duration
	// RequestTimeout bounds one call to an owner. 0 means half an interval.
	RequestTimeout time.Duration
	// DialOptions are used to reach the other nodes' internal gRPC
	// listeners; nil means plain text (insecure.NewCredentials), as on a
	// trusted network.
	DialOptions []grpc.DialOption
	// Clock is the monotonic clock; nil means the limiters' clock. It must
	// be the limiters' clock: Validate refuses another.
	Clock Clock
}

// EnsureDefaults fills zero fields.
func (o *ExchangeOptions) EnsureDefaults() {
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 3 * o.Interval
	}
	if o.RequestTimeout == 0 {
		o.RequestTimeout = o.Interval / 2
	}
	if o.DialOptions == nil {
		o.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	if o.Clock == nil {
		o.Clock = MonotonicClock()
		for _, l := range o.Limiters {
			if l != nil {
				o.Clock = l.clock
				break
			}
		}
	}
}

// sameClock reports whether a and b are the same clock, when their types
// can tell (a clock of a type without equality is taken on trust).
func sameClock(a, b Clock) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	if ta != tb {
		return false
	}
	return !ta.Comparable() || a == b
}

// Validate reports every invalid field.
func (o ExchangeOptions) Validate() error {
	var errs []error
	bad := func(format string, args ...any) {
		errs = append(errs, fmt.Errorf("hopwatch/ratelimit: "+format, args...))
	}
	if o.Membership == nil {
		bad("Membership is nil")
	}
	names := map[string]bool{}
	for i, l := range o.Limiters {
		switch {
		case l == nil:
			bad("Limiters[%d] is nil", i)
		case names[l.name]:
			bad("Limiters[%d]: a second limiter named %q", i, l.name)
		case o.Clock != nil && !sameClock(l.clock, o.Clock):
			bad("Limiters[%d] (%q) reads another clock than the exchange: the shares it applies would be dated on the wrong clock", i, l.name)
		default:
			names[l.name] = true
		}
	}
	if o.Interval <= 0 {
		bad("Interval %v is not positive", o.Interval)
	}
	if o.Timeout < o.Interval {
		bad("Timeout %v is shorter than Interval %v: every report would be forgotten before the next", o.Timeout, o.Interval)
	}
	if o.RequestTimeout <= 0 || o.RequestTimeout > o.Interval {
		bad("RequestTimeout %v is not between 0 and Interval %v", o.RequestTimeout, o.Interval)
	}
	return errors.Join(errs...)
}

// Exchange keeps the shares of its limiters' tenants on this node: it
// reports demand to each tenant's owner every interval, and, as the owner
// of some tenants, answers the other nodes.
//
// Threading: Run is called once, by the goroutine that owns the exchange;
// it returns when its context ends, having closed its connections and
// stopped its ticker. The gRPC service registered by RegisterGRPC may be
// called at any time, before and after Run.
type Exchange struct {
	opts     ExchangeOptions
	limiters map[string]*Limiter
	clock    Clock
	owner    *ownerTable
	conns    *connPool
	metrics  *exchangeMetrics
	logger   *slog.Logger

	// failing holds the owners whose last call failed, for logging once
	// per change; ring is the ring of the last round. Only rounds touch
	// them, and rounds do not overlap.
	failing map[string]bool
	ring    []Member

	// recheckAfter is the first delay before asking again after a capped
	// answer (Interval/20); each further one doubles it.
	recheckAfter time.Duration
}

// NewExchange returns an exchange over opts.Limiters. A nil registerer
// registers nothing, a nil logger discards.
func NewExchange(opts ExchangeOptions, reg prometheus.Registerer, logger *slog.Logger) (*Exchange, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	m, err := newExchangeMetrics(reg)
	if err != nil {
		return nil, err
	}
	e := &Exchange{
		opts:     opts,
		limiters: map[string]*Limiter{},
		clock:    opts.Clock,
		owner: &ownerTable{
			self:    opts.Membership.Self(),
			timeout: int64(opts.Timeout),
			warmup:  int64(opts.Interval + opts.RequestTimeout),
			tenants: map[ownedKey]*owned{},
		},
		conns:   &connPool{opts: opts.DialOptions, conns: map[string]*grpc.ClientConn{}},
		metrics: m,
		logger:  logger.With("component", "ratelimit"),
		failing: map[string]bool{},

		recheckAfter: opts.Interval / 20,
	}
	ms := opts.Membership.Members()
	for _, l := range opts.Limiters {
		e.limiters[l.name] = l
		// Decisions before the first round admit limit/n.
		l.setNodes(liveCount(ms))
		l.interval.Store(int64(opts.Interval))
	}
	return e, nil
}

// RegisterGRPC registers RateLimitService on the node's internal gRPC
// server (the one other nodes reach at the members' GRPCAddr).
func (e *Exchange) RegisterGRPC(s grpc.ServiceRegistrar) {
	hopwatchv1.RegisterRateLimitServiceServer(s, &service{e: e})
}

// Run exchanges demand and shares every interval until ctx ends.
func (e *Exchange) Run(ctx context.Context) {
	t := time.NewTicker(e.opts.Interval)
	defer t.Stop()
	defer e.conns.close()
	var changed <-chan struct{} // nil: the ring is read at each tick only
	if w, ok := e.opts.Membership.(Watcher); ok {
		c, stop := w.Watch()
		defer stop()
		changed = c
	}
	// An answer with a capped share is asked again at growing delays
	// within the interval (Interval/20, /10, /5, /2.5), until the others
	// have reported and released what they no longer use; at most
	// maxRechecks per tick.
	recheck := stoppedTimer()
	defer recheck.Stop()
	rechecks := 0
	// A ring change runs a round at once, but never sooner than
	// recheckAfter after the last round: a flapping member cannot make
	// rounds back to back. The ticker keeps its phase (a change reaches
	// every node at once; resetting would line their ticks up).
	deferred := stoppedTimer()
	defer deferred.Stop()
	var last time.Time
	run := func() {
		last = time.Now()
		if e.round(ctx) && rechecks < maxRechecks {
			recheck.Reset(e.recheckAfter << rechecks)
			rechecks++
		} else {
			recheck.Stop()
		}
	}
	ringChanged := func() bool { return !slices.Equal(e.opts.Membership.Members(), e.ring) }
	// A first round at once: the limiters learn the live members now, not
	// an interval after the node started.
	run()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			rechecks = 0
			run()
		case <-recheck.C:
			e.metrics.rechecks.Inc()
			run()
		case <-changed:
			if ringChanged() {
				deferred.Reset(max(0, e.recheckAfter-time.Since(last)))
			}
		case <-deferred.C:
			if ringChanged() {
				e.metrics.ringChanges.Inc()
				run()
			}
		}
	}
}

// stoppedTimer returns a timer that has not started.
func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// pending is one tenant's demand on its way to its owner.
type pending struct {
	l *Limiter
	t *tenant
}

// maxRechecks bounds the early rounds after a capped answer, per interval.
const maxRechecks = 4

// round is one exchange: measure, report to the owners, apply the shares.
// It reports whether an owner capped a share.
func (e *Exchange) round(ctx context.Context) (capped bool) {
	now := e.clock.Now()
	ms := e.opts.Membership.Members()
	e.ring = ms
	self := e.opts.Membership.Self()
	n := liveCount(ms)
	for _, l := range e.opts.Limiters {
		l.setNodes(n)
	}
	e.metrics.members.Set(float64(n))

	// Group each limiter's tenants by owner.
	type batch struct {
		items []pending
		req   []*hopwatchv1.TenantDemand
	}
	batches := map[int]*batch{}
	var buf []tenantDemand
	for _, l := range e.opts.Limiters {
		buf = l.sweep(now, buf[:0])
		for _, td := range buf {
			o := ownerOf(TenantKey(td.t.id), ms)
			b := batches[o]
			if b == nil {
				b = &batch{}
				batches[o] = b
			}
			b.items = append(b.items, pending{l: l, t: td.t})
			b.req = append(b.req, &hopwatchv1.TenantDemand{Limit: l.name, Tenant: td.t.id, Rate: td.demand})
		}
	}

	// The calls to remote owners run at once; mu guards what they and
	// this goroutine update (unreachable, capped, the failing set).
	var wg sync.WaitGroup
	var mu sync.Mutex
	unreachable := 0
	for o, b := range batches {
		switch {
		case o < 0:
			e.fallBack(b.items)
			mu.Lock()
			unreachable++
			mu.Unlock()
		case ms[o].ID == self:
			shares, c := e.owner.report(e.clock.Now(), self, b.req, ms, e.limiters)
			e.apply(b.items, shares)
			mu.Lock()
			capped = capped || c
			mu.Unlock()
		default:
			m := ms[o]
			wg.Go(func() {
				shares, c, err := e.call(ctx, self, m, b.req)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					unreachable++
					e.fallBack(b.items)
					if !e.failing[m.ID] {
						e.logger.Warn("rate limit owner did not answer; its tenants keep their last share for the timeout, then take limit/n",
							"owner", m.ID, "addr", m.GRPCAddr, "tenants", len(b.items), "timeout", e.opts.Timeout, "err", err)
					}
					e.failing[m.ID] = true
					return
				}
				if e.failing[m.ID] {
					e.logger.Info("rate limit owner answers again", "owner", m.ID)
					delete(e.failing, m.ID)
				}
				capped = capped || c
				e.apply(b.items, shares)
			})
		}
	}
	wg.Wait()
	e.metrics.unreachable.Set(float64(unreachable))
	for _, l := range e.opts.Limiters {
		l.countFallback()
	}
	e.metrics.owned.Set(float64(e.owner.expire(e.clock.Now())))
	e.conns.keep(ms)
	return capped
}

// call sends one report to a remote owner, in requests of at most
// maxDemands demands.
func (e *Exchange) call(ctx context.Context, self string, m Member, req []*hopwatchv1.TenantDemand) (shares []float64, capped bool, err error) {
	start := time.Now()
	defer func() { e.metrics.duration.Observe(time.Since(start).Seconds()) }()
	conn, err := e.conns.get(m.GRPCAddr)
	if err != nil {
		e.metrics.errors.Inc()
		return nil, false, err
	}
	ctx, cancel := context.WithTimeout(ctx, e.opts.RequestTimeout)
	defer cancel()
	client := hopwatchv1.NewRateLimitServiceClient(conn)
	shares = make([]float64, 0, len(req))
	for len(req) > 0 {
		part := req[:min(len(req), maxDemands)]
		req = req[len(part):]
		resp, err := client.ExchangeDemand(ctx, &hopwatchv1.ExchangeDemandRequest{NodeId: self, Demands: part})
		if err == nil && len(resp.GetShares()) != len(part) {
			err = fmt.Errorf("hopwatch/ratelimit: %s answered %d shares for %d demands", m.ID, len(resp.GetShares()), len(part))
		}
		if err != nil {
			e.metrics.errors.Inc()
			return nil, false, err
		}
		shares = append(shares, resp.GetShares()...)
		capped = capped || resp.GetCapped()
	}
	return shares, capped, nil
}

func (e *Exchange) apply(items []pending, shares []float64) {
	now := e.clock.Now()
	for i, it := range items {
		s := shares[i]
		if math.IsNaN(s) {
			s = 0
		}
		it.l.applyShare(now, it.t, min(max(s, 0), 1))
	}
}

func (e *Exchange) fallBack(items []pending) {
	now := e.clock.Now()
	for _, it := range items {
		it.l.fallBack(now, it.t, int64(e.opts.Timeout))
	}
}

// connPool holds one client connection per owner address.
type connPool struct {
	opts  []grpc.DialOption
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func (p *connPool) get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[addr]; c != nil {
		return c, nil
	}
	if addr == "" {
		return nil, errors.New("hopwatch/ratelimit: the owner has no gRPC address yet")
	}
	c, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/ratelimit: gRPC client for %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

// keep closes the connections to addresses no longer in the ring.
func (p *connPool) keep(ms []Member) {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := make(map[string]bool, len(ms))
	for _, m := range ms {
		in[m.GRPCAddr] = true
	}
	for addr, c := range p.conns {
		if !in[addr] {
			_ = c.Close()
			delete(p.conns, addr)
		}
	}
}

func (p *connPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, c := range p.conns {
		_ = c.Close()
		delete(p.conns, addr)
	}
}

// exchangeMetrics are an Exchange's measurements.
type exchangeMetrics struct {
	duration    prometheus.Histogram
	errors      prometheus.Counter
	unreachable prometheus.Gauge
	owned       prometheus.Gauge
	members     prometheus.Gauge
	ringChanges prometheus.Counter
	rechecks    prometheus.Counter
}

func newExchangeMetrics(reg prometheus.Registerer) (*exchangeMetrics, error) {
	m := &exchangeMetrics{
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:                        "hopwatch_ratelimit_exchange_duration_seconds",
			Help:                        "Time of one demand report to a tenant owner on another node, from sending to the answer or the failure.",
			Buckets:                     prometheus.ExponentialBuckets(0.0001, 4, 9),
			NativeHistogramBucketFactor: 1.1,
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_ratelimit_exchange_errors_total",
			Help: "Demand reports to a tenant owner that failed (the owner's tenants keep their share for the exchange timeout, then take limit/n).",
		}),
		unreachable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_ratelimit_owners_unreachable",
			Help: "Owners that did not answer this node's last demand report.",
		}),
		owned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_ratelimit_owned_tenants",
			Help: "Tenant limits this node owns: it splits them among the nodes that report demand.",
		}),
		members: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_ratelimit_live_members",
			Help: "Live members of the ring: n in the even split limit/n.",
		}),
		ringChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_ratelimit_ring_changes_total",
			Help: "Changes of the ring (members joined, left, went down or came back) that started an exchange round at once.",
		}),
		rechecks: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_ratelimit_rechecks_total",
			Help: "Early exchange rounds asking again after an owner capped a share by what other nodes still held.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.duration, m.errors, m.unreachable, m.owned, m.members, m.ringChanges, m.rechecks} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
