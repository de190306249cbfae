package main

import (
	"os"
	"strings"
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

// startProc starts hopwatch serve with args plus JSON logs and loopback
// ports, and waits until it listens; the test's cleanup kills it.
func startProc(t *testing.T, args ...string) *proc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	p, err := startServe(exe, append(os.Environ(), "HOPWATCH_TEST_RUN_MAIN=1"), 0,
		func(line string) { t.Logf("hopwatch: %s", line) }, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	select {
	case <-p.listening:
	case <-p.done:
		t.Fatalf("hopwatch exited before listening: %v", p.logLines())
	case <-time.After(60 * time.Second):
		t.Fatal("hopwatch did not start listening")
	}
	return p
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
