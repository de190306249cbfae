package alerting

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// panicking is a tenant whose preparation for an evaluation panics.
type panicking struct{ noData }

func (panicking) Prepare(context.Context, string, time.Time) { panic("boom") }

// TestEvaluationPanicIsAFailedEvaluation: an evaluation that panics is
// counted and logged, and its group keeps being evaluated (a panic in the
// rules manager's goroutine used to end the process).
func TestEvaluationPanicIsAFailedEvaluation(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yml")
	require.NoError(t, os.WriteFile(file, []byte("groups:\n  - name: g\n    interval: 1s\n    rules:\n      - record: r\n        expr: vector(1)\n"), 0o644))
	o := DefaultOptions()
	o.Dir = filepath.Join(dir, "store")
	o.RulesPaths = []string{file}
	reg := prometheus.NewRegistry()
	r, err := New(o, panicking{}, reg, nil)
	require.NoError(t, err)
	require.NoError(t, r.Run())
	defer r.Stop()
	require.Eventually(t, func() bool { return testutil.ToFloat64(r.own.panics) >= 2 }, 30*time.Second, 10*time.Millisecond,
		"the group is evaluated again after a panic")
}

// TestCheckExprRefusesAtTheAPIAndSkipsAtLoad: a rule whose expression
// fails Options.CheckExpr is refused by the API with its line, and
// skipped when a file holding it loads, its group's other rules kept.
func TestCheckExprRefusesAtTheAPIAndSkipsAtLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "rules.yml")
	require.NoError(t, os.WriteFile(file, []byte("groups:\n  - name: g\n    rules:\n      - record: bad\n        expr: vector(2)\n      - record: good\n        expr: vector(1)\n  - name: broken\n    rules:\n      - record: x\n        expr: sum(\n"), 0o644))
	o := DefaultOptions()
	o.Dir = filepath.Join(dir, "store")
	o.RulesPaths = []string{file}
	o.CheckExpr = func(expr string) error {
		if expr == "vector(2)" {
			return os.ErrInvalid
		}
		return nil
	}
	r, err := New(o, noData{}, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	require.NoError(t, r.Run())
	defer r.Stop()
	groups := r.Manager(o.DefaultTenant).RuleGroups()
	require.Len(t, groups, 1)
	require.Len(t, groups[0].Rules(), 1)
	require.Equal(t, "good", groups[0].Rules()[0].Name())
	require.Equal(t, 2.0, testutil.ToFloat64(r.own.skipped))

	_, err = r.store.parseGroup([]byte("name: g\nrules:\n  - record: ok\n    expr: vector(1)\n  - record: bad\n    expr: vector(2)\n"))
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorContains(t, err, `line 5: recording rule "bad" cannot be evaluated`)
}
