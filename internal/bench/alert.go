package bench

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/storage/agg"
)

// AlertOptions configures the alert detection delay benchmark: a hopwatch
// node in this process and a real Alertmanager on loopback, one writer
// sending paced span hops through the Go client, and a step of the spans'
// P99 that two alerting rules must report.
type AlertOptions struct {
	// Alertmanager is the path of the Alertmanager binary.
	Alertmanager string
	// Runs is how many steps are measured, each with a fresh node and
	// Alertmanager, so that no state of one step (alert, group, watermark,
	// window) carries into the next.
	Runs int
	// Rate is the spans/s of the one writer.
	Rate float64
	// BatchInterval paces the load: every interval the spans due are sent
	// as one batch and the load waits for its acknowledgement.
	BatchInterval time.Duration
	// WarmUp is how long fast spans are sent before the step; longer than
	// Window, so that the window is full of them.
	WarmUp time.Duration
	// FastP99 and SlowP99 are the P99 of the span durations before and
	// after the step.
	FastP99, SlowP99 time.Duration
	// Sigma is the shape of the lognormal durations (σ of their log).
	Sigma float64
	// Threshold is the rules' P99 threshold.
	Threshold time.Duration
	// Window is the rules' range and the window the node records.
	Window time.Duration
	// FlushInterval and EvaluationInterval configure the node.
	FlushInterval, EvaluationInterval time.Duration
	// PollInterval spaces the GET /api/v2/alerts that time the arrival
	// of an alert at Alertmanager.
	PollInterval time.Duration
	// Timeout bounds the wait for both alerts after the step.
	Timeout time.Duration
	// Goal is the detection delay the figures are held against.
	Goal time.Duration
	// Seed seeds the durations and trace ids.
	Seed uint64
}

// DefaultAlertOptions is the case: 5,000 spans/s, P99 stepping
// from 5 ms to 50 ms, rules on P99 > 25 ms over 5 s, flush and
// evaluation every second, five runs.
//
// Sigma 0.5 puts the median at 1.6 ms before the step and 16 ms after:
// about 17% of the slow spans exceed 25 ms, so a 5 s window's P99 crosses
// once about 0.3 s of slow spans are in it. A wider sigma makes the data
// itself slower to cross (σ = 1 needs about 1 s).
func DefaultAlertOptions() AlertOptions {
	return AlertOptions{
		Alertmanager:       "/usr/bin/prometheus-alertmanager",
		Runs:               5,
		Rate:               5000,
		BatchInterval:      10 * time.Millisecond,
		WarmUp:             20 * time.Second,
		FastP99:            5 * time.Millisecond,
		SlowP99:            50 * time.Millisecond,
		Sigma:              0.5,
		Threshold:          25 * time.Millisecond,
		Window:             5 * time.Second,
		FlushInterval:      time.Second,
		EvaluationInterval: time.Second,
		PollInterval:       5 * time.Millisecond,
		Timeout:            30 * time.Second,
		Goal:               2 * time.Second,
		Seed:               1,
	}
}

// Validate reports every problem with the options, naming the field.
func (o AlertOptions) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Alertmanager == "" {
		add("Alertmanager must be set: the path of Debian's prometheus-alertmanager or another build")
	}
	if o.Runs <= 0 {
		add("invalid Runs %d: must be positive", o.Runs)
	}
	if o.Rate <= 0 {
		add("invalid Rate %g: must be positive", o.Rate)
	}
	if o.BatchInterval <= 0 {
		add("invalid BatchInterval %s: must be positive", o.BatchInterval)
	}
	if o.WarmUp <= o.Window {
		add("invalid WarmUp %s: must be longer than Window (%s) so that the window holds only fast spans", o.WarmUp, o.Window)
	}
	if o.FastP99 <= 0 || o.SlowP99 <= o.FastP99 {
		add("invalid FastP99 %s, SlowP99 %s: want 0 < FastP99 < SlowP99", o.FastP99, o.SlowP99)
	}
	if o.Threshold <= o.FastP99 || o.Threshold >= o.SlowP99 {
		add("invalid Threshold %s: must lie between FastP99 (%s) and SlowP99 (%s)", o.Threshold, o.FastP99, o.SlowP99)
	}
	if o.Sigma <= 0 {
		add("invalid Sigma %g: must be positive", o.Sigma)
	}
	if o.Window < time.Millisecond {
		add("invalid Window %s: must be at least 1ms", o.Window)
	}
	if o.FlushInterval < server.MinFlushInterval {
		add("invalid FlushInterval %s: must be at least %s", o.FlushInterval, server.MinFlushInterval)
	}
	if o.EvaluationInterval < time.Second {
		add("invalid EvaluationInterval %s: must be at least 1s", o.EvaluationInterval)
	}
	if o.PollInterval <= 0 {
		add("invalid PollInterval %s: must be positive", o.PollInterval)
	}
	if o.Timeout <= 0 {
		add("invalid Timeout %s: must be positive", o.Timeout)
	}
	return errors.Join(errs...)
}

