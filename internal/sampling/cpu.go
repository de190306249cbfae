package sampling

import (
	"math"
	"runtime"
	"time"
)

// cpuMeter turns the process's cumulative CPU time into its utilisation
// over the intervals between calls, as a share of GOMAXPROCS.
type cpuMeter struct {
	read    func() (time.Duration, bool) // cumulative CPU time, user and system
	procs   func() int
	lastCPU time.Duration
	lastAt  time.Time
	ok      bool
}

// newCPUMeter starts measuring at now.
func newCPUMeter(now time.Time, read func() (time.Duration, bool)) *cpuMeter {
	m := &cpuMeter{read: read, procs: func() int { return runtime.GOMAXPROCS(0) }, lastAt: now}
	m.lastCPU, m.ok = read()
	return m
}

// utilization returns the utilisation since the previous call (or since
// the start) and starts a new interval at now; NaN when the CPU time is
// unknown or no time has passed.
func (m *cpuMeter) utilization(now time.Time) float64 {
	cpu, ok := m.read()
	wasOK, last, lastAt := m.ok, m.lastCPU, m.lastAt
	m.lastCPU, m.lastAt, m.ok = cpu, now, ok
	wall := now.Sub(lastAt)
	if !ok || !wasOK || wall <= 0 {
		return math.NaN()
	}
	return (cpu - last).Seconds() / (wall.Seconds() * float64(m.procs()))
}
