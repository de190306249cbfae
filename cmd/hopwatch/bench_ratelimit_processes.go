package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/ratelimit"
)

// parseRing parses a ring given as comma-separated id=host:port.
func parseRing(s string) ([]ratelimit.Member, error) {
	var ring []ratelimit.Member
	for m := range strings.SplitSeq(s, ",") {
		id, addr, ok := strings.Cut(m, "=")
		if !ok || id == "" {
			return nil, fmt.Errorf("%q is not id=host:port", m)
		}
		ring = append(ring, ratelimit.Member{ID: id, GRPCAddr: addr})
	}
	return ring, nil
}

// ringArg formats a ring as parseRing reads it.
func ringArg(ring []ratelimit.Member) string {
	parts := make([]string, len(ring))
	for i, m := range ring {
		parts[i] = m.ID + "=" + m.GRPCAddr
	}
	return strings.Join(parts, ",")
}

// ownerSample names the tenants over which a ring change's moved fraction
// is counted.
func ownerSample(i int) string { return "tenant-" + strconv.Itoa(i) }

// nodeCounts is a node process's reply to "count": its cumulative units
// offered, admitted under the exchange and admitted by the even split.
type nodeCounts struct {
	Offered  int64 `json:"offered"`
	Admitted int64 `json:"admitted"`
	Even     int64 `json:"even"`
}

// runBenchRatelimitNode, `hopwatch bench ratelimit node` (hidden), is one
// node of `hopwatch bench ratelimit --processes`: a Limiter, an Exchange
// over the ring it is given and its gRPC server on the node's address, a
// second Limiter keeping the even split, and a load generator offering
// the same batches of one tenant to both. It prints {"ready":true} once it
// listens, then reads commands from stdin, one a line: "rate <units/s>"
// sets the offered load; "count" prints the cumulative counts as one JSON
// line (nodeCounts); "members id=host:port,..." replaces the ring, as a
// membership change does; "owners <n>" prints, as one JSON line, the
// owner this node's ring gives each of the tenants tenant-0 to
// tenant-<n-1>. It stops at EOF.
func runBenchRatelimitNode(args []string, stdout, stderr io.Writer) error {
	var (
		lim      ratelimit.Limit
		batch    int64
		interval time.Duration
		id       string
		members  string
		tenant   string
	)
	fs := flag.NewFlagSet("hopwatch bench ratelimit node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&id, "id", "", "this node's member ID")
	fs.StringVar(&members, "members", "", "the ring: comma-separated id=host:port, the same on every node")
	fs.StringVar(&tenant, "tenant", "sim-0", "the tenant the node offers load for")
	fs.Float64Var(&lim.Rate, "limit", 10000, "the tenant's cluster-wide limit, units/s")
	fs.Int64Var(&lim.Burst, "burst", 10000, "the tenant's cluster-wide burst, units")
	fs.Int64Var(&batch, "batch", 100, "units per decision")
	interval = time.Second
	fs.Var(durationValue{&interval}, "interval", "exchange interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	list, err := parseRing(members)
	if err != nil {
		return fmt.Errorf("--members: %w", err)
	}
	self := slices.IndexFunc(list, func(m ratelimit.Member) bool { return m.ID == id })
	if self < 0 {
		return fmt.Errorf("--id %q is not in --members", id)
	}
	ring := ratelimit.NewRing(list)
	// At EOF the level goes up to Error: the exchange calls that stopping
	// cancels, here and in the nodes stopping beside this one, are not
	// worth a warning.
	var level slog.LevelVar
	level.Set(slog.LevelWarn)
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: &level})).With("node", id)
	l, err := ratelimit.New(ratelimit.Options{Name: "spans", Default: lim}, nil, logger)
	if err != nil {
		return err
	}
	// The even split is what a limiter that never hears from an owner
	// keeps: limit/n, and a burst that fits a batch.
	n := float64(len(list))
	evenLim := ratelimit.Limit{Rate: lim.Rate / n, Burst: max(int64(math.Ceil(float64(lim.Burst)/n)), min(batch, lim.Burst), 1)}
	even, err := ratelimit.New(ratelimit.Options{Name: "spans", Default: evenLim}, nil, logger)
	if err != nil {
		return err
	}
	e, err := ratelimit.NewExchange(ratelimit.ExchangeOptions{
		Membership: ring.View(id), Limiters: []*ratelimit.Limiter{l}, Interval: interval,
	}, nil, logger)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", list[self].GRPCAddr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	e.RegisterGRPC(srv)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() {
		cancel()
		srv.Stop()
		wg.Wait()
	}()
	wg.Go(func() { _ = srv.Serve(lis) })
	wg.Go(func() { e.Run(ctx) })

	var rate atomic.Uint64 // math.Float64bits of units/s
	var offered atomic.Int64
	wg.Go(func() {
		ratelimit.OfferLoad(ctx, tenant, batch,
			func() float64 { return math.Float64frombits(rate.Load()) },
			func(n int64) { offered.Add(n) }, l, even)
	})

	if _, err := fmt.Fprintln(stdout, `{"ready":true}`); err != nil {
		return err
	}
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch cmd {
		case "rate":
			r, err := strconv.ParseFloat(arg, 64)
			if err != nil || r < 0 {
				return fmt.Errorf("rate: %q is not a rate in units/s", arg)
			}
			rate.Store(math.Float64bits(r))
		case "count":
			b, _ := json.Marshal(nodeCounts{Offered: offered.Load(), Admitted: l.Admitted(tenant), Even: even.Admitted(tenant)})
			if _, err := fmt.Fprintln(stdout, string(b)); err != nil {
				return err
			}
		case "members":
			r, err := parseRing(arg)
			if err != nil {
				return fmt.Errorf("members: %w", err)
			}
			ring.Set(r)
		case "owners":
			k, err := strconv.Atoi(arg)
			if err != nil || k < 0 {
				return fmt.Errorf("owners: %q is not a count of tenants", arg)
			}
			r := ring.Members()
			owners := make([]string, k)
			for i := range owners {
				owners[i] = r[ratelimit.Owner(ownerSample(i), r)].ID
			}
			b, _ := json.Marshal(owners)
			if _, err := fmt.Fprintln(stdout, string(b)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown command %q (want rate <units/s>, count, members <ring> or owners <n>)", sc.Text())
		}
	}
	level.Set(slog.LevelError)
	return sc.Err()
}