// The two rules measured, in one group so that both are evaluated at the
// same instants: the exact path over the raw tier, and the window series
// the node records at each flush.
const (
	alertRaw    = "BenchP99Raw"
	alertWindow = "BenchP99Window"
)

// AlertTiming is one rule's detection in one run. Every duration is
// measured from t0, the moment the first batch holding slow spans was
// acknowledged to the writer.
type AlertTiming struct {
	// Fired is false when the alert did not reach Alertmanager within
	// Timeout; the durations are then zero.
	Fired bool
	// Crossing is when the data alone would let the rule fire: for the
	// raw rule the first acknowledgement at which the exact P99 over the
	// acknowledged spans of the window exceeds the threshold; for the
	// window rule the first recorded step (a multiple of FlushInterval)
	// whose window P99 exceeds it.
	Crossing time.Duration
	// StartsAt is the timestamp of the evaluation that fired (the alert's
	// startsAt at Alertmanager, in ms): the scheduled time, or the
	// watermark when that held it back.
	StartsAt time.Duration
	// Alertmanager is when GET /api/v2/alerts first listed the alert.
	Alertmanager time.Duration
	// Webhook is when Alertmanager's webhook for it arrived; Hooked is
	// false when none did within Timeout.
	Webhook time.Duration
	Hooked  bool
	// Holdback is how far the watermark held back the evaluation last
	// run when the alert was first listed (the firing one).
	Holdback time.Duration
}

// AlertRun is one step.
type AlertRun struct {
	Raw, Window AlertTiming
	// AckP50 and AckP99 are the writer's batch round trips (Flush to
	// acknowledgement) over the run.
	AckP50, AckP99 time.Duration
	// PollP50 is the median round trip of GET /api/v2/alerts: "at
	// Alertmanager" is the answer's arrival, late by up to a round trip
	// and a PollInterval.
	PollP50 time.Duration
	// FlushPhase and EvalPhase are where in each FlushInterval (counted
	// from the Unix epoch, as the recorded steps are) the node's flushes
	// and the rule group's scheduled evaluations fall. A recorded step
	// reaches the window rule FlushPhase after it, plus the time to the
	// next evaluation after that flush.
	FlushPhase, EvalPhase time.Duration
	// From the node's metrics at the end of the run.
	GroupLastDuration float64 // prometheus_rule_group_last_duration_seconds
	GroupP99Duration  float64 // prometheus_rule_group_duration_seconds{quantile="0.99"}
	IterationsMissed  float64 // prometheus_rule_group_iterations_missed_total
	NotifyP50         float64 // prometheus_notifications_latency_seconds{quantile="0.5"}: the POST to Alertmanager
}

// AlertResult holds every run.
type AlertResult struct {
	Runs []AlertRun
}

