package ratelimit

import (
	"context"
	"math"
	"sync"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ownerTable is what this node knows, as an owner, of the demand on the
// tenants it owns: the last report of each node, stamped with this node's
// monotonic clock when it arrived (never with the sender's clock, so that
// the nodes' clocks need not agree).
type ownerTable struct {
	self    string
	timeout int64 // a report older than this is forgotten
	warmup  int64 // how long after its first report a tenant's silent members are assumed at limit/n

	mu      sync.Mutex
	tenants map[ownedKey]*owned
}

type ownedKey struct{ limit, tenant string }

type owned struct {
	first   int64 // monotonic ns of the first report
	reports map[string]demandReport
}

type demandReport struct {
	rate  float64 // units per second
	at    int64   // monotonic ns of arrival
	share float64 // the share answered
}

// report records node's demands and returns node's share of each, and
// whether any share was capped by what the others hold (see share). A
// demand on a limit this node does not run (another version's) gets the
// even split.
func (o *ownerTable) report(now int64, node string, demands []*hopwatchv1.TenantDemand, ms []Member, limiters map[string]*Limiter) (shares []float64, capped bool) {
	n := liveCount(ms)
	shares = make([]float64, len(demands))
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, d := range demands {
		l := limiters[d.GetLimit()]
		if l == nil {
			shares[i] = 1 / float64(n)
			continue
		}
		g := l.Limit(d.GetTenant())
		if g.Unlimited() {
			shares[i] = 1
			continue
		}
		k := ownedKey{limit: d.GetLimit(), tenant: d.GetTenant()}
		t := o.tenants[k]
		if t == nil {
			t = &owned{first: now, reports: map[string]demandReport{}}
			o.tenants[k] = t
		}
		rate := d.GetRate()
		if math.IsNaN(rate) || rate < 0 {
			rate = 0
		}
		t.reports[node] = demandReport{rate: min(rate, math.MaxFloat64), at: now}
		// The owner knows its own demand: no need to assume any when
		// its limiter has not seen the tenant.
		selfActive := l.tenants.load(d.GetTenant()) != nil
		var c bool
		shares[i], c = t.share(now, node, g.Rate, ms, n, o.timeout, o.warmup, o.self, selfActive)
		capped = capped || c
		r := t.reports[node]
		r.share = shares[i]
		t.reports[node] = r
	}
	return shares, capped
}

// capSlack is how far (a fraction of the limit) the cap may hold a share
// below its split before the answer says capped.
const capSlack = 0.01

// share splits limit (units per second) among the nodes with a fresh
// report, and returns node's part as a fraction of limit:
//
//   - when the demands add up to the limit or more, each node gets the
//     limit in proportion to its demand: every node is refused the same
//     fraction of what it is offered, and the cluster admits the limit;
//   - when they add up to less, each node gets its demand plus an even part
//     of the rest, so a node whose demand grows has room until the next
//     exchange, and the parts still add up to the limit.
//
// The nodes report at different moments of the interval, so a share is
// computed from the latest demand of the node asking and older demands of
// the others. When the load moves from one node to another, a node that
// lost load may ask after one that gained it, and be given room computed
// from the gainer's old, low demand: the shares in force would add up to
// more than 1. A share is therefore capped by 1 minus what the others can
// admit with the shares they hold (their share, or their demand where it
// is smaller): the cluster admits at most the limit as long as the
// demands stay as reported, and under-admits rather than over-admits
// until the others report. capped says the cap held the share more than
// capSlack below the split while a node that reports on time (within
// warmup, an interval and a request) holds part of it: the node asks again
// soon (Exchange.Run). A silent node's hold lasts until the timeout, and
// asking again would not release it.
//
// For warmup after the tenant's first report (a new tenant, or a new
// owner after a membership change), live members that have not reported
// yet are counted as demanding limit/n, the share they admit meanwhile, so
// that the first node to report does not get the whole limit; the owner
// itself is counted so only if its limiter has seen the tenant.
func (t *owned) share(now int64, node string, limit float64, ms []Member, n int, timeout, warmup int64, self string, selfActive bool) (share float64, capped bool) {
	var total, others float64
	held := false // by another node that reports on time, and so can release it soon
	for id, r := range t.reports {
		if now-r.at > timeout {
			delete(t.reports, id)
			continue
		}
		total += r.rate
		if id != node {
			h := min(r.share, r.rate/limit)
			others += h
			held = held || h > 0 && now-r.at <= warmup
		}
	}
	if now-t.first < warmup {
		for _, m := range ms {
			if _, ok := t.reports[m.ID]; !ok && !m.Down && (m.ID != self || selfActive) {
				total += limit / float64(n)
			}
		}
	}
	split, room := t.split(node, limit, n, total), max(0, 1-others)
	return min(split, room), held && split-room > capSlack
}

func (t *owned) split(node string, limit float64, n int, total float64) float64 {
	d := t.reports[node].rate
	if total >= limit {
		return d / total
	}
	return min(1, (d+(limit-total)/float64(n))/limit)
}

// expire forgets reports older than the timeout, and tenants left without
// any; it returns the number of tenants left.
func (o *ownerTable) expire(now int64) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	for k, t := range o.tenants {
		for id, r := range t.reports {
			if now-r.at > o.timeout {
				delete(t.reports, id)
			}
		}
		if len(t.reports) == 0 {
			delete(o.tenants, k)
		}
	}
	return len(o.tenants)
}

// maxDemands bounds one request: more tenants than any node reports in one
// interval, few enough that a request stays far below gRPC's 4 MiB.
const maxDemands = 50000

// service serves RateLimitService.
type service struct {
	hopwatchv1.UnimplementedRateLimitServiceServer
	e *Exchange
}

func (s *service) ExchangeDemand(_ context.Context, req *hopwatchv1.ExchangeDemandRequest) (*hopwatchv1.ExchangeDemandResponse, error) {
	if req.GetNodeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "hopwatch/ratelimit: node_id is empty")
	}
	if len(req.GetDemands()) > maxDemands {
		return nil, status.Errorf(codes.InvalidArgument, "hopwatch/ratelimit: %d demands in one report, more than %d", len(req.GetDemands()), maxDemands)
	}
	shares, capped := s.e.owner.report(s.e.clock.Now(), req.GetNodeId(), req.GetDemands(), s.e.opts.Membership.Members(), s.e.limiters)
	return &hopwatchv1.ExchangeDemandResponse{Shares: shares, Capped: capped}, nil
}
