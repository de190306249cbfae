package main

import (
	"bufio"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMain lets a test re-run this binary as hopwatch itself, so that tests
// can start the server as a separate process without building it.
func TestMain(m *testing.M) {
	if os.Getenv("HOPWATCH_TEST_RUN_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// proc is hopwatch running as a child process.
type proc struct {
	cmd   *exec.Cmd
	addrs struct{ web, grpc, http string }
	mtx   sync.Mutex
	logs  []map[string]any
	done  chan struct{}
}

// startProc starts hopwatch with args plus JSON logs and loopback ports, and
// waits until it listens.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args = append([]string{"serve", "--log.format=json",
		"--web.listen-address=127.0.0.1:0", "--otlp.grpc.listen-address=127.0.0.1:0", "--otlp.http.listen-address=127.0.0.1:0",
		"--cluster.raft-address=127.0.0.1:0", "--cluster.grpc-address=127.0.0.1:0"}, args...)
	p := &proc{cmd: exec.Command(exe, args...), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), "HOPWATCH_TEST_RUN_MAIN=1")
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	listening := make(chan struct{})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				t.Logf("hopwatch: %s", sc.Text())
				continue
			}
			p.mtx.Lock()
			p.logs = append(p.logs, rec)
			p.mtx.Unlock()
			if rec["msg"] == "listening" {
				p.addrs.web, _ = rec["web"].(string)
				p.addrs.grpc, _ = rec["otlp_grpc"].(string)
				p.addrs.http, _ = rec["otlp_http"].(string)
				once.Do(func() { close(listening) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = p.cmd.Wait()
	}()
	select {
	case <-listening:
	case <-p.done:
		t.Fatalf("hopwatch exited before listening: %v", p.logLines())
	case <-time.After(60 * time.Second):
		t.Fatal("hopwatch did not start listening")
	}
	return p
}

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

// hasLog tells whether a log record with msg was written.
func (p *proc) hasLog(msg string) bool {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	for _, r := range p.logs {
		if m, _ := r["msg"].(string); strings.Contains(m, msg) {
			return true
		}
	}
	return false
}

// logField returns field of the last log record with msg.
func (p *proc) logField(msg, field string) (any, bool) {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	for i := len(p.logs) - 1; i >= 0; i-- {
		if m, _ := p.logs[i]["msg"].(string); m == msg {
			v, ok := p.logs[i][field]
			return v, ok
		}
	}
	return nil, false
}

// wait waits for the process to exit and returns its exit code.
func (p *proc) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		t.Fatal("hopwatch did not exit")
	}
	return p.cmd.ProcessState.ExitCode()
}
