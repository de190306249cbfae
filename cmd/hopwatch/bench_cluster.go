package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/internal/server"
)

// procBenchOptions configures benchClusterProcesses.
type procBenchOptions struct {
	// Exe is the hopwatch binary the nodes run, Env their environment.
	Exe string
	Env []string
	// Dir is where the run's temporary directory, with one data directory
	// per node, is made (removed afterwards); empty is the system's
	// temporary directory.
	Dir string
	// Writes is the number of tenant PUTs timed through the leader and
	// through a follower; Kills the number of times the leader is killed.
	Writes, Kills int
	// Stderr gets the nodes' lines that are not JSON log records.
	Stderr io.Writer
}

// procBenchResult holds what benchClusterProcesses measured.
type procBenchResult struct {
	// Leader and Follower are the latencies of tenant PUTs sent to the
	// leader's HTTP API and to a follower's (which forwards the change to
	// the leader over the cluster's gRPC), from sending the request to
	// reading the answer.
	Leader, Follower cluster.Latency
	Kills            []procBenchKill
}

// procBenchKill is one leader kill.
type procBenchKill struct {
	Killed, NewLeader string
	// Failover is from SIGKILL to the answer of the first tenant PUT a
	// survivor committed; Refused counts the 503s (and failed connections)
	// before it.
	Failover time.Duration
	Refused  int
	// Timeouts are when, after SIGKILL, each survivor's raft reached its
	// heartbeat timeout and stood for election, and Elected when one won,
	// read from their logs (0 if missing).
	Timeouts []time.Duration
	Elected  time.Duration
	// Rejoin is from restarting the killed node to all three nodes being
	// ready, live, agreeing on the leader and at the same applied index.
	Rejoin time.Duration
}

// failoverRetry is the pause between two tenant PUTs while a survivor
// answers 503 during an election; it bounds the measurement's resolution,
// against failovers of one to three seconds.
const failoverRetry = 5 * time.Millisecond