// nodeProc is a `hopwatch bench ratelimit node` child process.
type nodeProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string // its stdout, closed when it ends
}

func startRatelimitNode(exe string, env []string, stderr io.Writer, args ...string) (*nodeProc, error) {
	p := &nodeProc{cmd: exec.Command(exe, append([]string{"bench", "ratelimit", "node"}, args...)...), lines: make(chan string, 16)}
	p.cmd.Env = env
	p.cmd.Stderr = stderr
	setPdeathsig(p.cmd)
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 4<<20) // owners of 10,000 tenants are a 90 kB line
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	return p, nil
}

// line returns the next line the node prints.
func (p *nodeProc) line(ctx context.Context) (string, error) {
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case s, ok := <-p.lines:
		if !ok {
			return "", errors.New("the node process exited")
		}
		return s, nil
	case <-t.C:
		return "", errors.New("the node process did not answer in 30 s")
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (p *nodeProc) closeStdin() { _ = p.stdin.Close() }

func (p *nodeProc) send(format string, args ...any) error {
	_, err := fmt.Fprintf(p.stdin, format+"\n", args...)
	return err
}

// stop closes its stdin, which ends it, and waits; after 10 s it kills it.
// Closing every node's stdin first (closeStdin) stops them together.
func (p *nodeProc) stop() {
	p.closeStdin()
	t := time.AfterFunc(10*time.Second, func() { _ = p.cmd.Process.Kill() })
	defer t.Stop()
	for range p.lines { // drain, so that the reader ends
	}
	_ = p.cmd.Wait()
}

// simulateProcesses is ratelimit.Simulate with each node a separate
// process of exe: the load split 70/20/10 over three nodes, then 10/20/70;
// then a fourth process joins the ring (without load: the simulated tenant
// is one whose owner moves to it), then leaves. Once per second it asks
// each node for its cumulative counts and takes the differences; the
// nodes' clocks are never compared, and the windows are the
// coordinator's. At each ring change it asks the nodes which owner their
// ring gives each of o.Tenants tenants, before and after.
func simulateProcesses(ctx context.Context, exe string, env []string, stderr io.Writer, o ratelimit.SimulateOptions) (res ratelimit.SimulateResult, err error) {
	// The nodes share stderr; when it is not a file, each has a goroutine
	// copying into it.
	stderr = &lockedWriter{w: stderr}
	addrs, err := freeLoopbackAddrs(4)
	if err != nil {
		return res, err
	}
	ids := []string{"node1", "node2", "node3", "node4"}
	var four []ratelimit.Member
	for i, id := range ids {
		four = append(four, ratelimit.Member{ID: id, GRPCAddr: addrs[i]})
	}
	three := four[:3]
	tenant := ""
	for i := 0; tenant == ""; i++ {
		if name := "sim-" + strconv.Itoa(i); ids[ratelimit.Owner(name, four)] == "node4" {
			tenant = name
		}
	}

	nodes := map[string]*nodeProc{}
	defer func() {
		for _, p := range nodes {
			p.closeStdin()
		}
		for _, p := range nodes {
			p.stop()
		}
	}()
	start := func(ring []ratelimit.Member, id string) error {
		p, err := startRatelimitNode(exe, env, stderr, "--id="+id, "--members="+ringArg(ring), "--tenant="+tenant,
			"--limit="+strconv.FormatFloat(o.Limit.Rate, 'g', -1, 64), "--burst="+strconv.FormatInt(o.Limit.Burst, 10),
			"--batch="+strconv.FormatInt(o.Batch, 10), "--interval="+o.Interval.String())
		if err != nil {
			return err
		}
		nodes[id] = p
		if s, err := p.line(ctx); err != nil || s != `{"ready":true}` {
			return fmt.Errorf("%s: want {\"ready\":true}, got %q: %w", id, s, err)
		}
		return nil
	}
	for _, id := range ids[:3] {
		if err := start(three, id); err != nil {
			return res, err
		}
	}
	// ask sends a command to the nodes named and returns their one-line
	// replies in order.
	ask := func(cmd string, names ...string) ([]string, error) {
		for _, id := range names {
			if err := nodes[id].send("%s", cmd); err != nil {
				return nil, fmt.Errorf("%s: %w", id, err)
			}
		}
		var out []string
		for _, id := range names {
			s, err := nodes[id].line(ctx)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", id, err)
			}
			out = append(out, s)
		}
		return out, nil
	}
	// The load is on the first three; the fourth has none.
	loaded := ids[:3]
	counts := func() (c nodeCounts, err error) {
		replies, err := ask("count", loaded...)
		if err != nil {
			return c, err
		}
		for i, s := range replies {
			var n nodeCounts
			if err := json.Unmarshal([]byte(s), &n); err != nil {
				return c, fmt.Errorf("%s: %q: %w", loaded[i], s, err)
			}
			c.Offered += n.Offered
			c.Admitted += n.Admitted
			c.Even += n.Even
		}
		return c, nil
	}
	tenants := o.Tenants
	if tenants == 0 {
		tenants = 10000
	}
	// owners returns the owners every node named gives the sample
	// tenants, and an error unless they agree.
	owners := func(names ...string) ([]string, error) {
		replies, err := ask("owners "+strconv.Itoa(tenants), names...)
		if err != nil {
			return nil, err
		}
		var first []string
		for i, s := range replies {
			var got []string
			if err := json.Unmarshal([]byte(s), &got); err != nil || len(got) != tenants {
				return nil, fmt.Errorf("%s: owners: %q: %v", names[i], s, err)
			}
			if first == nil {
				first = got
			} else if !slices.Equal(first, got) {
				return nil, fmt.Errorf("%s and %s disagree on owners", names[0], names[i])
			}
		}
		return first, nil
	}
	// change sets a new ring on the first three nodes and records the
	// move: owners before as the three give them, after as every node
	// running gives them.
	change := func(event string, ring []ratelimit.Member, before int) error {
		was, err := owners(loaded...)
		if err != nil {
			return err
		}
		for _, id := range loaded {
			if err := nodes[id].send("members %s", ringArg(ring)); err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
		}
		running := slices.DeleteFunc(slices.Clone(ids), func(id string) bool { return nodes[id] == nil })
		now, err := owners(running...)
		if err != nil {
			return err
		}
		moved := 0
		for i := range was {
			if was[i] != now[i] {
				moved++
			}
		}
		after := len(ring)
		res.Moves = append(res.Moves, ratelimit.SimMove{
			Event: event, MembersBefore: before, MembersAfter: after,
			MovedFraction: float64(moved) / float64(tenants),
			IdealFraction: ratelimit.LeastMoved(before, after),
		})
		return nil
	}

	res.Limit, res.Interval = o.Limit, o.Interval
	total := o.Limit.Rate * o.Overload
	setLoad := func(split ...float64) error {
		for i, id := range loaded {
			if err := nodes[id].send("rate %g", split[i]*total); err != nil {
				return fmt.Errorf("%s: %w", id, err)
			}
		}
		return nil
	}
	phases := []struct {
		name  string
		enter func() error
	}{
		{"70/20/10", func() error { return setLoad(0.7, 0.2, 0.1) }},
		{"10/20/70", func() error { return setLoad(0.1, 0.2, 0.7) }},
		{"node4 joins", func() error {
			if err := start(four, "node4"); err != nil {
				return err
			}
			return change("node4 process added at the end of the ring", four, 3)
		}},
		{"node4 leaves", func() error {
			// Out of the ring first, then stopped: a report in flight to it
			// fails, and its sender keeps its last shares.
			p := nodes["node4"]
			delete(nodes, "node4")
			err := change("node4 process removed (the last of the ring)", three, 4)
			p.stop()
			return err
		}},
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	runStart := time.Now()
	prev, err := counts()
	if err != nil {
		return res, err
	}
	for _, ph := range phases {
		if err := ph.enter(); err != nil {
			return res, fmt.Errorf("phase %q: %w", ph.name, err)
		}
		for range int(o.Phase / time.Second) {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-tick.C:
			}
			c, err := counts()
			if err != nil {
				return res, err
			}
			res.Windows = append(res.Windows, ratelimit.SimWindow{
				Phase: ph.name, Start: time.Since(runStart).Round(time.Second) - time.Second,
				Offered: float64(c.Offered - prev.Offered), Admitted: float64(c.Admitted - prev.Admitted), Even: float64(c.Even - prev.Even),
			})
			prev = c
		}
	}
	res.SummarisePhases()
	return res, nil
}

// benchRatelimitProcesses runs `hopwatch bench ratelimit --processes` with
// Simulate's defaults for the options left at zero.
func benchRatelimitProcesses(ctx context.Context, o ratelimit.SimulateOptions, stdout, stderr io.Writer) error {
	if o.Limit.Burst == 0 {
		o.Limit.Burst = int64(math.Ceil(o.Limit.Rate))
	}
	if o.Phase == 0 {
		o.Phase = 10 * time.Second
	}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Phase < 3*time.Second {
		return errors.New("with --processes, --phase must be at least 3s")
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	res, err := simulateProcesses(ctx, exe, os.Environ(), stderr, o)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "node processes on loopback (%s bench ratelimit node): three, and a fourth that joins and leaves\n", exe); err != nil {
		return err
	}
	return res.Print(stdout)
}

// lockedWriter serialises the writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
