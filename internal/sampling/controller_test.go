package sampling

import (
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// Run's goroutine must end when it is told to stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testOptions: overloaded above 10 in flight or 90% CPU, calm at most 5 in
// flight and 45% CPU, three calm intervals per step down, levels 0..4.
func testOptions() Options {
	o := DefaultOptions()
	o.MaxQueueDepth = 10
	o.MaxCPU = 0.9
	o.CalmRatio = 0.5
	o.RecoverIntervals = 3
	o.MaxLevel = 4
	return o
}

var (
	over = Signals{QueueDepth: 11, CPU: 0.1}
	calm = Signals{QueueDepth: 2, CPU: 0.3}
	band = Signals{QueueDepth: 7, CPU: 0.3} // neither overloaded nor calm
)

func newTestController(t *testing.T, reg prometheus.Registerer) *Controller {
	t.Helper()
	c, err := New(testOptions(), reg, nil)
	require.NoError(t, err)
	return c
}

func TestControllerLevels(t *testing.T) {
	// f feeds the signals to a new controller and checks the level after
	// each interval.
	f := func(name string, signals []Signals, levels []int) {
		t.Helper()
		require.Len(t, levels, len(signals), name)
		c := newTestController(t, nil)
		var got []int
		for _, s := range signals {
			got = append(got, c.Observe(s))
		}
		require.Equal(t, levels, got, name)
	}
	rep := func(s Signals, n int) []Signals {
		out := make([]Signals, n)
		for i := range out {
			out[i] = s
		}
		return out
	}
	cat := func(parts ...[]Signals) []Signals {
		var out []Signals
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}

	f("calm load keeps every trace", rep(calm, 5), []int{0, 0, 0, 0, 0})
	f("load in the band changes nothing at level 0", rep(band, 3), []int{0, 0, 0})
	f("overload halves the share once per interval, down to 2^-MaxLevel",
		rep(over, 6), []int{1, 2, 3, 4, 4, 4})
	f("the queue depth at its maximum is not overload",
		[]Signals{{QueueDepth: 10}, {QueueDepth: 11}}, []int{0, 1})
	f("CPU alone overloads", []Signals{{CPU: 0.9}, {CPU: 0.91}}, []int{0, 1})
	f("unknown CPU neither overloads nor spoils calm",
		cat([]Signals{over}, rep(Signals{QueueDepth: 1, CPU: math.NaN()}, 3)), []int{1, 1, 1, 0})
	f("each step down needs RecoverIntervals calm intervals",
		cat(rep(over, 2), rep(calm, 6)), []int{1, 2, 2, 2, 1, 1, 1, 0})
	f("the band holds the level and restarts the calm count",
		cat([]Signals{over}, rep(calm, 2), []Signals{band}, rep(calm, 3)), []int{1, 1, 1, 1, 1, 1, 0})
	f("overload soon after a step down doubles the next wait",
		cat([]Signals{over}, rep(calm, 3), []Signals{over}, rep(calm, 6)),
		[]int{1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0})
	f("overload after a step down held does not",
		cat([]Signals{over}, rep(calm, 3), rep(band, 3), []Signals{over}, rep(calm, 3)),
		[]int{1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 0})
}

// TestBackoffIsBoundedAndDecays flaps between levels 0 and 1 (every step
// down overloads the node at once) and checks the calm intervals each step
// down waits for: doubling up to MaxBackoff times RecoverIntervals, back to
// RecoverIntervals once a step down to 0 holds.
func TestBackoffIsBoundedAndDecays(t *testing.T) {
	c := newTestController(t, nil)
	calmUntilDown := func() int {
		t.Helper()
		for n := 1; n <= 10*MaxBackoff*3; n++ {
			if c.Observe(calm) == 0 {
				return n
			}
		}
		t.Fatal("never stepped down")
		return 0
	}
	require.Equal(t, 1, c.Observe(over))
	var waits []int
	for range 8 {
		waits = append(waits, calmUntilDown())
		require.Equal(t, 1, c.Observe(over), "the step down overloads at once")
	}
	require.Equal(t, []int{3, 6, 12, 24, 48, 96, 96, 96}, waits)

	// A step down that holds for its wait ends the backoff.
	require.Equal(t, 96, calmUntilDown())
	for range 96 {
		require.Equal(t, 0, c.Observe(calm))
	}
	require.Equal(t, 1, c.Observe(over))
	require.Equal(t, 3, calmUntilDown())
}

func TestControllerMetricsAndPin(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := newTestController(t, reg)
	require.Equal(t, 1.0, testutil.ToFloat64(c.metrics.probability))
	c.Observe(over)
	c.Observe(Signals{QueueDepth: 12, CPU: 0.95})
	require.Equal(t, 2, c.Level())
	require.Equal(t, 0.25, testutil.ToFloat64(c.metrics.probability))
	require.Equal(t, 12.0, testutil.ToFloat64(c.metrics.queueDepth))
	require.Equal(t, 0.95, testutil.ToFloat64(c.metrics.cpu))
	require.Equal(t, 2.0, testutil.ToFloat64(c.metrics.up))
	require.Zero(t, testutil.ToFloat64(c.metrics.down))

	c.Pin(3)
	for _, s := range []Signals{over, calm, calm, calm, calm, over} {
		require.Equal(t, 3, c.Observe(s), "a pinned level does not move")
	}
	require.Equal(t, 0.125, testutil.ToFloat64(c.metrics.probability))
	c.Pin(99)
	require.Equal(t, testOptions().MaxLevel, c.Level())
	c.Pin(-1)
	require.Equal(t, 0, c.Level())

	n, err := testutil.GatherAndCount(reg, "hopwatch_raw_sampling_probability", "hopwatch_raw_sampling_changes_total")
	require.NoError(t, err)
	require.Equal(t, 3, n)
}

func TestProbability(t *testing.T) {
	require.Equal(t, 1.0, Probability(0))
	require.Equal(t, 1.0/16, Probability(4))
	require.Equal(t, 1.0/1024, Probability(10))
}

func TestOptionsValidate(t *testing.T) {
	require.NoError(t, DefaultOptions().Validate())
	err := Options{MaxCPU: 1.5, CalmRatio: 1, MaxLevel: 57}.Validate()
	for _, field := range []string{"Interval", "MaxQueueDepth", "MaxCPU", "CalmRatio", "RecoverIntervals", "MaxLevel"} {
		require.ErrorContains(t, err, field)
	}
	_, err = New(Options{}, nil, nil)
	require.ErrorContains(t, err, "hopwatch/sampling: invalid options")
}

func TestCPUMeter(t *testing.T) {
	start := time.Unix(1000, 0)
	cpu, ok := 10*time.Second, true
	m := newCPUMeter(start, func() (time.Duration, bool) { return cpu, ok })
	m.procs = func() int { return 2 }

	cpu += 1500 * time.Millisecond
	require.InDelta(t, 0.75, m.utilization(start.Add(time.Second)), 1e-12, "1.5 s of CPU in 1 s on 2 procs")
	cpu += 4 * time.Second
	require.InDelta(t, 1.0, m.utilization(start.Add(3*time.Second)), 1e-12)
	require.True(t, math.IsNaN(m.utilization(start.Add(3*time.Second))), "no time passed")

	ok = false
	require.True(t, math.IsNaN(m.utilization(start.Add(4*time.Second))))
	ok = true
	require.True(t, math.IsNaN(m.utilization(start.Add(5*time.Second))), "no valid start of the interval")
	cpu += time.Second
	require.InDelta(t, 0.5, m.utilization(start.Add(6*time.Second)), 1e-12)
}

func TestProcessCPUTimeAdvances(t *testing.T) {
	before, ok := processCPUTime()
	require.True(t, ok)
	x := 0
	for i := range 50_000_000 {
		x ^= i * i
	}
	after, ok := processCPUTime()
	require.True(t, ok)
	require.Greater(t, after, before, "burned CPU (%d)", x)
}

// TestRunStops runs the loop on an overloaded node until it has decided
// twice, then stops it; goleak checks the goroutine is gone.
func TestRunStops(t *testing.T) {
	o := testOptions()
	o.Interval = time.Millisecond
	c, err := New(o, nil, nil)
	require.NoError(t, err)
	calls := make(chan struct{})
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(stop, func() int {
			select {
			case calls <- struct{}{}:
			default:
			}
			return 100
		})
	}()
	<-calls
	<-calls // the first decision is made before the second measurement
	close(stop)
	<-done
	require.GreaterOrEqual(t, c.Level(), 1)
}
