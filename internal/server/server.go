package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/prometheus/rules"
	promstorage "github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/fileutil"
	v1 "github.com/prometheus/prometheus/web/api/v1"
	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/alerting"
	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/ingest"
	"github.com/hopwatch/hopwatch/internal/admin"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/sampling"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/internal/version"
	"github.com/hopwatch/hopwatch/internal/windowrec"
	"github.com/hopwatch/hopwatch/query"
	"github.com/hopwatch/hopwatch/ratelimit"
	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/agg"
	"github.com/hopwatch/hopwatch/storage/raw"
)

// Server is one hopwatch node.
type Server struct {
	cfg    Config
	reg    *prometheus.Registry
	logger *slog.Logger

	store atomic.Pointer[agg.Store] // nil until the WAL replay is done
	raw   *raw.Store                // nil with the raw tier off; set before store
	recv  *ingest.Receiver
	// windows records window quantiles at each flush; nil when off.
	windows *windowrec.Recorder
	// ruler evaluates the tenants' rules once storage is open.
	ruler *alerting.Ruler
	api   *query.API
	// auth authenticates requests; nil with authentication off.
	auth *auth.Authenticator
	// tls is the public listeners' TLS configuration; nil with TLS off.
	tls *tls.Config
	// tokens is the token store when Config.Tokens is nil: the tenants in
	// the cluster's metadata.
	tokens clusterTokens
	// clusterTLS secures the cluster's connections; nil with cluster TLS
	// off.
	clusterTLS *tls.Config
	// clusterSecret is the cluster's shared secret; nil without one.
	clusterSecret *cluster.Secret
	// adminRemoteRefused counts admin requests refused for coming from
	// another host with authentication off.
	adminRemoteRefused prometheus.Counter
	// node is this node's membership of its raft cluster, which holds the
	// metadata; set by Start.
	node *cluster.Node
	// clusterGRPC is the internal gRPC server (cluster.grpc-address),
	// clusterLn its listener; clusterLock holds the cluster directory.
	clusterGRPC *grpc.Server
	clusterLn   net.Listener
	clusterLock fileutil.Releaser
	// raftAddr and clusterGRPCAddr are the addresses the node advertises.
	raftAddr, clusterGRPCAddr string
	// clusterCtx ends, by clusterStop, the join and the following of the
	// replicated writer exclusions and limits; clusterWG waits for them.
	clusterCtx  context.Context
	clusterStop context.CancelFunc
	clusterWG   sync.WaitGroup
	// sampler sets the raw tier's sampling level; nil with sampling or the
	// raw tier off.
	sampler *sampling.Controller
	// spansLimiter and bytesLimiter hold the tenants' ingestion rate
	// limits; exchange splits them among the cluster's nodes.
	spansLimiter, bytesLimiter *ratelimit.Limiter
	exchange                   *ratelimit.Exchange
	// rawInFlight counts raw appends in progress, the sampler's queue
	// depth. Every append writes it, so it has a cache line of its own.
	rawInFlight paddedInt64

	webLn, grpcLn, httpLn net.Listener
	web, otlpHTTP         *http.Server
	grpc                  *grpc.Server

	wg       sync.WaitGroup
	errc     chan error
	stopOnce sync.Once
	stop     chan struct{} // closed to end the flush loop
	flushed  chan struct{} // closed when the flush loop has ended
}

// paddedInt64 is an atomic counter alone on its cache line, so that
// appends updating it do not slow down readers of the fields around it.
type paddedInt64 struct {
	_ [64]byte
	atomic.Int64
	_ [56]byte
}

// errNotReady is returned to ingest while storage replays its WAL; OTLP
// clients read it as retryable (UNAVAILABLE, HTTP 503).
var errNotReady = errors.New("hopwatch/server: replaying the WAL, not ready to accept spans yet")

