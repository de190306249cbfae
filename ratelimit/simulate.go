package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// SimulateOptions configures Simulate.
type SimulateOptions struct {
	// Limit is the simulated tenant's cluster-wide limit. Zero means
	// 10,000 units/s with a burst of one second of it.
	Limit Limit
	// Overload is the offered load as a multiple of Limit.Rate; 0 means 2.
	Overload float64
	// Batch is the units per decision; 0 means 100.
	Batch int64
	// Phase is the length of each phase of the run; 0 means 10 s. The run
	// has four: the load split 70/20/10 over three nodes, then 10/20/70;
	// then a fourth node joins the ring (without load); then it leaves.
	Phase time.Duration
	// Interval is the exchange interval; 0 means 1 s.
	Interval time.Duration
	// Tenants is the number of tenant IDs over which the fraction of
	// tenants that change owner is counted; 0 means 10,000.
	Tenants int
	// Logger receives the nodes' logs; nil discards.
	Logger *slog.Logger
}

// SimulateResult holds what Simulate measured.
type SimulateResult struct {
	// Limit is the tenant's limit, Interval the exchange interval.
	Limit    Limit
	Interval time.Duration
	// Windows are the consecutive 1 s windows of the run.
	Windows []SimWindow
	// Phases summarise the windows of each phase.
	Phases []SimPhase
	// Moves are the ring changes of the run, with the fraction of Tenants
	// whose owner changed.
	Moves []SimMove
}

// SimWindow is one second of the run.
type SimWindow struct {
	Phase string
	// Start is the window's start since the run's.
	Start time.Duration
	// Offered, Admitted and Even are units per second offered to the
	// cluster, admitted by the nodes under the exchange, and admitted by
	// the same nodes with the naive even split (limit/n each, no
	// exchange) on the same offered batches.
	Offered, Admitted, Even float64
}

// SimPhase summarises one phase.
type SimPhase struct {
	Name string
	// Windows counted: those that start two exchange intervals or more
	// after the phase does.
	Counted int
	// MaxError and MeanError are the largest and the mean of
	// |admitted - limit| / limit over the counted windows, for the
	// exchange and for the even split.
	MaxError, MeanError         float64
	EvenMaxError, EvenMeanError float64
}

// SimMove is one change of the ring.
type SimMove struct {
	Event string
	// Live members before and after.
	MembersBefore, MembersAfter int
	// MovedFraction is the fraction of tenants whose owner changed;
	// IdealFraction the least any scheme moves (the tenants of the member
	// that left, or the new member's fair part).
	MovedFraction, IdealFraction float64
	// The simulated tenant's owner before and after.
	TenantOwnerBefore, TenantOwnerAfter string
}

// LeastMoved is the IdealFraction of a ring change from before to after
// live members: the fraction of tenants any scheme that keeps the split
// even must move.
func LeastMoved(before, after int) float64 {
	return math.Abs(1/float64(after)-1/float64(before)) * float64(min(after, before))
}

