package sampling

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Options configures a Controller.
type Options struct {
	// Interval is how often the load is measured and the level revised.
	Interval time.Duration
	// MaxQueueDepth is the number of raw appends in flight above which the
	// node counts as overloaded.
	MaxQueueDepth int
	// MaxCPU is the process's CPU utilisation, as a share of GOMAXPROCS,
	// above which the node counts as overloaded.
	MaxCPU float64
	// CalmRatio places the lower thresholds: the load is calm when the
	// queue depth and the CPU utilisation are both at most CalmRatio times
	// their maximum. Between the two thresholds the level holds.
	CalmRatio float64
	// RecoverIntervals is the number of consecutive calm intervals before
	// the level steps down (the share kept doubles). The wait doubles, up
	// to MaxBackoff times RecoverIntervals, when a step down is followed
	// by overload within the wait, and halves when a step down holds that
	// long (back to RecoverIntervals once level 0 holds).
	RecoverIntervals int
	// MaxLevel bounds the level: the raw tier keeps at least 2^-MaxLevel
	// of the traces.
	MaxLevel int
}

// MaxBackoff bounds how far RecoverIntervals grows when steps down keep
// overloading the node: with the defaults, 10 s becomes at most 5 min 20 s.
const MaxBackoff = 32

// randomBits is the number of random bits in a W3C trace id: a level
// beyond it could not split traces any further.
const randomBits = 56

// DefaultOptions returns the defaults: one decision a second, overloaded
// above 64 appends in flight or 90% CPU, calm below 80% of both, ten calm
// seconds per step down, at least one trace in 1024 kept.
func DefaultOptions() Options {
	return Options{
		Interval: time.Second,
		// Little's law: at hopwatch's target of 1 M spans/s in batches of
		// 512, raw appends take about 130 µs each and fewer than one is in
		// flight on average; 64 in flight means each waits tens of
		// milliseconds on the raw WAL.
		MaxQueueDepth:    64,
		MaxCPU:           0.9,
		CalmRatio:        0.8,
		RecoverIntervals: 10,
		MaxLevel:         10,
	}
}

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Interval <= 0 {
		add("Interval %s must be positive", o.Interval)
	}
	if o.MaxQueueDepth < 1 {
		add("MaxQueueDepth %d must be at least 1", o.MaxQueueDepth)
	}
	if !(o.MaxCPU > 0 && o.MaxCPU <= 1) {
		add("MaxCPU %g outside (0, 1]", o.MaxCPU)
	}
	if !(o.CalmRatio > 0 && o.CalmRatio < 1) {
		add("CalmRatio %g outside (0, 1)", o.CalmRatio)
	}
	if o.RecoverIntervals < 1 {
		add("RecoverIntervals %d must be at least 1", o.RecoverIntervals)
	}
	if o.MaxLevel < 1 || o.MaxLevel > randomBits {
		add("MaxLevel %d outside [1, %d]", o.MaxLevel, randomBits)
	}
	return errors.Join(errs...)
}

// Signals are the load measurements of one interval.
type Signals struct {
	// QueueDepth is the number of raw appends in flight.
	QueueDepth int
	// CPU is the process's CPU time over the interval divided by the
	// interval and GOMAXPROCS. NaN when unknown: it then neither overloads
	// the node nor keeps it from being calm.
	CPU float64
}

type metrics struct {
	probability prometheus.Gauge
	queueDepth  prometheus.Gauge
	cpu         prometheus.Gauge
	up, down    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	changes := f.NewCounterVec(prometheus.CounterOpts{
		Name: "hopwatch_raw_sampling_changes_total",
		Help: "Changes of the raw tier's sampling level: up halves the share of traces kept, down doubles it.",
	}, []string{"direction"})
	return &metrics{
		probability: f.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_raw_sampling_probability",
			Help: "Share of traces whose samples the raw tier keeps (1 unless overloaded); each kept sample carries the weight 1/probability.",
		}),
		queueDepth: f.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_raw_sampling_queue_depth",
			Help: "Raw appends in flight at the last sampling decision.",
		}),
		cpu: f.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_raw_sampling_cpu_utilization_ratio",
			Help: "Process CPU time over the last sampling interval, as a share of GOMAXPROCS.",
		}),
		up:   changes.WithLabelValues("up"),
		down: changes.WithLabelValues("down"),
	}
}