// New checks the configuration and builds the node. reg receives every
// metric of the node; nil creates a private registry.
func New(cfg Config, reg *prometheus.Registry, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if reg == nil {
		reg = prometheus.NewRegistry()
	}
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{
		cfg:     cfg,
		reg:     reg,
		logger:  logger,
		errc:    make(chan error, 4),
		stop:    make(chan struct{}),
		flushed: make(chan struct{}),
	}
	s.adminRemoteRefused = promauto.With(reg).NewCounter(prometheus.CounterOpts{
		Name: "hopwatch_admin_remote_refused_total",
		Help: "Admin API requests (tenants, tokens, limits, cluster members, reload) refused because they came from another host while authentication is off.",
	})
	var err error
	logClusterSecurity(cfg, logger)
	if cfg.Tokens == nil {
		cfg.Tokens = &s.tokens
	}
	if s.auth, err = newAuthenticator(cfg, reg, logger.With("component", "auth")); err != nil {
		return nil, err
	}
	if s.clusterTLS, err = newClusterTLS(cfg.Cluster.TLS); err != nil {
		return nil, fmt.Errorf("cluster.tls: %w", err)
	}
	if cfg.Cluster.SecretFile != "" {
		if s.clusterSecret, err = cluster.LoadSecret(cfg.Cluster.SecretFile); err != nil {
			return nil, fmt.Errorf("cluster.secret-file: %w", err)
		}
	}
	if s.tls, err = newServerTLS(cfg.TLS); err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	if s.auth != nil && s.tls == nil {
		logger.Warn("authentication is on without TLS: bearer tokens cross the network in clear unless a proxy in front terminates TLS; set --tls.cert-file and --tls.key-file")
	}
	// With authentication on, the middleware and interceptors set
	// X-Scope-OrgID from the token: every component reads its tenant there.
	cfg.Ingest.MultitenancyEnabled = cfg.multitenant()
	cfg.Query.MultitenancyEnabled = cfg.multitenant()
	if cfg.RawEnabled {
		// A span older than the raw tier's retention would be deleted by
		// its next pass: refuse it rather than acknowledge it.
		cfg.Ingest.PastGracePeriod = cfg.Raw.Retention
	}
	s.recv, err = ingest.New(cfg.Ingest, appenderFunc(s.append), reg, logger.With("component", "ingest"))
	if err != nil {
		return nil, err
	}
	if err := s.newRateLimiters(); err != nil {
		return nil, err
	}
	info := version.Get()
	qopts := cfg.Query
	qopts.Version, qopts.Revision, qopts.Branch, qopts.BuildDate = info.Version, info.Revision, info.Branch, info.BuildDate
	qopts.ConfigYAML = func() string { return cfg.ConfigYAML }
	qopts.Flags = cfg.Flags
	qopts.Metadata = metricMetadata
	qopts.ExemplarLabel = cfg.Storage.ExemplarLabel
	// As Prometheus's global evaluation interval, the step of a subquery
	// without one.
	qopts.NoStepSubqueryInterval = cfg.Alerting.EvaluationInterval
	qopts.Rules = func(ctx context.Context) v1.RulesRetriever {
		if s.ruler == nil {
			return noRules{}
		}
		return s.ruler.RulesRetriever(ctx)
	}
	qopts.Alertmanagers = alertmanagers{s}
	s.api, err = query.New(qopts, query.StorageFunc(s.tenantDB), query.RawStorageFunc(s.rawTenantDB), s.storageReady, reg, logger.With("component", "query"))
	if err != nil {
		return nil, err
	}
	if cfg.RawEnabled && cfg.WindowQuantilesEnabled {
		s.windows, err = windowrec.New(cfg.windowRecOptions(), rawSource{s}, s.windowSink, s.recv.Watermarks().Watermark, reg, logger.With("component", "windowrec"))
		if err != nil {
			return nil, err
		}
	}
	if cfg.RawEnabled && cfg.RawSamplingEnabled {
		s.sampler, err = sampling.New(cfg.RawSampling, reg, logger.With("component", "sampling"))
		if err != nil {
			return nil, err
		}
	}
	return s, nil
}

