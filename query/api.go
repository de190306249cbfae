package query

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/grafana/regexp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/route"
	"github.com/prometheus/prometheus/config"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/scrape"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/util/features"
	v1 "github.com/prometheus/prometheus/web/api/v1"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// Options configures the HTTP API.
type Options struct {
	// MultitenancyEnabled scopes each request to its X-Scope-OrgID.
	MultitenancyEnabled bool
	// LookbackDelta is how far back an instant vector selector looks.
	LookbackDelta time.Duration
	// Timeout bounds one query.
	Timeout time.Duration
	// MaxSamples bounds the samples one query may hold in memory.
	MaxSamples int
	// MaxConcurrent bounds the queries evaluated at once; more wait.
	MaxConcurrent int
	// MaxSeries bounds the series one query may select (0: no bound).
	MaxSeries int
	// MaxLength bounds end − start of a range query (0: no bound).
	MaxLength time.Duration
	// MaxExpressionBytes bounds the PromQL text of one request: its query
	// plus every match[] (0: no bound). Parsing costs grow faster than the
	// text, and parsing runs before a query's other limits can apply.
	MaxExpressionBytes int
	// MaxSubquerySteps bounds the evaluation steps of any one subquery of
	// a query, and of a range query itself (0: no bound).
	MaxSubquerySteps int
	// NoStepSubqueryInterval is the step of a subquery written without
	// one (x[5m:]), Prometheus's global evaluation interval.
	NoStepSubqueryInterval time.Duration
	// ExemplarLabel names the trace id label of raw-tier exemplars (as
	// the aggregate tier's).
	ExemplarLabel string
	// DisableExactPath leaves quantile_over_time over the raw tier to
	// Prometheus's engine (which sees every weight as 1).
	DisableExactPath bool
	// Version, Revision, Branch, BuildDate describe the build for /status/buildinfo.
	Version, Revision, Branch, BuildDate string
	// ConfigYAML returns the running configuration for /status/config.
	ConfigYAML func() string
	// Flags are the command-line flags for /status/flags.
	Flags map[string]string
	// Metadata describes the metric families for /metadata.
	Metadata []MetricMetadata
	// Rules returns the rules and alerts of the tenant in ctx for
	// /api/v1/rules and /api/v1/alerts (nil: none).
	Rules func(ctx context.Context) v1.RulesRetriever
	// Alertmanagers lists the Alertmanagers alerts go to (nil: none).
	Alertmanagers v1.AlertmanagerRetriever
}

// DefaultOptions returns Prometheus's defaults for the same settings.
func DefaultOptions() Options {
	return Options{
		LookbackDelta: 5 * time.Minute,
		Timeout:       2 * time.Minute,
		MaxSamples:    50_000_000,
		MaxConcurrent: 20,
		MaxSeries:     100_000,
		MaxLength:     32 * 24 * time.Hour,
		// 64 KiB holds any hand-written or generated dashboard query;
		// 100,000 nested parentheses take seconds to parse.
		MaxExpressionBytes: 64 << 10,
		// A day at a 1s step is 86,400 steps.
		MaxSubquerySteps:       1_000_000,
		NoStepSubqueryInterval: time.Minute,
		ExemplarLabel:          "trace_id",
	}
}

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	if o.LookbackDelta <= 0 {
		errs = append(errs, fmt.Errorf("invalid LookbackDelta %s: must be positive", o.LookbackDelta))
	}
	if o.Timeout <= 0 {
		errs = append(errs, fmt.Errorf("invalid Timeout %s: must be positive", o.Timeout))
	}
	if o.MaxSamples <= 0 {
		errs = append(errs, fmt.Errorf("invalid MaxSamples %d: must be positive", o.MaxSamples))
	}
	if o.MaxConcurrent <= 0 {
		errs = append(errs, fmt.Errorf("invalid MaxConcurrent %d: must be positive", o.MaxConcurrent))
	}
	if o.MaxSeries < 0 {
		errs = append(errs, fmt.Errorf("invalid MaxSeries %d: must be 0 (no limit) or positive", o.MaxSeries))
	}
	if o.MaxLength < 0 {
		errs = append(errs, fmt.Errorf("invalid MaxLength %s: must be 0 (no limit) or positive", o.MaxLength))
	}
	if o.MaxExpressionBytes < 0 {
		errs = append(errs, fmt.Errorf("invalid MaxExpressionBytes %d: must be 0 (no limit) or positive", o.MaxExpressionBytes))
	}
	if o.MaxSubquerySteps < 0 {
		errs = append(errs, fmt.Errorf("invalid MaxSubquerySteps %d: must be 0 (no limit) or positive", o.MaxSubquerySteps))
	}
	if o.NoStepSubqueryInterval < time.Millisecond {
		errs = append(errs, fmt.Errorf("invalid NoStepSubqueryInterval %s: must be at least 1ms", o.NoStepSubqueryInterval))
	}
	return errors.Join(errs...)
}