// simNode is one node of a simulated cluster.
type simNode struct {
	id     string
	l      *Limiter
	e      *Exchange
	srv    *grpc.Server
	lis    net.Listener
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// Simulate measures how closely a cluster of nodes holds a tenant's limit
// under skewed, shifting load: three nodes in this process, each with its
// own limiter, exchange and gRPC server on 127.0.0.1, exchanging over real
// gRPC on their own tickers and clocks, as separate processes would. The
// load is offered in batches from one goroutine per node; the same batches
// go to a second set of limiters that keep the even split limit/n, for
// comparison. It runs for four phases (see SimulateOptions.Phase).
func Simulate(ctx context.Context, opts SimulateOptions) (res SimulateResult, err error) {
	if opts.Limit.Rate == 0 {
		opts.Limit = Limit{Rate: 10000}
	}
	if opts.Limit.Burst == 0 {
		opts.Limit.Burst = int64(math.Ceil(opts.Limit.Rate))
	}
	if opts.Overload == 0 {
		opts.Overload = 2
	}
	if opts.Batch == 0 {
		opts.Batch = 100
	}
	if opts.Phase == 0 {
		opts.Phase = 10 * time.Second
	}
	if opts.Interval == 0 {
		opts.Interval = time.Second
	}
	if opts.Tenants == 0 {
		opts.Tenants = 10000
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := opts.Limit.validate("Limit"); err != nil {
		return res, err
	}
	if opts.Limit.Unlimited() || opts.Overload <= 0 || opts.Batch < 0 || opts.Phase < 3*time.Second || opts.Interval <= 0 || opts.Tenants < 0 {
		return res, errors.New("hopwatch/ratelimit: SimulateOptions: want a finite limit, Overload > 0, Batch > 0, Phase >= 3s, Interval > 0")
	}
	res.Limit, res.Interval = opts.Limit, opts.Interval

	ring := NewRing(nil)
	nodes := map[string]*simNode{}
	defer func() {
		for _, n := range nodes {
			n.stop()
		}
	}()
	listen := func(id string) (net.Listener, error) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ring.Set(append(ring.Members(), Member{ID: id, GRPCAddr: lis.Addr().String()}))
		return lis, nil
	}
	start := func(id string, lis net.Listener) error {
		n, err := startSimNode(ctx, id, lis, ring.View(id), opts)
		if err != nil {
			return err
		}
		nodes[id] = n
		return nil
	}
	ids := []string{"node1", "node2", "node3"}
	var liss []net.Listener
	for _, id := range ids {
		lis, err := listen(id)
		if err != nil {
			return res, err
		}
		liss = append(liss, lis)
	}
	for i, id := range ids {
		if err := start(id, liss[i]); err != nil {
			return res, err
		}
	}

	// The simulated tenant is one that moves to node4 when it joins, so
	// that the run crosses an owner change.
	tenants := make([]string, opts.Tenants)
	for i := range tenants {
		tenants[i] = "tenant-" + strconv.Itoa(i)
	}
	with4 := append(ring.Members(), Member{ID: "node4"})
	simTenant := ""
	for i := 0; simTenant == ""; i++ {
		name := "sim-" + strconv.Itoa(i)
		if with4[Owner(name, with4)].ID == "node4" {
			simTenant = name
		}
	}

	// The even split: limiters that never hear from an owner.
	even := map[string]*Limiter{}
	for _, id := range ids {
		l, err := New(Options{Name: "spans", Default: opts.Limit}, nil, nil)
		if err != nil {
			return res, err
		}
		l.setNodes(len(ids))
		even[id] = l
	}

	// The load, in units per second per node.
	total := opts.Limit.Rate * opts.Overload
	var loadMu sync.Mutex
	load := map[string]float64{"node1": 0.7 * total, "node2": 0.2 * total, "node3": 0.1 * total}
	offeredBy := map[string]*int64{} // under loadMu
	for _, id := range ids {
		offeredBy[id] = new(int64)
	}
	genCtx, stopGen := context.WithCancel(ctx)
	var gen sync.WaitGroup
	defer func() {
		stopGen()
		gen.Wait()
	}()
	for _, id := range ids {
		off := offeredBy[id]
		rate := func() float64 {
			loadMu.Lock()
			defer loadMu.Unlock()
			return load[id]
		}
		offered := func(n int64) {
			loadMu.Lock()
			*off += n
			loadMu.Unlock()
		}
		gen.Go(func() { OfferLoad(genCtx, simTenant, opts.Batch, rate, offered, nodes[id].l, even[id]) })
	}

	sum := func() (admitted, evenAdmitted, off float64) {
		for _, id := range ids {
			admitted += float64(nodes[id].l.Admitted(simTenant))
			evenAdmitted += float64(even[id].Admitted(simTenant))
			loadMu.Lock()
			off += float64(*offeredBy[id])
			loadMu.Unlock()
		}
		return admitted, evenAdmitted, off
	}

	phases := []struct {
		name  string
		enter func() error
	}{
		{"70/20/10", func() error { return nil }},
		{"10/20/70", func() error {
			loadMu.Lock()
			defer loadMu.Unlock()
			load["node1"], load["node3"] = 0.1*total, 0.7*total
			return nil
		}},
		{"node4 joins", func() error {
			before := ring.Members()
			lis, err := listen("node4")
			if err != nil {
				return err
			}
			if err := start("node4", lis); err != nil {
				return err
			}
			res.Moves = append(res.Moves, simMove("node4 added at the end of the ring", tenants, simTenant, before, ring.Members()))
			return nil
		}},
		{"node4 leaves", func() error {
			before := ring.Members()
			ring.Set(before[:3])
			res.Moves = append(res.Moves, simMove("node4 removed (the last of the ring)", tenants, simTenant, before, ring.Members()))
			// A report in flight to it fails: its sender keeps its last
			// shares (ExchangeOptions.Timeout).
			nodes["node4"].stop()
			delete(nodes, "node4")
			return nil
		}},
	}
	// Changes measured without running them: a middle node marked down,
	// and removed.
	three := ring.Members()[:3]
	down := slices.Clone(three)
	down[1].Down = true
	downMove := simMove("node2 marked down (keeps its slot)", tenants, simTenant, three, down)
	removeMove := simMove("node2 removed from the middle of the ring", tenants, simTenant, three, []Member{three[0], three[2]})

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	runStart := time.Now()
	pa, pe, po := sum()
	perPhase := int(opts.Phase / time.Second)
	for p, ph := range phases {
		if err := ph.enter(); err != nil {
			return res, fmt.Errorf("hopwatch/ratelimit: simulation phase %q: %w", ph.name, err)
		}
		for range perPhase {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-tick.C:
			}
			a, e, o := sum()
			res.Windows = append(res.Windows, SimWindow{
				Phase: ph.name, Start: time.Since(runStart).Round(time.Second) - time.Second,
				Offered: o - po, Admitted: a - pa, Even: e - pe,
			})
			pa, pe, po = a, e, o
		}
		res.Phases = append(res.Phases, summarise(ph.name, res.Windows[p*perPhase:], opts))
	}
	res.Moves = append(res.Moves, downMove, removeMove)
	return res, nil
}