// metricMetadata describes the metric families hopwatch writes.
var metricMetadata = []query.MetricMetadata{
	{Name: agg.MetricCalls, Type: "counter", Help: "Spans received, per service, span name, kind and status."},
	{Name: agg.MetricLatency, Type: "histogram", Help: "Span duration in seconds, per service, span name, kind and status.", Unit: "seconds"},
	{Name: "traces_service_graph_request_total", Type: "counter", Help: "Requests between two services (client and server spans paired, or a client span and its database or virtual peer)."},
	{Name: "traces_service_graph_request_failed_total", Type: "counter", Help: "Requests between two services where either side failed."},
	{Name: "traces_service_graph_request_server_seconds", Type: "histogram", Help: "Server-side duration of requests between two services.", Unit: "seconds"},
	{Name: "traces_service_graph_request_client_seconds", Type: "histogram", Help: "Client-side duration of requests between two services.", Unit: "seconds"},
	{Name: "traces_service_graph_unpaired_spans_total", Type: "counter", Help: "Client or server spans whose peer did not arrive within the pairing wait."},
	{Name: "traces_service_graph_dropped_spans_total", Type: "counter", Help: "Client or server spans dropped because the pairing store was full."},
	{Name: "hopwatch_hop_network_seconds", Type: "histogram", Help: "Client minus server duration of paired requests: time on the network and in the client's stack.", Unit: "seconds"},
	{Name: "hopwatch_hop_queue_seconds", Type: "histogram", Help: "Time a message waited between its producer's end and its consumer's start, clock-corrected.", Unit: "seconds"},
	{Name: "hopwatch_stage_duration_seconds", Type: "histogram", Help: "Time between two consecutive stage events of a span (enqueue, dequeue, arrive, done).", Unit: "seconds"},
	{Name: "hopwatch_clock_offset_seconds", Type: "gauge", Help: "Estimated server clock minus client clock between two nodes.", Unit: "seconds"},
	{Name: query.MetricRaw, Type: "gauge", Help: "The raw tier: one sample per span, its duration, at its start (ms). quantile_over_time over it is exact.", Unit: "seconds"},
	{Name: windowrec.Metric, Type: "gauge", Help: "Exact quantile of a span series' durations over a sliding window, recorded at each flush up to the watermark.", Unit: "seconds"},
}

type appenderFunc func(ctx context.Context, tenant string, b *sample.Batch) error

func (f appenderFunc) Append(ctx context.Context, tenant string, b *sample.Batch) error {
	return f(ctx, tenant, b)
}

func (s *Server) append(ctx context.Context, tenant string, b *sample.Batch) error {
	st := s.store.Load()
	if st == nil {
		return errNotReady
	}
	if s.raw == nil {
		return st.Append(ctx, tenant, b)
	}
	// One outcome per batch: either all of it is kept and acknowledged, or
	// nothing of it is applied and the client's retry counts it once. The
	// aggregates first decide everything that depends on the batch (a
	// stream seq already applied, the series over the tenant's series
	// limit, taken out of b so that the raw tier never holds a series the
	// aggregates refused) and hold the tenant's appends meanwhile; then the
	// raw tier logs it; only then are the aggregates applied. Samples the
	// raw tier finds too old for its out-of-order window, or leaves out
	// while sampling under overload, are counted there and still
	// aggregated.
	//
	// The sampler's queue depth counts from before Prepare: a tenant's
	// appends queue on its aggregate lock, which is held across the raw
	// append.
	s.rawInFlight.Add(1)
	p, err := st.Prepare(ctx, tenant, b)
	if err != nil {
		s.rawInFlight.Add(-1)
		return err
	}
	rawDone := false
	defer func() {
		if !rawDone {
			// The raw append panicked: release the tenant's appends.
			s.rawInFlight.Add(-1)
			p.Abort()
		}
	}()
	level := 0
	if s.sampler != nil {
		level = s.sampler.Level()
	}
	tooOld, sampledOut, err := s.raw.AppendSampled(tenant, b, level)
	rawDone = true
	s.rawInFlight.Add(-1)
	if err != nil {
		p.Abort()
		return err
	}
	if spanSamples(b)-tooOld-sampledOut == 0 {
		// The raw tier holds nothing of the batch: the aggregates' WAL is
		// its only record, and a failure to write it keeps nothing.
		return p.Commit()
	}
	// The raw tier holds the batch durably: it is kept, so the aggregates
	// take it even if their own WAL write fails (Apply checkpoints them
	// at the next flush instead).
	if err := p.Apply(); err != nil {
		s.logger.Error("aggregate WAL write failed after the raw tier kept the batch; applied, durable at the next checkpoint", "tenant", tenant, "err", err)
	}
	return nil
}

// spanSamples counts the samples of b the raw tier keeps: span durations.
func spanSamples(b *sample.Batch) int {
	n := 0
	for i := range b.Samples {
		if b.Series[b.Samples[i].Series].Family == sample.FamilySpan {
			n++
		}
	}
	return n
}

