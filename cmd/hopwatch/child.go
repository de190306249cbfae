package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"sync"
)

// proc is `hopwatch serve` running as a child process, logging JSON on its
// stderr, which is read into memory. The tests and `hopwatch bench cluster
// --processes` start nodes this way.
type proc struct {
	cmd   *exec.Cmd
	addrs struct{ web, grpc, http string }
	// keep bounds logs to the latest keep records; 0 keeps every record.
	keep int
	mtx  sync.Mutex
	logs []map[string]any
	// listening is closed once the node logs its listeners' addresses
	// (addrs is set before); done once it has exited and been waited for.
	listening, done chan struct{}
}

// startServe starts `exe serve` with JSON logs and every listener on a free
// loopback port, then args (which may override those). A stderr line that is
// not JSON (a panic, the Go runtime's messages) goes to text. The caller
// owns the process: it must kill it or wait for done.
func startServe(exe string, env []string, keep int, text func(string), args ...string) (*proc, error) {
	args = append([]string{"serve", "--log.format=json",
		"--web.listen-address=127.0.0.1:0", "--otlp.grpc.listen-address=127.0.0.1:0", "--otlp.http.listen-address=127.0.0.1:0",
		"--cluster.raft-address=127.0.0.1:0", "--cluster.grpc-address=127.0.0.1:0"}, args...)
	p := &proc{cmd: exec.Command(exe, args...), keep: keep, listening: make(chan struct{}), done: make(chan struct{})}
	p.cmd.Env = env
	setPdeathsig(p.cmd)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		var once sync.Once
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				text(sc.Text())
				continue
			}
			p.mtx.Lock()
			p.logs = append(p.logs, rec)
			if p.keep > 0 && len(p.logs) > 2*p.keep {
				p.logs = append(p.logs[:0], p.logs[len(p.logs)-p.keep:]...)
			}
			p.mtx.Unlock()
			if rec["msg"] == "listening" {
				p.addrs.web, _ = rec["web"].(string)
				p.addrs.grpc, _ = rec["otlp_grpc"].(string)
				p.addrs.http, _ = rec["otlp_http"].(string)
				once.Do(func() { close(p.listening) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = p.cmd.Wait()
	}()
	return p, nil
}

// kill sends SIGKILL and waits until the process has exited.
func (p *proc) kill() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logLines returns the kept log records as JSON lines.
func (p *proc) logLines() []string {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	var out []string
	for _, r := range p.logs {
		b, _ := json.Marshal(r)
		out = append(out, string(b))
	}
	return out
}

// freeLoopbackAddrs returns n loopback addresses whose ports were free a
// moment ago. A node's raft address must stay the same across its restarts,
// so its cluster ports are chosen up front rather than left to the kernel.
// They are drawn below Linux's ephemeral range (32768 and up), where the
// kernel never hands out a port to a listener on :0, so that other tests'
// listeners cannot take one between the choice and the node's bind.
func freeLoopbackAddrs(n int) (out []string, err error) {
	for tries := 0; len(out) < n; tries++ {
		if tries == 1000 {
			return nil, errors.New("choosing a free loopback port: no free port found in 20000-32767")
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", 20000+rand.IntN(12768)))
		if err != nil {
			continue // taken
		}
		defer func() { err = errors.Join(err, ln.Close()) }()
		out = append(out, ln.Addr().String())
	}
	return out, nil
}