// OfferLoad offers a tenant rate() units per second, in batches of batch
// units, to each of ls, until ctx is done: every 5 ms it offers the whole
// batches owed since the last time, calling offered(batch) once per batch.
// Simulate runs one per node; so does each node process of `hopwatch bench
// ratelimit --processes`.
func OfferLoad(ctx context.Context, tenant string, batch int64, rate func() float64, offered func(n int64), ls ...*Limiter) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	var owed float64
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			owed += rate() * now.Sub(last).Seconds()
			last = now
			for owed >= float64(batch) {
				owed -= float64(batch)
				for _, l := range ls {
					l.AllowN(tenant, batch)
				}
				offered(batch)
			}
		}
	}
}

// SummarisePhases sets r.Phases from r.Windows, one per run of windows
// with the same Phase, counting those from two exchange intervals
// (r.Interval) after the phase starts.
func (r *SimulateResult) SummarisePhases() {
	r.Phases = nil
	opts := SimulateOptions{Limit: r.Limit, Interval: r.Interval}
	for i := 0; i < len(r.Windows); {
		j := i
		for j < len(r.Windows) && r.Windows[j].Phase == r.Windows[i].Phase {
			j++
		}
		r.Phases = append(r.Phases, summarise(r.Windows[i].Phase, r.Windows[i:j], opts))
		i = j
	}
}

func summarise(name string, ws []SimWindow, opts SimulateOptions) SimPhase {
	s := SimPhase{Name: name}
	skip := int(math.Ceil(2 * opts.Interval.Seconds()))
	for i, w := range ws {
		if i < skip {
			continue
		}
		e := math.Abs(w.Admitted-opts.Limit.Rate) / opts.Limit.Rate
		ee := math.Abs(w.Even-opts.Limit.Rate) / opts.Limit.Rate
		s.Counted++
		s.MaxError = max(s.MaxError, e)
		s.EvenMaxError = max(s.EvenMaxError, ee)
		s.MeanError += e
		s.EvenMeanError += ee
	}
	if s.Counted > 0 {
		s.MeanError /= float64(s.Counted)
		s.EvenMeanError /= float64(s.Counted)
	}
	return s
}