func (s *Server) tenantDB(id string) query.Queryable {
	st := s.store.Load()
	if st == nil {
		return nil
	}
	if db := st.DB(id); db != nil {
		return db
	}
	return nil
}

func (s *Server) rawTenantDB(id string) query.RawQueryable {
	if s.raw == nil || s.store.Load() == nil {
		return nil
	}
	if db := s.raw.DB(id); db != nil {
		return db
	}
	return nil
}

// rulerDeps gives the ruler each tenant's query function, storage and
// watermark.
type rulerDeps struct{ s *Server }

func (d rulerDeps) QueryFunc(tenant string) rules.QueryFunc { return d.s.api.QueryFunc(tenant) }

func (d rulerDeps) Appendable(tenant string) promstorage.AppendableV2 {
	if st := d.s.store.Load(); st != nil {
		if db := st.DB(tenant); db != nil {
			return db
		}
	}
	return nil
}

func (d rulerDeps) Queryable(tenant string) promstorage.Queryable {
	if st := d.s.store.Load(); st != nil {
		if db := st.DB(tenant); db != nil {
			return db
		}
	}
	return nil
}

func (d rulerDeps) Watermark(tenant string, now int64) (int64, bool) {
	return d.s.recv.Watermarks().Watermark(tenant, now)
}

func (d rulerDeps) Tenants() []string {
	if st := d.s.store.Load(); st != nil {
		return st.Tenants()
	}
	return nil
}

func (d rulerDeps) Prepare(ctx context.Context, tenant string, ts time.Time) {
	if d.s.windows != nil {
		d.s.windows.RecordTenant(ctx, tenant, ts)
	}
}

type noRules struct{}

func (noRules) RuleGroups() []*rules.Group           { return nil }
func (noRules) AlertingRules() []*rules.AlertingRule { return nil }

// alertmanagers lists the ruler's Alertmanagers for /api/v1/alertmanagers.
type alertmanagers struct{ s *Server }

func (a alertmanagers) Alertmanagers() []*url.URL {
	if a.s.ruler == nil {
		return nil
	}
	return a.s.ruler.Alertmanagers()
}

func (a alertmanagers) DroppedAlertmanagers() []*url.URL {
	if a.s.ruler == nil {
		return nil
	}
	return a.s.ruler.DroppedAlertmanagers()
}

// rawSource shows the raw tier to the window recorder.
type rawSource struct{ s *Server }

func (r rawSource) Tenants() []string {
	if r.s.raw == nil || r.s.store.Load() == nil {
		return nil
	}
	return r.s.raw.Tenants()
}

func (r rawSource) RawTenant(id string) query.RawQueryable { return r.s.rawTenantDB(id) }

// windowSink is the aggregate TSDB of a tenant, for the window recorder.
func (s *Server) windowSink(id string) promstorage.Appendable {
	st := s.store.Load()
	if st == nil {
		return nil
	}
	if db := st.DB(id); db != nil {
		return db
	}
	return nil
}

// Ready tells whether the node is ready: its storage has replayed its WAL
// and accepts spans, and it has caught up with its cluster's leader.
func (s *Server) Ready() bool { return s.storageReady() && s.clusterReady() }

// storageReady tells whether the WAL replay is done and spans are accepted.
func (s *Server) storageReady() bool { return s.store.Load() != nil }

// clusterReady tells whether the node has applied everything its cluster's
// leader had committed when the node first asked after starting.
func (s *Server) clusterReady() bool { return s.node != nil && s.node.Ready() }

// Node returns the node's cluster membership; valid after Start.
func (s *Server) Node() *cluster.Node { return s.node }

// Addrs are the bound listen addresses (useful with port 0), and the
// addresses the node advertises to the other members of its cluster.
type Addrs struct {
	Web, OTLPGRPC, OTLPHTTP string
	// ClusterRaft is the raft transport's advertised address.
	ClusterRaft string
	// ClusterGRPC is the internal gRPC server's advertised address, the
	// one to list in another node's cluster.join.
	ClusterGRPC string
}

// Addrs returns the bound addresses; valid after Start.
func (s *Server) Addrs() Addrs {
	a := Addrs{Web: s.webLn.Addr().String(), OTLPGRPC: s.grpcLn.Addr().String(), OTLPHTTP: s.httpLn.Addr().String()}
	a.ClusterRaft, a.ClusterGRPC = s.raftAddr, s.clusterGRPCAddr
	return a
}