// remoteReadMaxBytesInFrame is Prometheus's default
// --storage.remote.read-max-bytes-in-frame.
const remoteReadMaxBytesInFrame = 1 << 20

// MetricMetadata is one entry of /api/v1/metadata.
type MetricMetadata struct {
	Name string `json:"-"`
	Type string `json:"type"`
	Help string `json:"help"`
	Unit string `json:"unit"`
}

// API is the Prometheus-compatible HTTP API.
type API struct {
	queryable tenantQueryable
	opts      Options
	handler   http.Handler
	engine    *promql.Engine
	parser    parser.Parser
	raw       RawStorage
	limits    *limiter
	metrics   *apiMetrics
	resolver  tenant.Resolver
	logger    *slog.Logger
}

type apiMetrics struct {
	exactQueries prometheus.Counter
	refused      *prometheus.CounterVec
}

func newAPIMetrics(reg prometheus.Registerer) *apiMetrics {
	m := &apiMetrics{
		exactQueries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_query_exact_path_total",
			Help: "PromQL queries whose raw-tier quantile_over_time calls were answered by the exact window path.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_query_refused_total",
			Help: "Queries refused by a query limit, by reason (max_concurrency, max_length, max_series, max_samples, timeout, max_expression_size, max_nesting, max_operators, max_subquery_steps), or failed by an internal error (panic).",
		}, []string{"reason"}),
	}
	for _, r := range []string{reasonConcurrency, reasonLength, reasonSeries, reasonSamples, reasonTimeout, reasonExpressionSize, reasonNesting, reasonSubquerySteps, reasonPanic} {
		m.refused.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.exactQueries, m.refused)
	}
	return m
}