// benchClusterProcesses starts three `hopwatch serve` processes on loopback
// (the first bootstraps, the others join it), times tenant PUTs through the
// leader's and a follower's HTTP API, then kills the leader with SIGKILL
// opts.Kills times, timing each kill to the first write a survivor
// commits, and restarting the killed node from its directory before the
// next kill. Every node is killed and waited for before it returns.
func benchClusterProcesses(ctx context.Context, opts procBenchOptions) (res procBenchResult, err error) {
	dir, err := os.MkdirTemp(opts.Dir, "hopwatch-cluster-bench-")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()
	addrs, err := freeLoopbackAddrs(6)
	if err != nil {
		return res, err
	}
	b := &procBench{opts: opts, client: &http.Client{Timeout: 30 * time.Second}}
	// Registered after the directory's removal, so it runs before it.
	defer b.stop()
	for i := range 3 {
		n := &benchProc{id: fmt.Sprintf("n%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("n%d", i+1)), raft: addrs[2*i], grpc: addrs[2*i+1]}
		for _, m := range b.nodes {
			n.join = append(n.join, m.grpc)
		}
		b.nodes = append(b.nodes, n)
		if err := b.start(ctx, n); err != nil {
			return res, err
		}
	}
	leader, err := b.settle(ctx)
	if err != nil {
		return res, err
	}
	follower := b.nodes[(slices.Index(b.nodes, leader)+1)%3]
	if res.Leader, err = b.timeWrites(ctx, leader, "bench-leader"); err != nil {
		return res, err
	}
	if res.Follower, err = b.timeWrites(ctx, follower, "bench-follower"); err != nil {
		return res, err
	}

	for k := range opts.Kills {
		leader, err := b.settle(ctx)
		if err != nil {
			return res, err
		}
		survivor := b.nodes[(slices.Index(b.nodes, leader)+1)%3]
		kill := procBenchKill{Killed: leader.id}
		start := time.Now()
		if err := leader.p.cmd.Process.Kill(); err != nil {
			return res, fmt.Errorf("killing %s: %w", leader.id, err)
		}
		body := fmt.Sprintf(`{"limits": {"ingestion_rate_spans": %d}}`, k+1)
		for {
			code, msg, err := b.putTenant(ctx, survivor, "failover", body)
			if err == nil && (code == http.StatusOK || code == http.StatusCreated) {
				break
			}
			if err == nil && code != http.StatusServiceUnavailable {
				return res, fmt.Errorf("kill %d: a tenant PUT through %s answered %d: %s", k+1, survivor.id, code, msg)
			}
			if time.Since(start) > time.Minute {
				return res, fmt.Errorf("kill %d: no write committed through %s within a minute of killing %s: %d %s %v", k+1, survivor.id, leader.id, code, msg, err)
			}
			kill.Refused++
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(failoverRetry):
			}
		}
		kill.Failover = time.Since(start)
		if st, err := b.status(ctx, survivor); err == nil {
			kill.NewLeader = st.LeaderID
		}
		for _, n := range b.nodes {
			if n == leader {
				continue
			}
			if at, ok := firstLogSince(n.p, "heartbeat timeout reached, starting election", start); ok {
				kill.Timeouts = append(kill.Timeouts, at.Sub(start))
			}
			if at, ok := firstLogSince(n.p, "election won", start); ok {
				kill.Elected = at.Sub(start)
			}
		}
		slices.Sort(kill.Timeouts)
		<-leader.p.done
		restarted := time.Now()
		if err := b.start(ctx, leader); err != nil {
			return res, err
		}
		if _, err := b.settle(ctx); err != nil {
			return res, err
		}
		kill.Rejoin = time.Since(restarted)
		res.Kills = append(res.Kills, kill)
	}
	return res, nil
}

// procBench is the state of one benchClusterProcesses run.
type procBench struct {
	opts   procBenchOptions
	client *http.Client
	nodes  []*benchProc
}

// benchProc is one node: its cluster addresses and directory stay the same
// across restarts.
type benchProc struct {
	id, dir, raft, grpc string
	join                []string
	p                   *proc
}

func (n *benchProc) url() string { return "http://" + n.p.addrs.web }

// start starts n's process with the flags of its first start, as an
// operator restarts a node, and waits until it listens.
func (b *procBench) start(ctx context.Context, n *benchProc) error {
	args := []string{"--storage.path=" + n.dir, "--cluster.node-id=" + n.id,
		"--cluster.raft-address=" + n.raft, "--cluster.grpc-address=" + n.grpc}
	if len(n.join) > 0 {
		args = append(args, "--cluster.join="+strings.Join(n.join, ","))
	}
	// The last records are kept for error messages; each committed tenant
	// change logs one.
	p, err := startServe(b.opts.Exe, b.opts.Env, 50, func(line string) { fmt.Fprintf(b.opts.Stderr, "%s: %s\n", n.id, line) }, args...)
	if err != nil {
		return fmt.Errorf("starting %s: %w", n.id, err)
	}
	n.p = p
	select {
	case <-p.listening:
		return nil
	case <-p.done:
		return fmt.Errorf("%s exited before listening: %s", n.id, strings.Join(p.logLines(), "\n"))
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Minute):
		return fmt.Errorf("%s did not listen within a minute", n.id)
	}
}

// stop kills every node still running and waits for it.
func (b *procBench) stop() {
	for _, n := range b.nodes {
		if n.p != nil {
			n.p.kill()
		}
	}
}