// Start binds the listeners and serves. Storage opens (replaying its WAL)
// in the background; until it is done /-/ready answers 503 and ingest
// answers UNAVAILABLE. Errors after Start arrive on Err.
func (s *Server) Start() error {
	var err error
	listen := func(addr string) net.Listener {
		if err != nil {
			return nil
		}
		var ln net.Listener
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			err = fmt.Errorf("listen on %s: %w", addr, err)
		}
		return ln
	}
	s.webLn = listen(s.cfg.WebListenAddress)
	s.grpcLn = listen(s.cfg.OTLPGRPCListenAddress)
	s.httpLn = listen(s.cfg.OTLPHTTPListenAddress)
	s.clusterLn = listen(s.cfg.Cluster.GRPCAddress)
	if err == nil {
		err = s.openCluster()
	}
	if err == nil {
		err = s.newExchange()
	}
	if err == nil {
		err = s.newRuler()
	}
	if err != nil {
		for _, ln := range []net.Listener{s.webLn, s.grpcLn, s.httpLn, s.clusterLn} {
			if ln != nil {
				ln.Close()
			}
		}
		if s.node != nil {
			s.clusterStop()
			_ = s.node.Shutdown()
			_ = s.clusterLock.Release()
			s.node = nil
		}
		return err
	}

	// net/http's own errors (refused TLS handshakes among them) go to the
	// node's logger, not to the process's standard logger, so that they
	// keep the log format.
	httpErrorLog := func(listener string) *log.Logger {
		return slog.NewLogLogger(s.logger.With("component", "http", "listener", listener).Handler(), slog.LevelWarn)
	}
	// Each server gets its own copy of the TLS configuration: net/http adds
	// its protocols to it when serving. The copies share one certificate
	// reloader.
	s.web = &http.Server{Handler: s.webHandler(), TLSConfig: s.tls.Clone(), ErrorLog: httpErrorLog("web"),
		ReadHeaderTimeout: s.cfg.WebHTTP.ReadHeader, ReadTimeout: s.cfg.WebHTTP.Read, IdleTimeout: s.cfg.WebHTTP.Idle}
	s.otlpHTTP = &http.Server{Handler: s.tenantOnly(s.recv.HTTPHandler()), TLSConfig: s.tls.Clone(), ErrorLog: httpErrorLog("otlp-http"),
		ReadHeaderTimeout: s.cfg.OTLPHTTP.ReadHeader, ReadTimeout: s.cfg.OTLPHTTP.Read, IdleTimeout: s.cfg.OTLPHTTP.Idle}
	s.grpc = grpc.NewServer(s.grpcServerOptions()...)
	s.recv.RegisterGRPC(s.grpc)

	serveHTTP := func(srv *http.Server, ln net.Listener) func() error {
		if s.tls != nil {
			// The certificate comes from TLSConfig.GetCertificate.
			return func() error { return srv.ServeTLS(ln, "", "") }
		}
		return func() error { return srv.Serve(ln) }
	}
	s.goServe("web", serveHTTP(s.web, s.webLn))
	s.goServe("otlp-http", serveHTTP(s.otlpHTTP, s.httpLn))
	s.goServe("otlp-grpc", func() error { return s.grpc.Serve(s.grpcLn) })
	s.goServe("cluster-grpc", func() error { return s.clusterGRPC.Serve(s.clusterLn) })
	s.logger.Info("listening", "web", s.webLn.Addr().String(), "otlp_grpc", s.grpcLn.Addr().String(), "otlp_http", s.httpLn.Addr().String(),
		"cluster_raft", s.raftAddr, "cluster_grpc", s.clusterGRPCAddr, "node_id", s.node.ID(),
		"tls", s.tls != nil, "cluster_tls", s.clusterTLS != nil, "auth", s.auth != nil)
	s.startCluster()

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(s.flushed)
		start := time.Now()
		if s.cfg.RawEnabled {
			ropts := s.cfg.Raw
			ropts.Dir = s.cfg.RawDir()
			rs, err := raw.OpenStore(ropts, s.reg, s.logger.With("component", "raw"))
			if err != nil {
				s.errc <- fmt.Errorf("open raw storage: %w", err)
				return
			}
			s.raw = rs
		}
		st, err := agg.Open(s.cfg.Storage, s.reg, s.logger.With("component", "storage"))
		if err != nil {
			if s.raw != nil {
				_ = s.raw.Close()
			}
			s.errc <- fmt.Errorf("open storage: %w", err)
			return
		}
		s.store.Store(st)
		// The tenants' limit overrides in the cluster's metadata apply to
		// storage from now on; the cluster's work stops before storage
		// closes.
		s.clusterWG.Add(1)
		go func() {
			defer s.clusterWG.Done()
			admin.ApplyLimits(s.clusterCtx, s.node, st, s.logger)
		}()
		s.logger.Info("ready", "startup_seconds", time.Since(start).Seconds(), "tenants", len(st.Tenants()))
		if err := s.ruler.Run(); err != nil {
			s.logger.Error("loading rules failed; fix the files and POST /-/reload", "err", err)
		}
		if s.sampler != nil && s.raw != nil {
			// Started once ready, so that the work of the replay does not
			// count as load.
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.sampler.Run(s.stop, func() int { return int(s.rawInFlight.Load()) })
			}()
		}
		s.flushLoop(st)
	}()
	return nil
}