// New builds the API over the aggregate tier src and the raw tier rawSrc
// (nil: no raw tier). ready tells whether storage has finished replaying;
// until then query endpoints answer 503.
func New(opts Options, src Storage, rawSrc RawStorage, ready func() bool, reg prometheus.Registerer, logger *slog.Logger) (*API, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/query: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.ConfigYAML == nil {
		opts.ConfigYAML = func() string { return "" }
	}
	pp := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:               logger.With("component", "promql"),
		Reg:                  reg,
		MaxSamples:           opts.MaxSamples,
		Timeout:              opts.Timeout,
		LookbackDelta:        opts.LookbackDelta,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		EnablePerStepStats:   true,
		Parser:               pp,
		// Unset, a subquery without a step dereferences nil in the engine.
		NoStepSubqueryIntervalFn: func(int64) int64 { return opts.NoStepSubqueryInterval.Milliseconds() },
	})
	metrics := newAPIMetrics(reg)
	q := tenantQueryable{src: src, raw: rawSrc, maxSamples: opts.MaxSamples, refused: metrics.refused, exemplarLabel: opts.ExemplarLabel}
	readyFunc := func(f http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !ready() {
				writeError(w, http.StatusServiceUnavailable, "unavailable", "hopwatch is still replaying its WAL; see /-/ready")
				return
			}
			f(w, r)
		}
	}
	buildInfo := &v1.PrometheusVersion{
		Version:   opts.Version,
		Revision:  opts.Revision,
		Branch:    opts.Branch,
		BuildDate: opts.BuildDate,
		GoVersion: runtime.Version(),
	}
	var ams v1.AlertmanagerRetriever = noAlertmanagers{}
	if opts.Alertmanagers != nil {
		ams = opts.Alertmanagers
	}
	rulesRetriever := func(context.Context) v1.RulesRetriever { return noRules{} }
	if opts.Rules != nil {
		rulesRetriever = opts.Rules
	}
	api := v1.NewAPI(
		engine, q, nil, q,
		func(context.Context) v1.ScrapePoolsRetriever { return noScrape{} },
		func(context.Context) v1.TargetRetriever { return noScrape{} },
		func(context.Context) v1.AlertmanagerRetriever { return ams },
		func() config.Config { return config.Config{} },
		opts.Flags,
		v1.GlobalURLOptions{},
		readyFunc,
		noTSDBAdmin{},
		"",    // dbDir
		false, // enableAdmin
		false, // enableSearch
		0,     // maxSearchLimit
		logger.With("component", "api"),
		rulesRetriever,
		0, 0, 0, // remote read: served by hopwatch's own handler (see New)
		false,                    // isAgent
		regexp.MustCompile(".*"), // CORS origin: Grafana in the browser may call the API directly
		func() (v1.RuntimeInfo, error) { return v1.RuntimeInfo{GoroutineCount: runtime.NumGoroutine()}, nil },
		buildInfo,
		nil, nil, // notifications
		nil, nil, // gatherer, registerer: no remote-write receiver here
		nil,   // stats renderer: Prometheus's default
		false, // remote write receiver
		nil,
		false, false, false, // OTLP metrics receiver
		opts.LookbackDelta,
		false, // type and unit labels
		false, // append metadata
		nil,   // error code override
		features.NewRegistry(),
		v1.OpenAPIOptions{Version: opts.Version},
		pp,
		false, // query cost
		opts.Timeout,
	)
	router := route.New()
	api.Register(router.WithPrefix("/api/v1"))

	a := &API{
		queryable: q,
		opts:      opts,
		engine:    engine,
		parser:    pp,
		raw:       rawSrc,
		limits:    newLimiter(opts, metrics.refused),
		metrics:   metrics,
		resolver:  tenant.Resolver{Enabled: opts.MultitenancyEnabled},
		logger:    logger,
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/query", readyFunc(a.fastPath(true, router).ServeHTTP))
	mux.Handle("/api/v1/query_range", readyFunc(a.fastPath(false, router).ServeHTTP))
	mux.HandleFunc("/api/v1/latency", readyFunc(a.latency))
	// Remote read serves the aggregate tier, the Prometheus data model;
	// the raw tier's several samples per millisecond are not one.
	aggOnly := tenantQueryable{src: src, maxSamples: opts.MaxSamples, refused: metrics.refused}
	read := remote.NewReadHandler(logger.With("component", "remote_read"), reg, aggOnly,
		func() config.Config { return config.Config{} }, opts.MaxSamples, opts.MaxConcurrent, remoteReadMaxBytesInFrame)
	mux.HandleFunc("/api/v1/read", readyFunc(read.ServeHTTP))
	mux.HandleFunc("/api/v1/metadata", readyFunc(a.metadata))
	mux.HandleFunc("/api/v1/status/config", a.statusConfig)
	mux.Handle("/api/v1/", router)
	a.handler = a.withTenant(a.recoverPanics(a.guard(mux)))
	return a, nil
}

// Handler serves /api/v1/.
func (a *API) Handler() http.Handler { return a.handler }

// withTenant resolves the request's tenant and carries it in the context,
// where tenantQueryable reads it.
func (a *API) withTenant(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := a.resolver.FromHTTP(r)
		if err != nil {
			status := http.StatusBadRequest
			if errors.Is(err, tenant.ErrMissing) {
				status = http.StatusUnauthorized
			}
			writeError(w, status, "bad_data", err.Error())
			return
		}
		next.ServeHTTP(w, r.WithContext(tenant.With(r.Context(), id)))
	})
}

type envelope struct {
	Status    string `json:"status"`
	Data      any    `json:"data,omitempty"`
	ErrorType string `json:"errorType,omitempty"`
	Error     string `json:"error,omitempty"`
}

func writeJSON(w http.ResponseWriter, status int, v envelope) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers in the Prometheus error envelope.
func writeError(w http.ResponseWriter, status int, errorType, msg string) {
	writeJSON(w, status, envelope{Status: "error", ErrorType: errorType, Error: msg})
}

