// Package plugin_test runs the datasource's frontend checks from the Go
// test run: npm ci (when node_modules is missing or older than
// package-lock.json), the jest tests of the editors, the type check and the
// webpack build of dist/ (without npm on PATH those skip, saying so); and
// harness_test.go renders the built editors and the frames QueryData returns
// in headless Chromium against a real hopwatch node.
package plugin_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

func npm(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "npm", args...)
	cmd.Env = append(os.Environ(), "CI=true")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm %v: %v\n%s", args, err, out)
	}
	t.Logf("npm %v: ok", args)
}

func TestFrontend(t *testing.T) {
	if testing.Short() {
		t.Skip("frontend checks are not short")
	}
	if _, err := exec.LookPath("npm"); err != nil {
		t.Skip("npm not on PATH: the frontend's tests and build were not run")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	lock, err := os.Stat("package-lock.json")
	if err != nil {
		t.Fatal(err)
	}
	if inst, err := os.Stat(filepath.Join("node_modules", ".package-lock.json")); err != nil || inst.ModTime().Before(lock.ModTime()) {
		npm(t, ctx, "ci", "--no-audit", "--no-fund")
	}
	npm(t, ctx, "run", "typecheck")
	npm(t, ctx, "exec", "--", "jest", "--ci", "--maxWorkers=2")
	npm(t, ctx, "run", "build")
	for _, f := range []string{"plugin.json", "module.js", "img/logo.svg"} {
		if _, err := os.Stat(filepath.Join("dist", f)); err != nil {
			t.Errorf("the build left no dist/%s: %v", f, err)
		}
	}
}