// newRuler builds the ruler, its API's rule groups kept in the cluster's
// metadata.
func (s *Server) newRuler() error {
	aopts := s.cfg.Alerting
	aopts.Dir = s.cfg.RulesDir()
	aopts.TenantLabel = s.cfg.multitenant()
	aopts.Replica = ruleReplica{s.node}
	aopts.CheckExpr = s.api.CheckRule
	r, err := alerting.New(aopts, rulerDeps{s}, s.reg, s.logger.With("component", "ruler"))
	if err != nil {
		return err
	}
	s.ruler = r
	return nil
}

func (s *Server) goServe(name string, serve func() error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := serve(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
			s.errc <- fmt.Errorf("%s server: %w", name, err)
		}
	}()
}

// flushLoop flushes every FlushInterval, and compacts the raw tier every
// CompactInterval, until stop is closed.
func (s *Server) flushLoop(st *agg.Store) {
	t := time.NewTicker(s.cfg.FlushInterval)
	defer t.Stop()
	c := time.NewTicker(s.cfg.CompactInterval)
	defer c.Stop()
	tenants := len(st.Tenants())
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			s.recv.ExpireEdges(context.Background(), now)
			if err := st.Flush(context.Background(), now); err != nil {
				s.logger.Error("flush failed", "err", err)
			}
			if s.windows != nil {
				s.windows.Record(context.Background(), now)
			}
			if n := len(st.Tenants()); n != tenants {
				// A new tenant gets the generated rules at once.
				tenants = n
				if err := s.ruler.Sync(); err != nil {
					s.logger.Error("reloading rules failed", "err", err)
				}
			}
		case now := <-c.C:
			if s.raw != nil {
				if err := s.raw.Compact(now); err != nil {
					s.logger.Error("raw compaction failed", "err", err)
				}
			}
		}
	}
}

// Err delivers errors that end the server.
func (s *Server) Err() <-chan error { return s.errc }

// Shutdown drains in-flight exports, flushes the aggregates, checkpoints and
// closes storage, stops the web server, and last stops the node's part in
// its cluster (it stays a member: see POST /api/v1/admin/cluster/leave).
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	s.stopOnce.Do(func() {
		drained := make(chan struct{})
		// Open ingest streams end with UNAVAILABLE after their current batch,
		// so that graceful stop does not wait on long-lived clients.
		s.recv.Drain()
		go func() { s.grpc.GracefulStop(); close(drained) }()
		if err := s.otlpHTTP.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("otlp http shutdown: %w", err))
		}
		select {
		case <-drained:
		case <-ctx.Done():
			s.grpc.Stop()
			<-drained
		}
		close(s.stop)
		<-s.flushed
		if s.clusterStop != nil {
			s.clusterStop()
			s.clusterWG.Wait()
		}
		s.ruler.Stop()
		if st := s.store.Load(); st != nil {
			if err := st.Flush(ctx, time.Now()); err != nil {
				errs = append(errs, err)
			}
			if err := st.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if s.raw != nil {
			if err := s.raw.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := s.web.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("web shutdown: %w", err))
		}
		// The cluster goes last: the API and the components above read and
		// write the metadata until they stop.
		if err := s.closeCluster(ctx); err != nil {
			errs = append(errs, err)
		}
		s.wg.Wait()
	})
	return errors.Join(errs...)
}

