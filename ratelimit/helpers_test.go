package ratelimit

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeClock is a monotonic clock that moves only when told, beside a wall
// clock that can jump on its own, as NTP or an operator makes a real one.
// The limiter is given the monotonic reading only.
type fakeClock struct {
	mono atomic.Int64
	wall atomic.Int64 // Unix ns
}

func newFakeClock() *fakeClock {
	c := &fakeClock{}
	c.mono.Store(int64(time.Hour)) // not 0: no code may take 0 for "unset"
	c.wall.Store(time.Date(2026, 3, 29, 1, 59, 59, 0, time.UTC).UnixNano())
	return c
}

func (c *fakeClock) Now() int64 { return c.mono.Load() }

// Step moves both clocks forward by d, as time passing does.
func (c *fakeClock) Step(d time.Duration) {
	c.mono.Add(int64(d))
	c.wall.Add(int64(d))
}

// JumpWall moves the wall clock alone, as a clock step does.
func (c *fakeClock) JumpWall(d time.Duration) { c.wall.Add(int64(d)) }

func (c *fakeClock) Wall() time.Time { return time.Unix(0, c.wall.Load()) }

func newTestLimiter(t testing.TB, clock Clock, def Limit) *Limiter {
	t.Helper()
	l, err := New(Options{Name: "spans", Default: def, Clock: clock}, nil, nil)
	require.NoError(t, err)
	return l
}

// admitN makes count decisions of n units each and returns how many were
// admitted.
func admitN(l *Limiter, tenant string, count int, n int64) int {
	var ok int
	for range count {
		if l.AllowN(tenant, n).Allowed {
			ok++
		}
	}
	return ok
}

func stringsReader(s string) *strings.Reader { return strings.NewReader(s) }
