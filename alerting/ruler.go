// Package alerting evaluates Prometheus recording and alerting rules per
// tenant with the Prometheus module's rules manager, holds each tenant's
// evaluation back to its watermark, and sends alerts to Alertmanager (the
// Prometheus notifier) and to webhooks.
package alerting

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/discovery"
	"github.com/prometheus/prometheus/discovery/targetgroup"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/notifier"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
)

// Options configures the ruler.
type Options struct {
	// RulesPaths are rule files, or directories of them (*.yml, *.yaml).
	// Files directly in a directory, and files given by name, belong to
	// DefaultTenant; a subdirectory's files to the tenant it is named after.
	RulesPaths []string
	// Dir keeps the rule groups set through the API.
	Dir string
	// EvaluationInterval is the default interval of a group.
	EvaluationInterval time.Duration
	// AlertmanagerURLs receive alerts (Alertmanager API v2).
	AlertmanagerURLs []string
	// WebhookURLs receive the same alerts as JSON.
	WebhookURLs []string
	// ExternalURL is the generator URL of alerts.
	ExternalURL string
	// DefaultTenant owns the rules of files outside tenant directories.
	DefaultTenant string
	// TenantLabel adds tenant="<id>" to every alert (with multitenancy).
	TenantLabel bool
	// QueueCapacity bounds the alerts waiting for Alertmanager.
	QueueCapacity int
	// Webhook configures webhook delivery.
	Webhook WebhookOptions
	// Anomaly configures the generated baseline anomaly alerts.
	Anomaly AnomalyOptions
	// Replica, when set, keeps the rule groups set through the API in the
	// cluster's replicated metadata instead of Dir alone (see Replica).
	Replica Replica
	// CheckExpr tells whether a rule's expression can be evaluated (nil:
	// parsing is the only check). The API refuses a group with a rule
	// that fails it; loading skips such a rule.
	CheckExpr func(expr string) error
}

// DefaultOptions mirrors Prometheus's defaults, with a 15s interval.
func DefaultOptions() Options {
	return Options{
		EvaluationInterval: 15 * time.Second,
		DefaultTenant:      "anonymous",
		QueueCapacity:      10000,
		Webhook:            DefaultWebhookOptions(),
		Anomaly:            DefaultAnomalyOptions(),
	}
}

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	if o.EvaluationInterval < time.Second {
		errs = append(errs, fmt.Errorf("invalid EvaluationInterval %s: must be at least 1s", o.EvaluationInterval))
	}
	if o.Dir == "" {
		errs = append(errs, errors.New("invalid Dir: must be set"))
	}
	for _, u := range append(slices.Clone(o.AlertmanagerURLs), o.WebhookURLs...) {
		if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			errs = append(errs, fmt.Errorf("invalid URL %q: want http(s)://host:port[/path]", u))
		}
	}
	if o.QueueCapacity <= 0 {
		errs = append(errs, fmt.Errorf("invalid QueueCapacity %d: must be positive", o.QueueCapacity))
	}
	if err := o.Webhook.Validate(); err != nil {
		errs = append(errs, err)
	}
	if err := o.Anomaly.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Tenant gives what the rules of one tenant read and write.
type Tenant interface {
	// QueryFunc evaluates the tenant's instant queries.
	QueryFunc(tenant string) rules.QueryFunc
	// Appendable is where recording rules write (nil: nowhere yet).
	Appendable(tenant string) storage.AppendableV2
	// Queryable restores the state of alerts with a for clause.
	Queryable(tenant string) storage.Queryable
	// Watermark is the tenant's watermark at now (Unix ns).
	Watermark(tenant string, now int64) (int64, bool)
	// Tenants lists the tenants with data (for generated rules).
	Tenants() []string
	// Prepare brings the series derived from the tenant's raw data (the
	// recorded window quantiles) up to ts, just before its rules evaluate
	// at ts, so that a rule on them waits for no flush.
	Prepare(ctx context.Context, tenant string, ts time.Time)
}