func simMove(event string, tenants []string, tenant string, before, after []Member) SimMove {
	moved := movedOwners(tenants, before, after)
	nb, na := liveCount(before), liveCount(after)
	return SimMove{
		Event: event, MembersBefore: nb, MembersAfter: na, MovedFraction: moved, IdealFraction: LeastMoved(nb, na),
		TenantOwnerBefore: before[Owner(tenant, before)].ID, TenantOwnerAfter: after[Owner(tenant, after)].ID,
	}
}

// movedOwners returns the fraction of tenants whose owner differs between
// two rings.
func movedOwners(tenants []string, before, after []Member) float64 {
	if len(tenants) == 0 {
		return 0
	}
	n := 0
	for _, t := range tenants {
		if before[Owner(t, before)].ID != after[Owner(t, after)].ID {
			n++
		}
	}
	return float64(n) / float64(len(tenants))
}

func startSimNode(ctx context.Context, id string, lis net.Listener, m Membership, opts SimulateOptions) (*simNode, error) {
	logger := opts.Logger.With("node", id)
	l, err := New(Options{Name: "spans", Default: opts.Limit}, nil, logger)
	if err != nil {
		return nil, err
	}
	e, err := NewExchange(ExchangeOptions{Membership: m, Limiters: []*Limiter{l}, Interval: opts.Interval}, nil, logger)
	if err != nil {
		return nil, err
	}
	n := &simNode{id: id, l: l, e: e, srv: grpc.NewServer(), lis: lis}
	e.RegisterGRPC(n.srv)
	ctx, n.cancel = context.WithCancel(ctx)
	n.wg.Go(func() { _ = n.srv.Serve(lis) })
	n.wg.Go(func() { e.Run(ctx) })
	return n, nil
}

func (n *simNode) stop() {
	n.cancel()
	n.srv.Stop()
	n.wg.Wait()
}

// Print writes the result as text: the windows, the phase summaries and
// the ring changes.
func (r SimulateResult) Print(w io.Writer) error {
	var err error
	p := func(format string, args ...any) {
		if err == nil {
			_, err = fmt.Fprintf(w, format, args...)
		}
	}
	p("tenant limit %.0f units/s (burst %d), exchange every %v; admitted units per 1 s window\n", r.Limit.Rate, r.Limit.Burst, r.Interval)
	p("%-14s %6s %10s %10s %8s %10s %8s\n", "phase", "t", "offered", "exchange", "error", "even", "error")
	for _, win := range r.Windows {
		p("%-14s %5.0fs %10.0f %10.0f %+7.1f%% %10.0f %+7.1f%%\n", win.Phase, win.Start.Seconds(), win.Offered,
			win.Admitted, 100*(win.Admitted-r.Limit.Rate)/r.Limit.Rate, win.Even, 100*(win.Even-r.Limit.Rate)/r.Limit.Rate)
	}
	p("\nper phase, windows from 2 exchange intervals after the phase starts: |admitted - limit| / limit\n")
	p("%-14s %7s %14s %14s %14s %14s\n", "phase", "windows", "exchange max", "exchange mean", "even max", "even mean")
	for _, s := range r.Phases {
		p("%-14s %7d %13.1f%% %13.1f%% %13.1f%% %13.1f%%\n", s.Name, s.Counted, 100*s.MaxError, 100*s.MeanError, 100*s.EvenMaxError, 100*s.EvenMeanError)
	}
	if len(r.Moves) == 0 {
		return err
	}
	p("\nring changes: fraction of tenants whose owner changed\n")
	for _, m := range r.Moves {
		p("%-44s %d -> %d members: %5.1f%% moved (ideal %4.1f%%)\n", m.Event, m.MembersBefore, m.MembersAfter, 100*m.MovedFraction, 100*m.IdealFraction)
	}
	return err
}
