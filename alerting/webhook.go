package alerting

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/notifier"
	"github.com/prometheus/prometheus/storage"
)

// WebhookOptions configures webhook delivery.
type WebhookOptions struct {
	// Timeout bounds one POST.
	Timeout time.Duration
	// MaxAttempts bounds the tries of one batch; after the last it is
	// dead-lettered (counted and logged).
	MaxAttempts int
	// MinBackoff and MaxBackoff bound the exponential backoff (with full
	// jitter) between tries.
	MinBackoff, MaxBackoff time.Duration
	// QueueCapacity bounds the batches waiting per webhook; beyond it the
	// oldest is dead-lettered.
	QueueCapacity int
}

// DefaultWebhookOptions tries for about a minute.
func DefaultWebhookOptions() WebhookOptions {
	return WebhookOptions{Timeout: 10 * time.Second, MaxAttempts: 8, MinBackoff: 100 * time.Millisecond, MaxBackoff: 10 * time.Second, QueueCapacity: 1000}
}

// Validate reports every problem with the options.
func (o WebhookOptions) Validate() error {
	var errs []error
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid Webhook.Timeout %s: must be positive", o.Timeout))
	}
	if o.MaxAttempts < 1 {
		errs = append(errs, fmt.Errorf("invalid Webhook.MaxAttempts %d: must be at least 1", o.MaxAttempts))
	}
	if o.MinBackoff <= 0 || o.MaxBackoff < o.MinBackoff {
		errs = append(errs, fmt.Errorf("invalid Webhook backoff %s..%s: want 0 < min ≤ max", o.MinBackoff, o.MaxBackoff))
	}
	if o.QueueCapacity < 1 {
		errs = append(errs, fmt.Errorf("invalid Webhook.QueueCapacity %d: must be at least 1", o.QueueCapacity))
	}
	return errors.Join(errs...)
}

// webhook POSTs alerts to each URL with the payload Alertmanager's API v2
// takes (a JSON array of alerts), retrying with exponential backoff.
type webhook struct {
	opts    WebhookOptions
	targets []*webhookTarget
	logger  *slog.Logger
	client  *http.Client

	sent, failed, dead *prometheus.CounterVec
	wg                 sync.WaitGroup
	ctx                context.Context
	cancel             context.CancelFunc
}

type webhookTarget struct {
	url   string
	mtx   sync.Mutex
	queue [][]byte
	wake  chan struct{}
}

// postableAlert is Alertmanager's API v2 alert.
type postableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt,omitzero"`
	EndsAt       time.Time         `json:"endsAt,omitzero"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

func newWebhook(urls []string, opts WebhookOptions, reg prometheus.Registerer, logger *slog.Logger) (*webhook, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &webhook{
		opts:   opts,
		logger: logger,
		client: &http.Client{Timeout: opts.Timeout},
		sent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_webhook_notifications_sent_total",
			Help: "Alert batches a webhook accepted (2xx).",
		}, []string{"url"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_webhook_notifications_failed_total",
			Help: "Webhook tries that failed (error or non-2xx); the batch is retried.",
		}, []string{"url"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_webhook_notifications_dead_letter_total",
			Help: "Alert batches given up on after the last retry or dropped from a full queue.",
		}, []string{"url"}),
	}
	reg.MustRegister(w.sent, w.failed, w.dead)
	for _, u := range urls {
		w.targets = append(w.targets, &webhookTarget{url: u, wake: make(chan struct{}, 1)})
		w.sent.WithLabelValues(u)
		w.failed.WithLabelValues(u)
		w.dead.WithLabelValues(u)
	}
	return w, nil
}

func (w *webhook) start() {
	w.ctx, w.cancel = context.WithCancel(context.Background())
	for _, t := range w.targets {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			w.loop(t)
		}()
	}
}

func (w *webhook) stop() {
	if w.cancel != nil {
		w.cancel()
	}
	w.wg.Wait()
}

// send queues the alerts for every webhook.
func (w *webhook) send(alerts []*notifier.Alert) {
	if len(w.targets) == 0 || len(alerts) == 0 {
		return
	}
	out := make([]postableAlert, len(alerts))
	for i, a := range alerts {
		out[i] = postableAlert{Labels: a.Labels.Map(), Annotations: a.Annotations.Map(), StartsAt: a.StartsAt, EndsAt: a.EndsAt, GeneratorURL: a.GeneratorURL}
	}
	body, err := json.Marshal(out)
	if err != nil {
		w.logger.Error("encoding alerts failed", "err", err)
		return
	}
	for _, t := range w.targets {
		t.mtx.Lock()
		if len(t.queue) >= w.opts.QueueCapacity {
			t.queue = t.queue[1:]
			w.dead.WithLabelValues(t.url).Inc()
			w.logger.Warn("webhook queue full, oldest batch dropped", "url", t.url)
		}
		t.queue = append(t.queue, body)
		t.mtx.Unlock()
		select {
		case t.wake <- struct{}{}:
		default:
		}
	}
}

func (w *webhook) loop(t *webhookTarget) {
	for {
		t.mtx.Lock()
		var body []byte
		if len(t.queue) > 0 {
			body = t.queue[0]
			t.queue = t.queue[1:]
		}
		t.mtx.Unlock()
		if body == nil {
			select {
			case <-w.ctx.Done():
				return
			case <-t.wake:
				continue
			}
		}
		if !w.deliver(t.url, body) {
			return
		}
	}
}

// deliver tries one batch until it is accepted, dead-lettered, or the
// webhook stops; it returns false when stopping.
func (w *webhook) deliver(url string, body []byte) bool {
	backoff := w.opts.MinBackoff
	for attempt := 1; ; attempt++ {
		err := w.post(url, body)
		if err == nil {
			w.sent.WithLabelValues(url).Inc()
			return true
		}
		w.failed.WithLabelValues(url).Inc()
		if attempt >= w.opts.MaxAttempts {
			w.dead.WithLabelValues(url).Inc()
			w.logger.Error("webhook gave up on an alert batch", "url", url, "attempts", attempt, "err", err)
			return true
		}
		// Full jitter: a random wait up to the current backoff.
		wait := time.Duration(rand.Int64N(int64(backoff)) + 1)
		backoff = min(2*backoff, w.opts.MaxBackoff)
		t := time.NewTimer(wait)
		select {
		case <-w.ctx.Done():
			t.Stop()
			w.dead.WithLabelValues(url).Inc()
			return false
		case <-t.C:
		}
	}
}

func (w *webhook) post(url string, body []byte) error {
	req, err := http.NewRequestWithContext(w.ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}

// nopAppender takes recording rule results while a tenant has no storage.
type nopAppender struct{}

func (nopAppender) Append(storage.SeriesRef, labels.Labels, int64, int64, float64, *histogram.Histogram, *histogram.FloatHistogram, storage.AppendV2Options) (storage.SeriesRef, error) {
	return 0, nil
}
func (nopAppender) Commit() error   { return nil }
func (nopAppender) Rollback() error { return nil }