// Run starts the server and serves until ctx is done or serving fails,
// then shuts down gracefully within ShutdownTimeout.
func (s *Server) Run(ctx context.Context) error {
	if err := s.Start(); err != nil {
		return err
	}
	var runErr error
	select {
	case <-ctx.Done():
		s.logger.Info("shutting down")
	case runErr = <-s.errc:
		s.logger.Error("fatal", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
	defer cancel()
	err := s.Shutdown(sctx)
	if err == nil {
		s.logger.Info("shutdown complete")
	}
	return errors.Join(runErr, err)
}

func (s *Server) webHandler() http.Handler {
	mux := http.NewServeMux()
	// Tenant-scoped: the query API (query, latency, exemplars, series,
	// labels, rules, alerts...), the ruler configuration API and the
	// writers API.
	mux.Handle("/api/v1/", s.tenantOnly(s.api.Handler()))
	mux.Handle("/api/v1/rules", s.tenantOnly(s.api.Handler())) // Prometheus's JSON; the subtree is the config API
	mux.Handle("/api/v1/rules/", s.tenantOnly(s.ruler.ConfigHandler(tenant.Resolver{Enabled: s.cfg.multitenant()})))
	mux.Handle(ingest.WritersPath, s.tenantOnly(s.recv.WritersHandler()))
	mux.Handle(ingest.WritersPath+"/", s.tenantOnly(s.recv.WritersHandler()))
	if s.auth != nil {
		// They show the whole node's setup, to admins only.
		mux.Handle("/api/v1/status/config", s.adminOnly(statusHandler(func() any { return map[string]string{"yaml": s.cfg.ConfigYAML} })))
		mux.Handle("/api/v1/status/flags", s.adminOnly(statusHandler(func() any {
			if s.cfg.Flags == nil {
				return map[string]string{}
			}
			return s.cfg.Flags
		})))
	}
	// The cluster: its status, and membership changes.
	mux.Handle("/api/v1/cluster", s.adminOnly(s.clusterHandler()))
	mux.Handle("/api/v1/admin/cluster/", s.adminChange(s.clusterAdminHandler()))
	// Tenants, their limits and tokens, in the cluster's metadata.
	tenants := s.adminChange(admin.NewHandler(s.node, s.reg, s.logger))
	mux.Handle(admin.Prefix, tenants)
	mux.Handle(admin.Prefix+"/", tenants)
	// Administration.
	mux.Handle("/-/reload", s.adminChange(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost && r.Method != http.MethodPut {
			http.Error(w, "use POST or PUT", http.StatusMethodNotAllowed)
			return
		}
		var errs []error
		if err := s.reloadAdminTokens(); err != nil {
			errs = append(errs, fmt.Errorf("reloading admin tokens failed: %w", err))
		}
		if err := s.ruler.Sync(); err != nil {
			errs = append(errs, fmt.Errorf("reloading rules failed: %w", err))
		}
		if err := errors.Join(errs...); err != nil {
			s.logger.Error("reload failed", "err", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte("rules reloaded\n"))
	})))
	mux.Handle("/metrics", s.adminOnly(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg, EnableOpenMetrics: true})))
	mux.Handle("/debug/pprof/", s.adminOnly(http.HandlerFunc(pprof.Index)))
	mux.Handle("/debug/pprof/cmdline", s.adminOnly(http.HandlerFunc(pprof.Cmdline)))
	mux.Handle("/debug/pprof/profile", s.adminOnly(http.HandlerFunc(pprof.Profile)))
	mux.Handle("/debug/pprof/symbol", s.adminOnly(http.HandlerFunc(pprof.Symbol)))
	mux.Handle("/debug/pprof/trace", s.adminOnly(http.HandlerFunc(pprof.Trace)))
	// Probes: open, they tell nothing.
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "hopwatch is Healthy.")
	})
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case !s.storageReady():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "hopwatch is not ready: replaying the WAL.")
		case !s.clusterReady():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "hopwatch is not ready: not caught up with the cluster's leader (see GET /api/v1/cluster).")
		default:
			fmt.Fprintln(w, "hopwatch is Ready.")
		}
	})
	return mux
}
