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
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/ratelimit"
)

// The tenant the node processes offer load for. Its owner is whichever of
// the three nodes the ring gives it; the processes run has no ring change.
const procSimTenant = "sim-0"

// nodeCounts is a node process's reply to "count": its cumulative units
// offered, admitted under the exchange and admitted by the even split.
type nodeCounts struct {
	Offered  int64 `json:"offered"`
	Admitted int64 `json:"admitted"`
	Even     int64 `json:"even"`
}

// runBenchRatelimitNode, `hopwatch bench ratelimit node` (hidden), is one
// node of `hopwatch bench ratelimit --processes`: a Limiter, an Exchange over a static ring and its gRPC
// server on the node's address, a second Limiter keeping the even split,
// and a load generator offering the same batches to both. It prints
// {"ready":true} once it listens, then reads commands from stdin, one a
// line: "rate <units/s>" sets the offered load, "count" prints the
// cumulative counts as one JSON line (nodeCounts). It stops at EOF.
func runBenchRatelimitNode(args []string, stdout, stderr io.Writer) error {
	var (
		lim      ratelimit.Limit
		batch    int64
		interval time.Duration
		id       string
		members  string
	)
	fs := flag.NewFlagSet("hopwatch bench ratelimit node", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&id, "id", "", "this node's member ID")
	fs.StringVar(&members, "members", "", "the ring: comma-separated id=host:port, the same on every node")
	fs.Float64Var(&lim.Rate, "limit", 10000, "the tenant's cluster-wide limit, units/s")
	fs.Int64Var(&lim.Burst, "burst", 10000, "the tenant's cluster-wide burst, units")
	fs.Int64Var(&batch, "batch", 100, "units per decision")
	interval = time.Second
	fs.Var(durationValue{&interval}, "interval", "exchange interval")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ring []ratelimit.Member
	self := -1
	for m := range strings.SplitSeq(members, ",") {
		mid, addr, ok := strings.Cut(m, "=")
		if !ok {
			return fmt.Errorf("--members: %q is not id=host:port", m)
		}
		if mid == id {
			self = len(ring)
		}
		ring = append(ring, ratelimit.Member{ID: mid, GRPCAddr: addr})
	}
	if self < 0 {
		return fmt.Errorf("--id %q is not in --members", id)
	}
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
	n := float64(len(ring))
	evenLim := ratelimit.Limit{Rate: lim.Rate / n, Burst: max(int64(math.Ceil(float64(lim.Burst)/n)), min(batch, lim.Burst), 1)}
	even, err := ratelimit.New(ratelimit.Options{Name: "spans", Default: evenLim}, nil, logger)
	if err != nil {
		return err
	}
	e, err := ratelimit.NewExchange(ratelimit.ExchangeOptions{
		Membership: ratelimit.StaticMembers{SelfID: id, List: ring}, Limiters: []*ratelimit.Limiter{l}, Interval: interval,
	}, nil, logger)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", ring[self].GRPCAddr)
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
		ratelimit.OfferLoad(ctx, procSimTenant, batch,
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
			b, _ := json.Marshal(nodeCounts{Offered: offered.Load(), Admitted: l.Admitted(procSimTenant), Even: even.Admitted(procSimTenant)})
			if _, err := fmt.Fprintln(stdout, string(b)); err != nil {
				return err
			}
		default:
			return fmt.Errorf("unknown command %q (want rate <units/s> or count)", sc.Text())
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

// simulateProcesses is ratelimit.Simulate's first two phases with each
// node a separate process of exe: the load split 70/20/10 over the three,
// then 10/20/70. Once per second it asks each node for its cumulative
// counts and takes the differences; the nodes' clocks are never compared,
// and the windows are the coordinator's.
func simulateProcesses(ctx context.Context, exe string, env []string, stderr io.Writer, o ratelimit.SimulateOptions) (res ratelimit.SimulateResult, err error) {
	addrs, err := freeLoopbackAddrs(3)
	if err != nil {
		return res, err
	}
	ids := []string{"node1", "node2", "node3"}
	var members []string
	for i, id := range ids {
		members = append(members, id+"="+addrs[i])
	}
	var nodes []*nodeProc
	defer func() {
		for _, p := range nodes {
			p.closeStdin()
		}
		for _, p := range nodes {
			p.stop()
		}
	}()
	for _, id := range ids {
		p, err := startRatelimitNode(exe, env, stderr, "--id="+id, "--members="+strings.Join(members, ","),
			"--limit="+strconv.FormatFloat(o.Limit.Rate, 'g', -1, 64), "--burst="+strconv.FormatInt(o.Limit.Burst, 10),
			"--batch="+strconv.FormatInt(o.Batch, 10), "--interval="+o.Interval.String())
		if err != nil {
			return res, err
		}
		nodes = append(nodes, p)
	}
	for i, p := range nodes {
		if s, err := p.line(ctx); err != nil || s != `{"ready":true}` {
			return res, fmt.Errorf("%s: want {\"ready\":true}, got %q: %w", ids[i], s, err)
		}
	}
	counts := func() (c nodeCounts, err error) {
		for _, p := range nodes {
			if err := p.send("count"); err != nil {
				return c, err
			}
		}
		for i, p := range nodes {
			s, err := p.line(ctx)
			if err != nil {
				return c, fmt.Errorf("%s: %w", ids[i], err)
			}
			var n nodeCounts
			if err := json.Unmarshal([]byte(s), &n); err != nil {
				return c, fmt.Errorf("%s: %q: %w", ids[i], s, err)
			}
			c.Offered += n.Offered
			c.Admitted += n.Admitted
			c.Even += n.Even
		}
		return c, nil
	}

	res.Limit, res.Interval = o.Limit, o.Interval
	total := o.Limit.Rate * o.Overload
	phases := []struct {
		name  string
		split []float64
	}{{"70/20/10", []float64{0.7, 0.2, 0.1}}, {"10/20/70", []float64{0.1, 0.2, 0.7}}}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	runStart := time.Now()
	prev, err := counts()
	if err != nil {
		return res, err
	}
	for _, ph := range phases {
		for i, p := range nodes {
			if err := p.send("rate %g", ph.split[i]*total); err != nil {
				return res, fmt.Errorf("%s: %w", ids[i], err)
			}
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
	if _, err := fmt.Fprintf(stdout, "3 node processes on loopback (%s bench ratelimit node)\n", exe); err != nil {
		return err
	}
	return res.Print(stdout)
}