// metadata serves /api/v1/metadata from the known metric families, with
// Prometheus's metric and limit parameters.
func (a *API) metadata(w http.ResponseWriter, r *http.Request) {
	limit := -1
	if s := r.FormValue("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, "bad_data", "limit must be a number")
			return
		}
		limit = n
	}
	metric := r.FormValue("metric")
	out := map[string][]MetricMetadata{}
	for _, m := range a.opts.Metadata {
		if metric != "" && m.Name != metric {
			continue
		}
		if limit >= 0 && len(out) >= limit {
			break
		}
		out[m.Name] = append(out[m.Name], m)
	}
	writeJSON(w, http.StatusOK, envelope{Status: "success", Data: out})
}

func (a *API) statusConfig(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, envelope{Status: "success", Data: map[string]string{"yaml": a.opts.ConfigYAML()}})
}

// The parts of the Prometheus API that have no counterpart in hopwatch
// (scrape targets, Alertmanager discovery, rules until the ruler exists,
// TSDB admin) answer empty.
type (
	noScrape        struct{}
	noAlertmanagers struct{}
	noRules         struct{}
	noTSDBAdmin     struct{}
	errNotSupported struct{}
)

func (noScrape) ScrapePools() []string                                 { return nil }
func (noScrape) TargetsActive() map[string][]*scrape.Target            { return nil }
func (noScrape) TargetsDropped() map[string][]*scrape.Target           { return nil }
func (noScrape) TargetsDroppedCounts() map[string]int                  { return nil }
func (noScrape) ScrapePoolConfig(string) (*config.ScrapeConfig, error) { return nil, errNotSupported{} }
func (noAlertmanagers) Alertmanagers() []*url.URL                      { return nil }
func (noAlertmanagers) DroppedAlertmanagers() []*url.URL               { return nil }
func (noRules) RuleGroups() []*rules.Group                             { return nil }
func (noRules) AlertingRules() []*rules.AlertingRule                   { return nil }

func (errNotSupported) Error() string { return "hopwatch/query: not supported by hopwatch" }

func (noTSDBAdmin) CleanTombstones() error { return errNotSupported{} }
func (noTSDBAdmin) Delete(context.Context, int64, int64, ...*labels.Matcher) error {
	return errNotSupported{}
}
func (noTSDBAdmin) Snapshot(string, bool) error            { return errNotSupported{} }
func (noTSDBAdmin) Stats(string, int) (*tsdb.Stats, error) { return nil, errNotSupported{} }
func (noTSDBAdmin) WALReplayStatus() (tsdb.WALReplayStatus, error) {
	return tsdb.WALReplayStatus{}, nil
}
func (noTSDBAdmin) BlockMetas() ([]tsdb.BlockMeta, error) { return nil, nil }

// QueryFunc evaluates instant queries of a tenant, for its rules: the
// same engine, storage, limits and exact path as /api/v1/query. An
// evaluation that panics is an error of that evaluation.
func (a *API) QueryFunc(tenantID string) rules.QueryFunc {
	engineFunc := rules.EngineQueryFunc(a.engine, a.queryable)
	return func(ctx context.Context, qs string, t time.Time) (v promql.Vector, err error) {
		defer func() {
			if p := recover(); p != nil {
				a.metrics.refused.WithLabelValues(reasonPanic).Inc()
				a.logger.Error("rule query panicked", "tenant", tenantID, "query", qs, "panic", p, "stack", string(debug.Stack()))
				v, err = nil, fmt.Errorf("%w: %v", errPanic, p)
			}
		}()
		ctx = tenant.With(ctx, tenantID)
		lim := a.limits.forQuery()
		ctx = withQueryLimits(ctx, lim)
		if err := a.limits.checkText(qs); err != nil {
			return nil, err
		}
		expr, err := a.parser.ParseExpr(qs)
		if err != nil {
			return nil, err
		}
		ms := timestamp.FromTime(t)
		g := evalGrid{start: ms, end: ms, step: 1}
		if err := a.limits.checkSubqueries(expr, g, a.opts.NoStepSubqueryInterval); err != nil {
			return nil, err
		}
		if !a.opts.DisableExactPath {
			if expr, calls := rewrite(expr, g, a.opts.NoStepSubqueryInterval.Milliseconds()); len(calls) > 0 {
				var db RawQueryable
				if a.raw != nil {
					db = a.raw.RawTenant(tenantID)
				}
				pre, err := a.preEvaluate(ctx, db, calls, lim)
				if err != nil {
					return nil, err
				}
				ctx, qs = withPrecomputed(ctx, pre), expr.String()
			}
		}
		return engineFunc(ctx, qs, t)
	}
}