// Ruler runs a rules manager per tenant.
type Ruler struct {
	opts    Options
	deps    Tenant
	logger  *slog.Logger
	parser  parser.Parser
	store   *store
	metrics *rules.Metrics
	notify  *notifier.Manager
	webhook *webhook
	own     *rulerMetrics

	mtx      sync.Mutex
	managers map[string]*rules.Manager
	stopped  bool
	wg       sync.WaitGroup
	tsets    chan map[string][]*targetgroup.Group
	// stopReplica ends followReplica (nil without a replica).
	stopReplica chan struct{}
}

type rulerMetrics struct {
	heldBack *prometheus.GaugeVec
	syncErrs prometheus.Counter
	skipped  prometheus.Counter
	panics   prometheus.Counter
}

// New builds the ruler; Run starts it.
func New(opts Options, deps Tenant, reg prometheus.Registerer, logger *slog.Logger) (*Ruler, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/alerting: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	p := parser.NewParser(parser.Options{})
	r := &Ruler{
		opts:     opts,
		deps:     deps,
		logger:   logger,
		parser:   p,
		store:    &store{dir: opts.Dir, parser: p, logger: logger, replica: opts.Replica},
		metrics:  rules.NewGroupMetrics(reg),
		managers: map[string]*rules.Manager{},
		tsets:    make(chan map[string][]*targetgroup.Group, 1),
		own: &rulerMetrics{
			heldBack: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Name: "hopwatch_ruler_watermark_holdback_seconds",
				Help: "How far behind the wall clock the tenant's last rule evaluation was held by its watermark.",
			}, []string{"tenant"}),
			syncErrs: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "hopwatch_ruler_sync_failures_total",
				Help: "Rule reloads that failed (the previous rules stay in force; see the log).",
			}),
			skipped: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "hopwatch_ruler_skipped_total",
				Help: "Rule files, groups and rules skipped at a load because they cannot be parsed or evaluated (the rest load; see the log).",
			}),
			panics: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "hopwatch_ruler_evaluation_panics_total",
				Help: "Group evaluations that panicked (the group keeps running; see the log).",
			}),
		},
	}
	reg.MustRegister(r.own.heldBack, r.own.syncErrs, r.own.skipped, r.own.panics)
	r.store.check = r.checkExpr
	r.notify = notifier.NewManager(&notifier.Options{
		QueueCapacity:   opts.QueueCapacity,
		DrainOnShutdown: true,
		Registerer:      reg,
	}, model.UTF8Validation, logger.With("component", "notifier"))
	if err := r.applyAlertmanagers(); err != nil {
		return nil, err
	}
	wh, err := newWebhook(opts.WebhookURLs, opts.Webhook, reg, logger.With("component", "webhook"))
	if err != nil {
		return nil, err
	}
	r.webhook = wh
	if opts.Replica != nil {
		r.stopReplica = make(chan struct{})
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.followReplica(r.stopReplica)
		}()
	}
	return r, nil
}

// applyAlertmanagers configures the notifier with one static target per URL.
func (r *Ruler) applyAlertmanagers() error {
	cfg := &config.Config{}
	groups := map[string][]*targetgroup.Group{}
	for i, raw := range r.opts.AlertmanagerURLs {
		u, _ := url.Parse(raw)
		amc := config.DefaultAlertmanagerConfig
		amc.APIVersion = config.AlertmanagerAPIVersionV2
		amc.Scheme = u.Scheme
		amc.PathPrefix = strings.TrimSuffix(u.Path, "/")
		amc.Timeout = model.Duration(10 * time.Second)
		tg := &targetgroup.Group{Targets: []model.LabelSet{{model.AddressLabel: model.LabelValue(u.Host)}}, Source: raw}
		amc.ServiceDiscoveryConfigs = discovery.Configs{discovery.StaticConfig{tg}}
		cfg.AlertingConfig.AlertmanagerConfigs = append(cfg.AlertingConfig.AlertmanagerConfigs, &amc)
		groups[fmt.Sprintf("config-%d", i)] = []*targetgroup.Group{tg}
	}
	if err := r.notify.ApplyConfig(cfg); err != nil {
		return fmt.Errorf("hopwatch/alerting: alertmanagers: %w", err)
	}
	r.tsets <- groups
	return nil
}