// settle waits until every node is ready, sees three live members, follows
// the same leader and has applied the same index (the restarted node has
// caught up), and returns the leader.
func (b *procBench) settle(ctx context.Context) (*benchProc, error) {
	deadline := time.Now().Add(time.Minute)
	var last []string
	for {
		var leader *benchProc
		ok := true
		last = last[:0]
		var applied []uint64
		for _, n := range b.nodes {
			st, err := b.status(ctx, n)
			if err != nil {
				ok = false
				last = append(last, fmt.Sprintf("%s: %v", n.id, err))
				continue
			}
			last = append(last, fmt.Sprintf("%s: leader %q, ready %t, %d members, applied %d", n.id, st.LeaderID, st.Ready, len(st.Members), st.AppliedIndex))
			live := 0
			for _, m := range st.Members {
				if m.State == "live" {
					live++
				}
			}
			ok = ok && st.Ready && st.LeaderID != "" && len(st.Members) == 3 && live == 3 &&
				(leader == nil || leader.id == st.LeaderID)
			for _, m := range b.nodes {
				if m.id == st.LeaderID {
					leader = m
				}
			}
			applied = append(applied, st.AppliedIndex)
		}
		if ok && leader != nil && len(applied) == 3 && applied[0] == applied[1] && applied[1] == applied[2] {
			return leader, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("the nodes did not settle within a minute: %s", strings.Join(last, "; "))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// status is GET /api/v1/cluster on n.
func (b *procBench) status(ctx context.Context, n *benchProc) (server.ClusterStatus, error) {
	var st server.ClusterStatus
	code, data, err := b.call(ctx, http.MethodGet, n.url()+"/api/v1/cluster", "")
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("GET /api/v1/cluster: %d %s", code, data)
	}
	var env struct {
		Data server.ClusterStatus `json:"data"`
	}
	if err := json.Unmarshal(data, &env); err != nil {
		return st, fmt.Errorf("GET /api/v1/cluster: %w", err)
	}
	return env.Data, nil
}

// putTenant is PUT /api/v1/admin/tenants/{id} on n; it returns the status
// and the body.
func (b *procBench) putTenant(ctx context.Context, n *benchProc, id, body string) (int, string, error) {
	code, data, err := b.call(ctx, http.MethodPut, n.url()+"/api/v1/admin/tenants/"+id, body)
	return code, string(data), err
}

func (b *procBench) call(ctx context.Context, method, u, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := b.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// timeWrites times opts.Writes tenant PUTs of tenant id through n, each
// changing a limit so that each is a change committed through raft.
func (b *procBench) timeWrites(ctx context.Context, n *benchProc, id string) (cluster.Latency, error) {
	ds := make([]time.Duration, 0, b.opts.Writes)
	for j := range b.opts.Writes {
		body := fmt.Sprintf(`{"limits": {"ingestion_rate_spans": %d}}`, j+1)
		start := time.Now()
		code, msg, err := b.putTenant(ctx, n, id, body)
		if err != nil {
			return cluster.Latency{}, fmt.Errorf("PUT tenant %s through %s: %w", id, n.id, err)
		}
		if code != http.StatusOK && code != http.StatusCreated {
			return cluster.Latency{}, fmt.Errorf("PUT tenant %s through %s: %d %s", id, n.id, code, msg)
		}
		ds = append(ds, time.Since(start))
	}
	return latencyOf(ds), nil
}

// firstLogSince returns the time of p's first kept log record with msg
// logged at or after since (wall clock: the nodes run on this host).
func firstLogSince(p *proc, msg string, since time.Time) (time.Time, bool) {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	for _, r := range p.logs {
		if r["msg"] != msg {
			continue
		}
		s, _ := r["time"].(string)
		at, err := time.Parse(time.RFC3339Nano, s)
		if err == nil && !at.Before(since.Round(0)) {
			return at, true
		}
	}
	return time.Time{}, false
}

// latencyOf summarises durations with nearest-rank percentiles, as
// cluster.Benchmark does.
func latencyOf(ds []time.Duration) cluster.Latency {
	if len(ds) == 0 {
		return cluster.Latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := func(q float64) time.Duration {
		i := int(q*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return cluster.Latency{N: len(s), P50: rank(0.5), P99: rank(0.99), Max: s[len(s)-1]}
}

// printProcBench writes the result as Markdown.
func printProcBench(w io.Writer, o procBenchOptions, res procBenchResult) {
	ms := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds()*1e3, 'f', 2, 64) }
	fmt.Fprintf(w, "3 hopwatch serve processes on loopback, data on disk, %d tenant PUTs per side, %d leader kills (SIGKILL)\n\n", o.Writes, len(res.Kills))
	fmt.Fprintln(w, "| tenant PUT over HTTP | n | p50 ms | p99 ms | max ms |")
	fmt.Fprintln(w, "|---|---|---|---|---|")
	for _, r := range []struct {
		name string
		l    cluster.Latency
	}{{"to the leader", res.Leader}, {"to a follower (forwarded to the leader)", res.Follower}} {
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", r.name, r.l.N, ms(r.l.P50), ms(r.l.P99), ms(r.l.Max))
	}
	if len(res.Kills) == 0 {
		return
	}
	fmt.Fprintln(w, "\n| kill | killed | new leader | survivors' heartbeat timeouts ms | election won ms | SIGKILL → write committed ms | 503s before it | restart → caught up ms |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	var fs []time.Duration
	for i, k := range res.Kills {
		var tos []string
		for _, d := range k.Timeouts {
			tos = append(tos, ms(d))
		}
		fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %d | %s |\n", i+1, k.Killed, k.NewLeader, strings.Join(tos, ", "), ms(k.Elected), ms(k.Failover), k.Refused, ms(k.Rejoin))
		fs = append(fs, k.Failover)
	}
	fmt.Fprintf(w, "\nleader failover (SIGKILL → a survivor committed a tenant PUT): median %s ms, min %s ms, max %s ms over %d kills\n",
		ms(median(fs)), ms(slices.Min(fs)), ms(slices.Max(fs)), len(fs))
}

// median is the middle duration, or the mean of the two middle ones.
func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