// Alert runs the benchmark and writes Markdown tables to w. Progress lines
// go to w as runs finish. A nil logger discards the node's log.
func Alert(ctx context.Context, w io.Writer, o AlertOptions, logger *slog.Logger) (AlertResult, error) {
	var res AlertResult
	if err := o.Validate(); err != nil {
		return res, fmt.Errorf("hopwatch/bench: invalid alert options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	for i := range o.Runs {
		r, err := alertRun(ctx, o, i, logger)
		if err != nil {
			return res, fmt.Errorf("run %d: %w", i+1, err)
		}
		res.Runs = append(res.Runs, r)
		fmt.Fprintf(w, "run %d/%d: at Alertmanager after %s ms (raw rule), %s ms (window rule)\n", i+1, o.Runs, fmtTiming(r.Raw, r.Raw.Alertmanager), fmtTiming(r.Window, r.Window.Alertmanager))
	}
	writeAlertReport(w, o, res)
	return res, nil
}

// sentSpan is a span the load sent, for computing when the data crossed.
type sentSpan struct{ start, dur, acked int64 }

func alertRun(ctx context.Context, o AlertOptions, run int, logger *slog.Logger) (AlertRun, error) {
	var res AlertRun
	dir, err := os.MkdirTemp("", "hopwatch-bench-alert-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	seen := &sightings{am: map[string]sighting{}, hook: map[string]sighting{}}
	hook, err := startHookServer(seen)
	if err != nil {
		return res, err
	}
	defer hook.stop()
	am, err := startAlertmanager(ctx, o.Alertmanager, dir, hook.url)
	if err != nil {
		return res, err
	}
	defer am.stop()

	rulesFile := filepath.Join(dir, "bench.yml")
	if err := os.WriteFile(rulesFile, []byte(alertRules(o)), 0o644); err != nil {
		return res, err
	}
	srv, reg, stopNode, err := startConfiguredNode("alert", logger, func(c *server.Config) {
		c.FlushInterval = o.FlushInterval
		c.Alerting.EvaluationInterval = o.EvaluationInterval
		c.Alerting.RulesPaths = []string{rulesFile}
		c.Alerting.AlertmanagerURLs = []string{am.url}
		c.WindowQuantiles.Windows = []time.Duration{o.Window}
	})
	if err != nil {
		return res, err
	}
	defer stopNode()

	opts := client.DefaultOptions()
	opts.Target = srv.Addrs().OTLPGRPC
	opts.Writer = fmt.Sprintf("bench-alert-%d-%d-%d", os.Getpid(), time.Now().UnixNano(), run)
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	c, err := client.New(opts, nil, logger)
	if err != nil {
		return res, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = c.Close(cctx)
	}()
	ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "bench", "span_name", "GET /item", "span_kind", "SPAN_KIND_SERVER")
	if err != nil {
		return res, err
	}

	hc := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer hc.CloseIdleConnections()
	pollCtx, stopPoll := context.WithCancel(ctx)
	var pollWG sync.WaitGroup
	defer func() { stopPoll(); pollWG.Wait() }()

	spans, acks, t0, err := stepLoad(ctx, o, run, c, ref, func() error {
		// Nothing may have fired on fast spans: the rules, the thresholds
		// and the warm-up are wrong otherwise.
		names, err := alertmanagerAlerts(ctx, hc, am.url)
		if err != nil {
			return err
		}
		if len(names) > 0 {
			return fmt.Errorf("alerts %v fired before the step, on fast spans", names)
		}
		pollWG.Add(1)
		go func() {
			defer pollWG.Done()
			pollAlertmanager(pollCtx, hc, am.url, o.PollInterval, seen, reg)
		}()
		return nil
	}, seen.complete)
	if err != nil {
		return res, err
	}
	stopPoll()
	pollWG.Wait()

	seen.mtx.Lock()
	res.Raw = timing(seen, alertRaw, t0)
	res.Window = timing(seen, alertWindow, t0)
	if len(seen.polls) > 0 {
		slices.Sort(seen.polls)
		res.PollP50 = seen.polls[len(seen.polls)/2]
	}
	seen.mtx.Unlock()
	if c, ok := rawCrossing(spans, t0.UnixNano(), o.Window, o.Threshold); ok {
		res.Raw.Crossing = time.Duration(c - t0.UnixNano())
	}
	if c, ok := windowCrossing(spans, t0.UnixNano(), o.Window, o.FlushInterval, o.Threshold); ok {
		res.Window.Crossing = time.Duration(c - t0.UnixNano())
	}
	if res.Raw.Fired {
		scheduled := t0.Add(res.Raw.StartsAt + res.Raw.Holdback)
		res.EvalPhase = time.Duration(scheduled.UnixMilli()%o.FlushInterval.Milliseconds()) * time.Millisecond
	}
	if res.FlushPhase, err = flushPhase(ctx, hc, srv.Addrs().Web, o.FlushInterval); err != nil {
		return res, err
	}
	slices.Sort(acks)
	res.AckP50, res.AckP99 = acks[len(acks)/2], acks[len(acks)*99/100]
	m := gather(reg)
	res.GroupLastDuration = m.sumGauge("prometheus_rule_group_last_duration_seconds")
	res.GroupP99Duration = m.maxSummaryQuantile("prometheus_rule_group_duration_seconds", 0.99)
	res.IterationsMissed = m.counter("prometheus_rule_group_iterations_missed_total")
	res.NotifyP50 = m.maxSummaryQuantile("prometheus_notifications_latency_seconds", 0.5)
	if !res.Raw.Fired {
		return res, fmt.Errorf("%s did not reach Alertmanager within %s of the step", alertRaw, o.Timeout)
	}
	return res, nil
}

// stepLoad sends o.Rate spans/s of one series through c, one batch per
// o.BatchInterval, each flushed and acknowledged before the next: fast
// spans for o.WarmUp, then (after onStep) slow ones until done or
// o.Timeout. It returns every span sent, the batches' round trips, and t0,
// the acknowledgement of the first batch of slow spans.
func stepLoad(ctx context.Context, o AlertOptions, run int, c *client.Client, ref client.SeriesRef, onStep func() error, done func() bool) (spans []sentSpan, acks []time.Duration, t0 time.Time, err error) {
	rng := rand.New(rand.NewPCG(o.Seed, uint64(run)))
	// Lognormal durations with the given P99: exp(mu + sigma·Z), where
	// z = 2.326 is the standard normal's 0.99 quantile.
	const z99 = 2.3263478740408408
	muFast := math.Log(o.FastP99.Seconds()) - z99*o.Sigma
	muSlow := math.Log(o.SlowP99.Seconds()) - z99*o.Sigma
	var (
		sent      int
		slow      bool
		start     = time.Now()
		prev      = start
		stepAt    = start.Add(o.WarmUp)
		nextBatch = start
	)
	for {
		if err := ctx.Err(); err != nil {
			return nil, nil, t0, err
		}
		nextBatch = nextBatch.Add(o.BatchInterval)
		if late := -time.Until(nextBatch); late > o.BatchInterval {
			nextBatch = nextBatch.Add(late) // the count below keeps the rate
		}
		time.Sleep(time.Until(nextBatch))
		now := time.Now()
		if !slow && !now.Before(stepAt) {
			if err := onStep(); err != nil {
				return nil, nil, t0, err
			}
			slow = true
		}
		mu := muFast
		if slow {
			mu = muSlow
		}
		// The spans due at Rate end evenly over the time since the last
		// batch and are reported as they end, as a tracer would.
		n := int(o.Rate*now.Sub(start).Seconds()) - sent
		first := len(spans)
		for i := range n {
			end := prev.Add(time.Duration(float64(now.Sub(prev)) * float64(i+1) / float64(n)))
			d := time.Duration(math.Exp(mu+o.Sigma*rng.NormFloat64()) * float64(time.Second))
			h := client.Hop{Series: ref, Start: end.Add(-d), Duration: d}
			for b := range h.TraceID {
				h.TraceID[b] = byte(rng.Uint32())
			}
			if err := c.Record(ctx, h); err != nil {
				return nil, nil, t0, err
			}
			spans = append(spans, sentSpan{start: h.Start.UnixNano(), dur: int64(d)})
		}
		sent += n
		prev = now
		if err := c.Flush(ctx); err != nil {
			return nil, nil, t0, err
		}
		acked := time.Now()
		acks = append(acks, acked.Sub(now))
		for i := first; i < len(spans); i++ {
			spans[i].acked = acked.UnixNano()
		}
		if slow && t0.IsZero() && n > 0 {
			t0 = acked
		}
		if !t0.IsZero() && (done() || acked.Sub(t0) > o.Timeout) {
			return spans, acks, t0, nil
		}
	}
}

// flushPhase reads where in the interval the node flushes: the aggregate
// samples carry the flush ticks' times.
func flushPhase(ctx context.Context, hc *http.Client, web string, interval time.Duration) (time.Duration, error) {
	q := url.Values{"query": {agg.MetricCalls + `{service="bench"}[10s]`}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+web+"/api/v1/query?"+q.Encode(), nil)
	if err != nil {
		return 0, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			Result []struct {
				Values [][2]any `json:"values"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return 0, fmt.Errorf("query %s: %w", q.Get("query"), err)
	}
	for _, r := range body.Data.Result {
		if n := len(r.Values); n > 0 {
			if ts, ok := r.Values[n-1][0].(float64); ok {
				ms := int64(math.Round(ts * 1e3))
				return time.Duration(ms%interval.Milliseconds()) * time.Millisecond, nil
			}
		}
	}
	return 0, fmt.Errorf("query %s: no flushed samples", q.Get("query"))
}

// alertRules is the rule file of the benchmark.
func alertRules(o AlertOptions) string {
	w := model.Duration(o.Window).String()
	thr := strconv.FormatFloat(o.Threshold.Seconds(), 'f', -1, 64)
	return fmt.Sprintf(`groups:
  - name: bench
    rules:
      - alert: %s
        expr: quantile_over_time(0.99, hopwatch_latency_raw_seconds{service="bench"}[%s]) > %s
      - alert: %s
        expr: hopwatch_window_latency_seconds{service="bench", quantile="0.99", window="%s"} > %s
`, alertRaw, w, thr, alertWindow, w, thr)
}

// startConfiguredNode is startNode with the configuration changed by
// configure and the node's log going to logger.
func startConfiguredNode(name string, logger *slog.Logger, configure func(*server.Config)) (srv *server.Server, reg *prometheus.Registry, stop func(), err error) {
	dir, err := os.MkdirTemp("", "hopwatch-bench-"+name+"-")
	if err != nil {
		return nil, nil, nil, err
	}
	cfg := server.DefaultConfig()
	cfg.WebListenAddress, cfg.OTLPGRPCListenAddress, cfg.OTLPHTTPListenAddress = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.Cluster.RaftAddress, cfg.Cluster.GRPCAddress = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Storage.Dir = dir
	configure(&cfg)
	reg = prometheus.NewRegistry()
	if srv, err = server.New(cfg, reg, logger.With("component", "node")); err == nil {
		err = srv.Start()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, nil, err
	}
	for !srv.Ready() {
		time.Sleep(10 * time.Millisecond)
	}
	stop = func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = srv.Shutdown(ctx)
		os.RemoveAll(dir)
	}
	return srv, reg, stop, nil
}

// sighting is the first arrival of an alert somewhere.
type sighting struct {
	at, startsAt time.Time
	// holdback is the ruler's watermark holdback when Alertmanager first
	// listed the alert.
	holdback float64
}

// sightings are the first arrivals, by alert name, at Alertmanager (its
// API, polled) and at the webhook Alertmanager calls.
type sightings struct {
	mtx      sync.Mutex
	am, hook map[string]sighting
	polls    []time.Duration // round trips of GET /api/v2/alerts
}

func (s *sightings) complete() bool {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	return len(s.am) == 2 && len(s.hook) == 2
}

// timing reads one alert's sightings; the caller holds s.mtx.
func timing(s *sightings, name string, t0 time.Time) AlertTiming {
	a, ok := s.am[name]
	if !ok {
		return AlertTiming{}
	}
	t := AlertTiming{
		Fired:        true,
		StartsAt:     a.startsAt.Sub(t0),
		Alertmanager: a.at.Sub(t0),
		Holdback:     time.Duration(a.holdback * float64(time.Second)),
	}
	if h, ok := s.hook[name]; ok {
		t.Webhook, t.Hooked = h.at.Sub(t0), true
	}
	return t
}

// amAlert is an alert as Alertmanager lists it and posts it to webhooks.
type amAlert struct {
	Labels   map[string]string `json:"labels"`
	StartsAt time.Time         `json:"startsAt"`
}

// pollAlertmanager lists Alertmanager's alerts every interval until ctx
// ends and notes when each alert is first listed. The time noted is the
// answer's arrival, so it is late by at most one interval and one round
// trip.
func pollAlertmanager(ctx context.Context, hc *http.Client, url string, every time.Duration, s *sightings, reg *prometheus.Registry) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sentAt := time.Now()
		alerts, err := getAlerts(ctx, hc, url)
		at := time.Now()
		s.mtx.Lock()
		s.polls = append(s.polls, at.Sub(sentAt))
		s.mtx.Unlock()
		if err != nil {
			continue // ctx ended, or a passing failure the next poll retries
		}
		for _, a := range alerts {
			name := a.Labels["alertname"]
			s.mtx.Lock()
			_, known := s.am[name]
			s.mtx.Unlock()
			if known || (name != alertRaw && name != alertWindow) {
				continue
			}
			// Read after the alert arrived, the gauge is the firing
			// evaluation's: the next one is an interval away.
			hold := gather(reg).sumGauge("hopwatch_ruler_watermark_holdback_seconds")
			s.mtx.Lock()
			s.am[name] = sighting{at: at, startsAt: a.StartsAt, holdback: hold}
			s.mtx.Unlock()
		}
	}
}

func getAlerts(ctx context.Context, hc *http.Client, url string) ([]amAlert, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/v2/alerts", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s/api/v2/alerts: %s", url, resp.Status)
	}
	var out []amAlert
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// alertmanagerAlerts returns the names of the alerts Alertmanager holds.
func alertmanagerAlerts(ctx context.Context, hc *http.Client, url string) ([]string, error) {
	alerts, err := getAlerts(ctx, hc, url)
	var names []string
	for _, a := range alerts {
		names = append(names, a.Labels["alertname"])
	}
	return names, err
}

// hookServer receives Alertmanager's webhook.
type hookServer struct {
	url string
	srv *http.Server
	wg  sync.WaitGroup
}

func startHookServer(s *sightings) (*hookServer, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &hookServer{url: "http://" + ln.Addr().String() + "/"}
	h.srv = &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		var msg struct {
			Alerts []struct {
				amAlert
				Status string `json:"status"`
			} `json:"alerts"`
		}
		if err := json.NewDecoder(r.Body).Decode(&msg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.mtx.Lock()
		defer s.mtx.Unlock()
		for _, a := range msg.Alerts {
			name := a.Labels["alertname"]
			if _, known := s.hook[name]; !known && a.Status == "firing" {
				s.hook[name] = sighting{at: at, startsAt: a.StartsAt}
			}
		}
	})}
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		_ = h.srv.Serve(ln) // ends with ErrServerClosed at stop
	}()
	return h, nil
}

func (h *hookServer) stop() {
	_ = h.srv.Close()
	h.wg.Wait()
}

// alertmanager is an Alertmanager process on loopback.
type alertmanager struct {
	url    string
	cmd    *exec.Cmd
	out    bytes.Buffer
	exited chan error
}

// startAlertmanager runs Alertmanager on a free loopback port with its
// data in dir, one route to the webhook that dispatches each alert name
// at once (group_wait 0s) and without clustering, and waits until it is
// ready.
func startAlertmanager(ctx context.Context, bin, dir, webhook string) (*alertmanager, error) {
	cfg := filepath.Join(dir, "alertmanager.yml")
	if err := os.WriteFile(cfg, []byte(`route:
  receiver: bench
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: bench
    webhook_configs:
      - url: `+webhook+`
        send_resolved: false
`), 0o644); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	amDir := filepath.Join(dir, "alertmanager")
	a := &alertmanager{url: "http://" + addr, exited: make(chan error, 1)}
	a.cmd = exec.Command(bin, "--config.file="+cfg, "--storage.path="+amDir, "--web.listen-address="+addr,
		"--cluster.listen-address=", "--log.level=warn")
	a.cmd.Stdout, a.cmd.Stderr = &a.out, &a.out
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start Alertmanager (install Debian's prometheus-alertmanager or give its path): %w", err)
	}
	go func() { a.exited <- a.cmd.Wait() }()
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-a.exited:
			a.exited <- err
			return nil, fmt.Errorf("alertmanager exited: %v\n%s", err, a.out.String())
		case <-ctx.Done():
			a.stop()
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if resp, err := hc.Get(a.url + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return a, nil
			}
		}
		if time.Now().After(deadline) {
			a.stop()
			return nil, fmt.Errorf("alertmanager not ready after 30s:\n%s", a.out.String())
		}
	}
}

func (a *alertmanager) stop() {
	_ = a.cmd.Process.Kill()
	<-a.exited
}

// rawCrossing returns the first acknowledgement time, from t0 (Unix ns)
// on, at which quantile_over_time(0.99, ...[window]) over the spans
// acknowledged so far exceeds thr: the earliest instant an evaluation of
// the raw rule could fire. Samples are at their start, in ms, and a range
// holds (T−window, T], as in the node.
func rawCrossing(spans []sentSpan, t0 int64, window, thr time.Duration) (int64, bool) {
	var ds []float64
	for i := range spans {
		T := spans[i].acked
		if T < t0 || (i+1 < len(spans) && spans[i+1].acked == T) {
			continue // not an acknowledgement from t0 on, or not its last span
		}
		ds = windowDurations(ds[:0], spans[:i+1], T/1e6, window)
		if p99(ds) > thr.Seconds() {
			return T, true
		}
	}
	return 0, false
}

// windowCrossing returns the first step (a multiple of interval, Unix ns)
// from t0's on whose window P99 over every sent span exceeds thr: the
// first value of the recorded window series that could fire the window
// rule. The node records a step at the first flush after it.
func windowCrossing(spans []sentSpan, t0 int64, window, interval, thr time.Duration) (int64, bool) {
	if len(spans) == 0 {
		return 0, false
	}
	step := interval.Milliseconds()
	var ds []float64
	last := spans[len(spans)-1].start / 1e6
	for T := t0 / 1e6 / step * step; T <= last; T += step {
		ds = windowDurations(ds[:0], spans, T, window)
		if p99(ds) > thr.Seconds() {
			return T * 1e6, true
		}
	}
	return 0, false
}

// windowDurations appends the durations, in seconds, of the spans whose
// start in ms is in (T−window, T]. spans are in acknowledgement order, and
// a span is acknowledged after it starts, so the scan begins at the first
// one acknowledged after the window opens.
func windowDurations(dst []float64, spans []sentSpan, T int64, window time.Duration) []float64 {
	from := T - window.Milliseconds()
	lo, _ := slices.BinarySearchFunc(spans, from*1e6+1, func(s sentSpan, t int64) int { return cmp.Compare(s.acked, t) })
	for _, s := range spans[lo:] {
		if ms := s.start / 1e6; ms > from && ms <= T {
			dst = append(dst, time.Duration(s.dur).Seconds())
		}
	}
	return dst
}

// p99 is quantile_over_time's 0.99 quantile of vs (sorted in place):
// linear interpolation between the closest ranks.
func p99(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	slices.Sort(vs)
	rank := 0.99 * float64(len(vs)-1)
	lo := int(math.Floor(rank))
	hi := min(lo+1, len(vs)-1)
	w := rank - float64(lo)
	return vs[lo]*(1-w) + vs[hi]*w
}

// sumGauge sums a gauge over its label sets.
func (f families) sumGauge(name string) float64 {
	var sum float64
	for _, m := range f[name].GetMetric() {
		sum += m.GetGauge().GetValue()
	}
	return sum
}

// maxSummaryQuantile is the largest value of a summary's quantile q over its
// label sets.
func (f families) maxSummaryQuantile(name string, q float64) float64 {
	v := math.NaN()
	for _, m := range f[name].GetMetric() {
		for _, sq := range m.GetSummary().GetQuantile() {
			if sq.GetQuantile() == q && (math.IsNaN(v) || sq.GetValue() > v) {
				v = sq.GetValue()
			}
		}
	}
	return v
}

func writeAlertReport(w io.Writer, o AlertOptions, res AlertResult) {
	fmt.Fprintf(w, "\nalert detection delay: %g spans/s (batches every %s, each acknowledged before the next), P99 %s → %s (lognormal σ %g), rules P99 > %s over %s, flush %s, evaluation %s, %d runs\n",
		o.Rate, o.BatchInterval, o.FastP99, o.SlowP99, o.Sigma, o.Threshold, model.Duration(o.Window), o.FlushInterval, o.EvaluationInterval, len(res.Runs))
	fmt.Fprintf(w, "node as: hopwatch --flush.interval=%s --ruler.evaluation-interval=%s --window-quantiles.windows=%s --rules.path=bench.yml --ruler.alertmanager-url=<alertmanager>\n\n",
		o.FlushInterval, o.EvaluationInterval, model.Duration(o.Window))
	fmt.Fprintln(w, "Milliseconds from t0, the acknowledgement of the first batch of slow spans:")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| run | rule | data crosses | firing evaluation (startsAt) | held by watermark | at Alertmanager | webhook |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|")
	for i, r := range res.Runs {
		for _, rt := range []struct {
			name string
			t    AlertTiming
		}{{"raw", r.Raw}, {"window", r.Window}} {
			t := rt.t
			fmt.Fprintf(w, "| %d | %s | %s | %s | %s | %s | %s |\n", i+1, rt.name, ms(t.Crossing), fmtTiming(t, t.StartsAt),
				fmtTiming(t, t.Holdback), fmtTiming(t, t.Alertmanager), fmtHook(t, t.Webhook))
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "| rule | at Alertmanager median | min | max | webhook median | min | max | runs ≤ %s at Alertmanager |\n", o.Goal)
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, rule := range []string{"raw", "window"} {
		var am, hook []float64
		within := 0
		for _, r := range res.Runs {
			t := r.Raw
			if rule == "window" {
				t = r.Window
			}
			if !t.Fired {
				continue
			}
			am = append(am, t.Alertmanager.Seconds())
			if t.Hooked {
				hook = append(hook, t.Webhook.Seconds())
			}
			if t.Alertmanager <= o.Goal {
				within++
			}
		}
		a, h := spread(am), spread(hook)
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %d/%d |\n", rule, secMs(a[0]), secMs(a[1]), secMs(a[2]),
			secMs(h[0]), secMs(h[1]), secMs(h[2]), within, len(res.Runs))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Where the time goes, medians over the runs (ms):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| rule | t0 → data crosses | → scheduled time of the firing evaluation | → at Alertmanager | at Alertmanager → webhook | watermark holdback of the firing evaluation |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, rule := range []string{"raw", "window"} {
		var parts [5][]float64
		for _, r := range res.Runs {
			t := r.Raw
			if rule == "window" {
				t = r.Window
			}
			if !t.Fired {
				continue
			}
			parts[0] = append(parts[0], t.Crossing.Seconds())
			// The group runs at its scheduled time and evaluates at the
			// watermark when that is earlier: startsAt + holdback.
			scheduled := t.StartsAt + t.Holdback
			parts[1] = append(parts[1], (scheduled - t.Crossing).Seconds())
			parts[2] = append(parts[2], (t.Alertmanager - scheduled).Seconds())
			parts[4] = append(parts[4], t.Holdback.Seconds())
			if t.Hooked {
				parts[3] = append(parts[3], (t.Webhook - t.Alertmanager).Seconds())
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", rule, secMs(spread(parts[0])[0]), secMs(spread(parts[1])[0]),
			secMs(spread(parts[2])[0]), secMs(spread(parts[3])[0]), secMs(spread(parts[4])[0]))
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "| run | flush phase | evaluation phase | batch ack p50 | batch ack p99 | rule group last duration | rule group duration p99 | iterations missed | notifier POST p50 | Alertmanager poll round trip p50 |\n")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for i, r := range res.Runs {
		fmt.Fprintf(w, "| %d | %s ms | %s ms | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %.0f | %.2f ms | %.2f ms |\n", i+1, ms(r.FlushPhase), ms(r.EvalPhase),
			r.AckP50.Seconds()*1e3, r.AckP99.Seconds()*1e3,
			r.GroupLastDuration*1e3, r.GroupP99Duration*1e3, r.IterationsMissed, r.NotifyP50*1e3, r.PollP50.Seconds()*1e3)
	}
}

// spread returns the median, minimum and maximum of xs (NaN when empty).
func spread(xs []float64) [3]float64 {
	if len(xs) == 0 {
		return [3]float64{math.NaN(), math.NaN(), math.NaN()}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return [3]float64{med, s[0], s[len(s)-1]}
}

func ms(d time.Duration) string { return strconv.FormatInt(d.Milliseconds(), 10) }

func secMs(s float64) string {
	if math.IsNaN(s) {
		return "-"
	}
	return strconv.FormatFloat(s*1e3, 'f', 0, 64)
}

// fmtHook formats a webhook arrival in ms, or "-" for none.
func fmtHook(t AlertTiming, d time.Duration) string {
	if !t.Hooked {
		return "-"
	}
	return ms(d)
}

// fmtTiming formats d in ms, or "-" for an alert that did not fire.
func fmtTiming(t AlertTiming, d time.Duration) string {
	if !t.Fired {
		return "-"
	}
	return ms(d)
}