// Run starts the notifier and loads the rules; Stop ends both.
func (r *Ruler) Run() error {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.notify.Run(r.tsets)
	}()
	r.webhook.start()
	return r.Sync()
}

// Stop stops every tenant's evaluation, then drains notifications.
func (r *Ruler) Stop() {
	r.mtx.Lock()
	if r.stopReplica != nil && !r.stopped {
		close(r.stopReplica)
	}
	r.stopped = true
	ms := r.managers
	r.managers = map[string]*rules.Manager{}
	r.mtx.Unlock()
	for _, m := range ms {
		m.Stop()
	}
	r.notify.Stop()
	r.webhook.stop()
	r.wg.Wait()
}

// ruleFiles returns the rule files of every tenant: from the paths and
// from the API store.
func (r *Ruler) ruleFiles() (map[string][]string, error) {
	out, err := r.store.files()
	if err != nil {
		return nil, err
	}
	isRules := func(name string) bool {
		return strings.HasSuffix(name, ".yml") || strings.HasSuffix(name, ".yaml")
	}
	for _, p := range r.opts.RulesPaths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("rules path: %w", err)
		}
		if !fi.IsDir() {
			out[r.opts.DefaultTenant] = append(out[r.opts.DefaultTenant], p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, err
		}
		for _, e := range entries {
			full := filepath.Join(p, e.Name())
			switch {
			case e.IsDir():
				sub, err := os.ReadDir(full)
				if err != nil {
					return nil, err
				}
				for _, f := range sub {
					if !f.IsDir() && isRules(f.Name()) {
						out[e.Name()] = append(out[e.Name()], filepath.Join(full, f.Name()))
					}
				}
			case isRules(e.Name()):
				out[r.opts.DefaultTenant] = append(out[r.opts.DefaultTenant], full)
			}
		}
	}
	return out, nil
}

// Sync (re)loads every tenant's rules: a tenant that gained rules gets a
// manager, one that lost all of them loses it. A tenant whose files fail
// to load keeps its previous rules. Call it when tenants appear, so that
// they get the generated anomaly group.
func (r *Ruler) Sync() error {
	if err := r.generateAnomalyRules(); err != nil {
		r.own.syncErrs.Inc()
		return err
	}
	files, err := r.ruleFiles()
	if err != nil {
		r.own.syncErrs.Inc()
		return err
	}
	r.mtx.Lock()
	defer r.mtx.Unlock()
	if r.stopped {
		return nil
	}
	var errs []error
	for tenant, fs := range files {
		m := r.managers[tenant]
		if m == nil {
			m = r.newManager(tenant)
			r.managers[tenant] = m
			go m.Run()
		}
		ext := labels.EmptyLabels()
		if r.opts.TenantLabel {
			ext = labels.FromStrings("tenant", tenant)
		}
		if err := m.Update(r.opts.EvaluationInterval, fs, ext, r.opts.ExternalURL, r.evalFunc(tenant)); err != nil {
			r.own.syncErrs.Inc()
			errs = append(errs, fmt.Errorf("tenant %s: %w", tenant, err))
		}
	}
	for tenant, m := range r.managers {
		if _, ok := files[tenant]; !ok {
			m.Stop()
			delete(r.managers, tenant)
			r.own.heldBack.DeleteLabelValues(tenant)
		}
	}
	return errors.Join(errs...)
}

func (r *Ruler) newManager(tenant string) *rules.Manager {
	logger := r.logger.With("tenant", tenant)
	return rules.NewManager(&rules.ManagerOptions{
		NameValidationScheme: model.UTF8Validation,
		QueryFunc:            r.deps.QueryFunc(tenant),
		NotifyFunc:           rules.SendAlerts(sender{r, tenant}, r.opts.ExternalURL),
		Context:              context.Background(),
		AppendableV2:         lazyAppendable{r.deps, tenant},
		Queryable:            lazyQueryable{r.deps, tenant},
		Logger:               logger,
		Metrics:              r.metrics,
		OutageTolerance:      time.Hour,
		ForGracePeriod:       10 * time.Minute,
		ResendDelay:          time.Minute,
		Parser:               r.parser,
		GroupLoader:          checkedLoader{r},
	})
}