// Controller holds the raw tier's sampling level: 0 keeps every trace,
// level k keeps 2^-k of them. Level is safe to call from any goroutine and
// costs an atomic load; Observe and Run are for one goroutine at a time.
type Controller struct {
	opts    Options
	logger  *slog.Logger
	metrics *metrics
	level   atomic.Int32

	mtx       sync.Mutex
	pinned    bool
	calm      int // consecutive calm intervals at the current level
	wait      int // calm intervals needed for the next step down
	sinceDown int // intervals since the last step down; -1 after an overload
}

// New returns a controller at level 0.
func New(opts Options, reg prometheus.Registerer, logger *slog.Logger) (*Controller, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/sampling: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	c := &Controller{opts: opts, logger: logger, metrics: newMetrics(reg), wait: opts.RecoverIntervals, sinceDown: -1}
	c.metrics.probability.Set(1)
	return c, nil
}

// Level returns the current sampling level.
func (c *Controller) Level() int { return int(c.level.Load()) }

// Probability returns 2^-level for a level.
func Probability(level int) float64 { return math.Ldexp(1, -level) }

// Pin fixes the level, clamped to [0, MaxLevel]; Observe no longer changes
// it.
func (c *Controller) Pin(level int) {
	c.mtx.Lock()
	defer c.mtx.Unlock()
	c.pinned = true
	c.set(min(max(level, 0), c.opts.MaxLevel))
}

// Observe takes the measurements of one interval and returns the level
// for the next:
//
//   - overloaded (queue depth or CPU above its maximum): one level up, at
//     once, up to MaxLevel;
//   - calm (both at most CalmRatio of their maximum) for the needed number
//     of consecutive intervals: one level down;
//   - in between: the level holds and the calm count restarts.
//
// The gap between the thresholds and the calm intervals keep the level
// from flapping; a step down that overloads the node again soon makes the
// next one wait twice as long.
func (c *Controller) Observe(s Signals) int {
	c.mtx.Lock()
	defer c.mtx.Unlock()
	c.metrics.queueDepth.Set(float64(s.QueueDepth))
	c.metrics.cpu.Set(s.CPU)
	level := c.Level()
	if c.pinned {
		return level
	}
	o := c.opts
	overloaded := s.QueueDepth > o.MaxQueueDepth || s.CPU > o.MaxCPU
	calm := float64(s.QueueDepth) <= o.CalmRatio*float64(o.MaxQueueDepth) && !(s.CPU > o.CalmRatio*o.MaxCPU)
	if c.sinceDown >= 0 {
		c.sinceDown++
		if c.sinceDown >= c.wait {
			// The last step down held: the backoff decays, and is gone
			// once every trace is kept again.
			c.wait = max(c.wait/2, o.RecoverIntervals)
			if level == 0 {
				c.wait = o.RecoverIntervals
			}
			c.sinceDown = -1
		}
	}
	switch {
	case overloaded:
		c.calm = 0
		if c.sinceDown >= 0 {
			// The last step down did not hold: the level below is too
			// much for this load, so try it less often.
			c.wait = min(2*c.wait, MaxBackoff*o.RecoverIntervals)
			c.sinceDown = -1
		}
		if level < o.MaxLevel {
			c.set(level + 1)
			c.metrics.up.Inc()
			c.logger.Warn("raw tier overloaded: sampling more", "probability", Probability(level+1), "queue_depth", s.QueueDepth, "cpu", s.CPU)
		}
	case calm && level > 0:
		c.calm++
		if c.calm >= c.wait {
			c.calm = 0
			c.sinceDown = 0
			c.set(level - 1)
			c.metrics.down.Inc()
			c.logger.Info("raw tier load is low: sampling less", "probability", Probability(level-1), "queue_depth", s.QueueDepth, "cpu", s.CPU)
		}
	default:
		c.calm = 0
	}
	return c.Level()
}

// set stores the level; the caller holds c.mtx.
func (c *Controller) set(level int) {
	c.level.Store(int32(level))
	c.metrics.probability.Set(Probability(level))
}

// Run revises the level every Interval from the queue depth queueDepth
// reports and the process's CPU utilisation, until stop is closed.
func (c *Controller) Run(stop <-chan struct{}, queueDepth func() int) {
	t := time.NewTicker(c.opts.Interval)
	defer t.Stop()
	cpu := newCPUMeter(time.Now(), processCPUTime)
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			c.Observe(Signals{QueueDepth: queueDepth(), CPU: cpu.utilization(now)})
		}
	}
}