// evalFunc evaluates a group at min(its scheduled time, the tenant's
// watermark): windows the watermark has not passed are incomplete, so a
// lagging writer delays alerts instead of firing or missing them. A
// writer excluded or timed out no longer holds the watermark.
func (r *Ruler) evalFunc(tenant string) rules.GroupEvalIterationFunc {
	return func(ctx context.Context, g *rules.Group, ts time.Time) {
		held := time.Duration(0)
		if mark, ok := r.deps.Watermark(tenant, ts.UnixNano()); ok && mark < ts.UnixNano() {
			held = ts.Sub(time.Unix(0, mark))
			ts = time.Unix(0, mark)
		}
		r.own.heldBack.WithLabelValues(tenant).Set(held.Seconds())
		defer func() {
			if p := recover(); p != nil {
				r.own.panics.Inc()
				r.logger.Error("rule group evaluation panicked", "tenant", tenant, "group", g.Name(), "file", g.File(), "panic", p, "stack", string(debug.Stack()))
			}
		}()
		r.deps.Prepare(ctx, tenant, ts)
		rules.DefaultEvalIterationFunc(ctx, g, ts)
	}
}

// Manager returns a tenant's rules manager (nil: the tenant has no rules).
func (r *Ruler) Manager(tenant string) *rules.Manager {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	return r.managers[tenant]
}

// Alertmanagers are the notifier's active Alertmanagers.
func (r *Ruler) Alertmanagers() []*url.URL { return r.notify.Alertmanagers() }

// DroppedAlertmanagers are the notifier's dropped Alertmanagers.
func (r *Ruler) DroppedAlertmanagers() []*url.URL { return r.notify.DroppedAlertmanagers() }

// sender hands a tenant's alerts to the notifier and the webhooks.
type sender struct {
	r      *Ruler
	tenant string
}

func (s sender) Send(alerts ...*notifier.Alert) {
	if s.r.opts.TenantLabel {
		for _, a := range alerts {
			b := labels.NewBuilder(a.Labels)
			b.Set("tenant", s.tenant)
			a.Labels = b.Labels()
		}
	}
	if len(s.r.opts.AlertmanagerURLs) > 0 {
		s.r.notify.Send(alerts...)
	}
	s.r.webhook.send(alerts)
}

// lazyAppendable resolves the tenant's storage at each append, since a
// tenant's aggregate tier opens with its first span.
type lazyAppendable struct {
	deps   Tenant
	tenant string
}

func (l lazyAppendable) AppenderV2(ctx context.Context) storage.AppenderV2 {
	if a := l.deps.Appendable(l.tenant); a != nil {
		return a.AppenderV2(ctx)
	}
	return nopAppender{}
}

type lazyQueryable struct {
	deps   Tenant
	tenant string
}

func (l lazyQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	if q := l.deps.Queryable(l.tenant); q != nil {
		return q.Querier(mint, maxt)
	}
	return storage.NoopQuerier(), nil
}

// generateAnomalyRules keeps the generated anomaly group of every tenant
// with data in the rule store (namespace hopwatch-anomaly), so that it is
// listed and evaluated like any other group.
func (r *Ruler) generateAnomalyRules() error {
	if r.opts.Anomaly.Selector == "" {
		return nil
	}
	g, err := anomalyGroup(r.opts.Anomaly, r.opts.EvaluationInterval)
	if err != nil {
		return err
	}
	for _, tenant := range r.deps.Tenants() {
		if cur, err := r.store.get(tenant, AnomalyNamespace, g.Name); err == nil && equalGroups(cur, g) {
			continue
		}
		if err := r.store.set(tenant, AnomalyNamespace, g); err != nil {
			return fmt.Errorf("tenant %s: anomaly rules: %w", tenant, err)
		}
	}
	return nil
}
