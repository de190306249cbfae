package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"gopkg.in/yaml.v3"

	"github.com/hopwatch/hopwatch/internal/server"
)

// logOptions are the flags of the logger, outside server.Config because
// the logger is built before the server.
type logOptions struct {
	level  string
	format string
}

// registerFlags binds every setting of cfg to a flag of fs. Each flag has
// the same key in the YAML config file.
func registerFlags(fs *flag.FlagSet, cfg *server.Config, lo *logOptions, configFile *string) {
	fs.StringVar(configFile, "config.file", "", "YAML file with settings; its keys are the flag names (nested maps join with '.'). Flags given on the command line win.")
	fs.StringVar(&cfg.Storage.Dir, "storage.path", cfg.Storage.Dir, "Data directory: one sub-directory per tenant with its WAL, checkpoint and TSDB.")
	fs.Var(durationValue{&cfg.Storage.Retention}, "storage.tsdb.retention.time", "How long aggregate samples are kept.")
	fs.Var(fsyncValue{cfg}, "storage.wal.fsync", "fsync the WALs before acknowledging each export (concurrent exports of different tenants fsync in parallel; a tenant's one at a time). Off, acknowledged spans survive a crash of hopwatch but not of the machine.")
	fs.BoolVar(&cfg.RawEnabled, "storage.raw.enabled", cfg.RawEnabled, "Keep every latency sample losslessly in the raw tier (ns timestamps and latencies, trace ids of the slowest).")
	fs.Var(durationValue{&cfg.Raw.Retention}, "storage.raw.retention.time", "How long raw samples are kept, by the wall clock.")
	fs.Int64Var(&cfg.Raw.RetentionBytes, "storage.raw.retention.size", cfg.Raw.RetentionBytes, "Most bytes the raw blocks of one tenant may take; 0 means no limit.")
	fs.Int64Var(&cfg.Raw.CheckpointWALSize, "storage.raw.checkpoint-wal-size", cfg.Raw.CheckpointWALSize, "Bytes a tenant's raw WAL may grow past its last head checkpoint before compaction writes a new one and deletes the WAL behind it (bounds the replay after a crash); 0 checkpoints only when blocks are cut and at shutdown.")
	fs.Var(durationValue{&cfg.Raw.BlockDuration}, "storage.raw.block-duration", "Time range of a raw block cut from the head.")
	fs.Var(durationValue{&cfg.Raw.MaxBlockDuration}, "storage.raw.max-block-duration", "Longest time range compaction merges raw blocks into.")
	fs.Var(durationValue{&cfg.Raw.OutOfOrderWindow}, "storage.raw.out-of-order-window", "How far behind its series' newest sample a raw sample may arrive and still be kept.")
	fs.IntVar(&cfg.Raw.ChunkSize, "storage.raw.chunk-size", cfg.Raw.ChunkSize, "Samples per raw chunk.")
	fs.IntVar(&cfg.Raw.Exemplars.Slowest, "storage.raw.exemplars.slowest", cfg.Raw.Exemplars.Slowest, "Trace ids kept per raw chunk: the slowest samples'.")
	fs.IntVar(&cfg.Raw.Exemplars.Reservoir, "storage.raw.exemplars.reservoir", cfg.Raw.Exemplars.Reservoir, "Trace ids kept per raw chunk: a uniform sample of the others.")
	fs.BoolVar(&cfg.Raw.Exemplars.All, "storage.raw.exemplars.all", cfg.Raw.Exemplars.All, "Keep the trace id of every raw sample.")
	fs.Var(durationValue{&cfg.CompactInterval}, "storage.raw.compact-interval", "How often the raw tier cuts blocks, compacts them and applies retention.")
	fs.BoolVar(&cfg.RawSamplingEnabled, "storage.raw.sampling.enabled", cfg.RawSamplingEnabled, "Under overload, keep only a consistent sample of traces in the raw tier, each kept sample weighted by 1/probability; span metrics still count every span.")
	fs.IntVar(&cfg.RawSampling.MaxQueueDepth, "storage.raw.sampling.max-queue-depth", cfg.RawSampling.MaxQueueDepth, "Raw appends in flight above which the raw tier halves the share of traces it keeps, once per second.")
	fs.Float64Var(&cfg.RawSampling.MaxCPU, "storage.raw.sampling.max-cpu", cfg.RawSampling.MaxCPU, "Process CPU utilisation, as a share of GOMAXPROCS, above which the raw tier halves the share of traces it keeps, once per second.")
	fs.Var(durationValue{&cfg.Storage.CheckpointInterval}, "storage.checkpoint-interval", "How often the aggregate state is checkpointed and older WAL segments deleted; bounds replay time.")
	fs.StringVar(&cfg.WebListenAddress, "web.listen-address", cfg.WebListenAddress, "Address of the HTTP API, /metrics, /-/healthy, /-/ready and /debug/pprof.")
	fs.StringVar(&cfg.OTLPGRPCListenAddress, "otlp.grpc.listen-address", cfg.OTLPGRPCListenAddress, "Address of the OTLP/gRPC receiver.")
	fs.StringVar(&cfg.OTLPHTTPListenAddress, "otlp.http.listen-address", cfg.OTLPHTTPListenAddress, "Address of the OTLP/HTTP receiver (POST /v1/traces).")
	fs.IntVar(&cfg.Ingest.MaxRequestBytes, "otlp.max-request-bytes", cfg.Ingest.MaxRequestBytes, "Largest OTLP request accepted, in bytes, after decompression.")
	fs.Var(durationValue{&cfg.WebHTTP.ReadHeader}, "web.read-header-timeout", "Longest the web listener waits for a request's headers.")
	fs.Var(durationValue{&cfg.WebHTTP.Read}, "web.read-timeout", "Longest the web listener reads a whole request; it also ends the request, so it must exceed --query.timeout.")
	fs.Var(durationValue{&cfg.WebHTTP.Idle}, "web.idle-timeout", "How long the web listener keeps an idle keep-alive connection.")
	fs.Var(durationValue{&cfg.OTLPHTTP.ReadHeader}, "otlp.http.read-header-timeout", "Longest the OTLP/HTTP listener waits for a request's headers.")
	fs.Var(durationValue{&cfg.OTLPHTTP.Read}, "otlp.http.read-timeout", "Longest the OTLP/HTTP listener reads a whole request, body included (a slower body is answered 408); it also ends the export.")
	fs.Var(durationValue{&cfg.OTLPHTTP.Idle}, "otlp.http.idle-timeout", "How long the OTLP/HTTP listener keeps an idle keep-alive connection.")
	fs.Var(durationValue{&cfg.Ingest.GRPC.ConnectionTimeout}, "otlp.grpc.connection-timeout", "Longest a new OTLP/gRPC connection may take to set up (TLS and HTTP/2 handshakes).")
	fs.Var(durationValue{&cfg.Ingest.GRPC.MaxConnectionIdle}, "otlp.grpc.max-connection-idle", "Close an OTLP/gRPC connection without an open call for this long.")
	fs.IntVar(&cfg.Ingest.GRPC.MaxConcurrentStreams, "otlp.grpc.max-concurrent-streams", cfg.Ingest.GRPC.MaxConcurrentStreams, "Most calls (streams included) one OTLP/gRPC connection may have open at once.")
	fs.Var(durationValue{&cfg.Ingest.CreationGracePeriod}, "limits.creation-grace-period", "Refuse spans (and streamed records) that end later than the server's clock plus this (reason too_far_in_future); 0 turns it off.")
	fs.Var(durationValue{&cfg.FlushInterval}, "flush.interval", "How often in-memory aggregates are written to the TSDB (at least 1s).")
	fs.Var(&stringList{dst: &cfg.Alerting.RulesPaths}, "rules.path", "Prometheus rule files, or directories of them; files in a subdirectory belong to the tenant it is named after (comma-separated or repeated). POST /-/reload rereads them.")
	fs.Var(durationValue{&cfg.Alerting.EvaluationInterval}, "ruler.evaluation-interval", "Default evaluation interval of rule groups (at least 1s).")
	fs.Var(&stringList{dst: &cfg.Alerting.AlertmanagerURLs}, "ruler.alertmanager-url", "Alertmanager base URLs alerts are sent to (API v2; comma-separated or repeated).")
	fs.Var(&stringList{dst: &cfg.Alerting.WebhookURLs}, "ruler.webhook-url", "URLs that receive alerts as a JSON array, Alertmanager's payload, with retries (comma-separated or repeated).")
	fs.StringVar(&cfg.Alerting.ExternalURL, "ruler.external-url", cfg.Alerting.ExternalURL, "URL under which hopwatch is reached, for the generator URL of alerts.")
	fs.StringVar(&cfg.Alerting.Anomaly.Selector, "ruler.anomaly.selector", cfg.Alerting.Anomaly.Selector, "Series selector opting span series into baseline anomaly alerts, e.g. {service=~\"checkout|cart\"} (empty: off). Each tenant gets a generated rule group in namespace hopwatch-anomaly.")
	fs.Float64Var(&cfg.Alerting.Anomaly.Quantile, "ruler.anomaly.quantile", cfg.Alerting.Anomaly.Quantile, "Quantile of hopwatch_window_latency_seconds compared with its baseline.")
	fs.Var(durationValue{&cfg.Alerting.Anomaly.Window}, "ruler.anomaly.window", "Window of hopwatch_window_latency_seconds compared (one of --window-quantiles.windows).")
	fs.Var(durationValue{&cfg.Alerting.Anomaly.Baseline}, "ruler.anomaly.baseline", "How far back the baseline mean and deviation are taken, ending where the current window begins.")
	fs.Float64Var(&cfg.Alerting.Anomaly.Deviations, "ruler.anomaly.deviations", cfg.Alerting.Anomaly.Deviations, "Anomalous above the baseline mean plus this many standard deviations ...")
	fs.Float64Var(&cfg.Alerting.Anomaly.MinRatio, "ruler.anomaly.min-ratio", cfg.Alerting.Anomaly.MinRatio, "... and above the baseline mean times this.")
	fs.IntVar(&cfg.Alerting.Anomaly.Windows, "ruler.anomaly.windows", cfg.Alerting.Anomaly.Windows, "Consecutive anomalous evaluations before the alert fires.")
	fs.IntVar(&cfg.Alerting.Anomaly.MinBaselineSamples, "ruler.anomaly.min-baseline-samples", cfg.Alerting.Anomaly.MinBaselineSamples, "Points a series needs in its baseline before it is judged.")
	fs.BoolVar(&cfg.WindowQuantilesEnabled, "window-quantiles.enabled", cfg.WindowQuantilesEnabled, "Record exact sliding-window quantiles of every raw series as hopwatch_window_latency_seconds{quantile, window} at each flush, up to the tenant's watermark (needs the raw tier).")
	fs.Var(&durationList{dst: &cfg.WindowQuantiles.Windows}, "window-quantiles.windows", "Window lengths recorded (comma-separated or repeated).")
	fs.Var(&floatList{dst: &cfg.WindowQuantiles.Quantiles}, "window-quantiles.quantiles", "Quantiles recorded (comma-separated or repeated).")
	fs.Var(durationValue{&cfg.ShutdownTimeout}, "shutdown.timeout", "How long a graceful shutdown may take before in-flight requests are cut.")
	fs.BoolVar(&cfg.MultitenancyEnabled, "auth.multitenancy-enabled", cfg.MultitenancyEnabled, "Take the tenant from the X-Scope-OrgID header; off, every request belongs to tenant \"anonymous\".")
	fs.BoolVar(&cfg.Auth.Enabled, "auth.enabled", cfg.Auth.Enabled, "Require Authorization: Bearer <token> on every request but /-/healthy and /-/ready, and take the tenant from the token; admin endpoints need an admin token. See docs/security.md.")
	fs.StringVar(&cfg.Auth.AdminTokenFile, "auth.admin-token-file", cfg.Auth.AdminTokenFile, "File of admin tokens or their sha256: hashes, one a line (with --auth.enabled); reread on POST /-/reload. None: no request is admin.")
	fs.StringVar(&cfg.TLS.CertFile, "tls.cert-file", cfg.TLS.CertFile, "PEM certificate chain of the web, OTLP/gRPC and OTLP/HTTP listeners; with --tls.key-file, turns TLS on for all three. Reread when the file changes.")
	fs.StringVar(&cfg.TLS.KeyFile, "tls.key-file", cfg.TLS.KeyFile, "PEM private key of --tls.cert-file.")
	fs.StringVar(&cfg.TLS.ClientCAFile, "tls.client-ca-file", cfg.TLS.ClientCAFile, "PEM CAs that sign client certificates; a client certificate sent is verified against them.")
	fs.BoolVar(&cfg.TLS.RequireClientCert, "tls.require-client-cert", cfg.TLS.RequireClientCert, "Refuse clients without a certificate signed by --tls.client-ca-file (mTLS).")
	fs.StringVar(&cfg.Cluster.NodeID, "cluster.node-id", cfg.Cluster.NodeID, "The node's ID in its cluster, for good (A-Z, a-z, 0-9, '.', '-', '_'). Empty: the ID stored in <storage.path>/cluster at the first start, else the host name.")
	fs.StringVar(&cfg.Cluster.RaftAddress, "cluster.raft-address", cfg.Cluster.RaftAddress, "Listen address of the raft transport between the nodes. The default, on 127.0.0.1, serves a cluster on this host; an address other hosts reach needs --cluster.secret-file or --cluster.tls.*.")
	fs.StringVar(&cfg.Cluster.RaftAdvertiseAddress, "cluster.raft-advertise-address", cfg.Cluster.RaftAdvertiseAddress, "Address other nodes dial for raft. Empty: --cluster.raft-address, or, when it names no host, this host's first private IP with its port.")
	fs.StringVar(&cfg.Cluster.GRPCAddress, "cluster.grpc-address", cfg.Cluster.GRPCAddress, "Listen address of the internal gRPC server between the nodes (the cluster service); not the public OTLP/gRPC listener. Like --cluster.raft-address, on 127.0.0.1 unless authenticated.")
	fs.StringVar(&cfg.Cluster.GRPCAdvertiseAddress, "cluster.grpc-advertise-address", cfg.Cluster.GRPCAdvertiseAddress, "Address other nodes dial for --cluster.grpc-address, chosen as --cluster.raft-advertise-address when empty.")
	fs.Var(&stringList{dst: &cfg.Cluster.Join}, "cluster.join", "Internal gRPC addresses (--cluster.grpc-address) of members to join through, tried in turn until one adds this node (comma-separated or repeated). Ignored once the node has cluster state.")
	fs.BoolVar(&cfg.Cluster.Bootstrap, "cluster.bootstrap", cfg.Cluster.Bootstrap, "Make a node without cluster state a cluster of one. Default: true without --cluster.join, false with it. Set it false, without --cluster.join, for a node to wait until a member adds it.")
	fs.StringVar(&cfg.Cluster.TLS.CertFile, "cluster.tls.cert-file", cfg.Cluster.TLS.CertFile, "PEM certificate of this node for the raft transport and the internal gRPC server and client (mutual TLS, with --cluster.tls.key-file and --cluster.tls.ca-file). Reread when the file changes.")
	fs.StringVar(&cfg.Cluster.TLS.KeyFile, "cluster.tls.key-file", cfg.Cluster.TLS.KeyFile, "PEM private key of --cluster.tls.cert-file.")
	fs.StringVar(&cfg.Cluster.TLS.CAFile, "cluster.tls.ca-file", cfg.Cluster.TLS.CAFile, "PEM CAs that sign the nodes' certificates; a node without one is refused, both ways.")
	fs.StringVar(&cfg.Cluster.SecretFile, "cluster.secret-file", cfg.Cluster.SecretFile, "File holding the cluster's shared secret (at least 16 bytes, e.g. from openssl rand -hex 32), the same on every node: raft connections and internal gRPC calls without it are refused. The cluster listeners bind beyond 127.0.0.1 only with it or with --cluster.tls.*.")
	fs.Var(&stringList{dst: &cfg.Ingest.Dimensions}, "spanmetrics.dimensions", "Span or resource attributes added as labels (comma-separated or repeated); dots become underscores.")
	fs.Var(durationValue{&cfg.Ingest.Graph.Wait}, "service-graph.wait", "How long a client or server span waits for its peer before it counts as unpaired (or becomes an edge to its database or peer.service).")
	fs.IntVar(&cfg.Ingest.Graph.MaxItems, "service-graph.max-items", cfg.Ingest.Graph.MaxItems, "Most spans waiting for their peer; beyond it spans are dropped and counted.")
	fs.IntVar(&cfg.Ingest.Graph.MaxHeldQueueHops, "service-graph.max-held-queue-hops", cfg.Ingest.Graph.MaxHeldQueueHops, "Most queue hops per tenant held until the clock offset between their producer's and consumer's nodes is known; beyond it they are counted in hopwatch_discarded_samples_total{reason=\"queue_hops_held_limit\"}.")
	fs.Var(&stringList{dst: &cfg.Ingest.Stages.Names}, "stages.names", "Span event names that mark stages, in any order (comma-separated); the time between consecutive stage events becomes hopwatch_stage_duration_seconds.")
	fs.StringVar(&cfg.Ingest.Stages.Attribute, "stages.attribute", cfg.Ingest.Stages.Attribute, "Event attribute whose value names the stage, for events named otherwise; empty turns it off.")
	fs.Var(durationValue{&cfg.Storage.SeriesIdleTimeout}, "spanmetrics.series-idle-timeout", "Close a series that got no sample for this long: staleness markers, memory freed (Tempo's stale_duration); 0 keeps series forever.")
	fs.IntVar(&cfg.Ingest.MaxLabelValueLength, "limits.max-label-value-length", cfg.Ingest.MaxLabelValueLength, "Refuse spans whose service name, span name, dimension value, service.instance.id, host.name or peer attribute is longer (reason label_value_too_long).")
	fs.IntVar(&cfg.Storage.MaxSeriesPerTenant, "limits.max-series-per-tenant", cfg.Storage.MaxSeriesPerTenant, "Most active series per tenant; spans of new series beyond it are refused (reason per_user_series_limit); 0 means no limit.")
	fs.Float64Var(&cfg.RateLimits.IngestionRateSpans, "limits.ingestion-rate-spans", cfg.RateLimits.IngestionRateSpans, "Spans per second each tenant may send, across the whole cluster (the nodes split it by demand); refused requests get RESOURCE_EXHAUSTED or 429 with a retry delay (reason rate_limited). 0 means no limit. A tenant's override through the admin API wins.")
	fs.Int64Var(&cfg.RateLimits.IngestionBurstSpans, "limits.ingestion-burst-spans", cfg.RateLimits.IngestionBurstSpans, "Spans a tenant that has been quiet may send at once, across the cluster; a request with more is refused as too large. 0 means one second of --limits.ingestion-rate-spans.")
	fs.Float64Var(&cfg.RateLimits.IngestionRateBytes, "limits.ingestion-rate-bytes", cfg.RateLimits.IngestionRateBytes, "Request bytes (after decompression) per second each tenant may send, across the cluster, with a burst of one second of it. 0 means no limit. A tenant's override through the admin API wins.")
	fs.Var(durationValue{&cfg.RateLimits.ExchangeInterval}, "limits.exchange-interval", "How often the nodes exchange each tenant's demand with the tenant's owner, which splits the rate limits among them. Use the same on every node.")
	fs.IntVar(&cfg.Ingest.MaxDimensions, "limits.max-dimensions", cfg.Ingest.MaxDimensions, "Most attributes --spanmetrics.dimensions may promote to labels.")
	fs.Var(durationValue{&cfg.Ingest.Watermark.HeartbeatTimeout}, "watermark.heartbeat-timeout", "How long a writer may stay silent before it stops holding its tenant's watermark; its next write brings it back.")
	fs.Var(durationValue{&cfg.Ingest.Watermark.ForgetAfter}, "watermark.forget-after", "How long an idle writer is remembered and listed before it is dropped (excluded writers are kept).")
	fs.IntVar(&cfg.Ingest.Watermark.MaxWritersPerTenant, "watermark.max-writers-per-tenant", cfg.Ingest.Watermark.MaxWritersPerTenant, "Most writers tracked per tenant; writes of further writers are counted, not tracked.")
	fs.IntVar(&cfg.Ingest.StreamWindow, "stream.window", cfg.Ingest.StreamWindow, "Credit of a streaming ingest client: batches it may send before their acknowledgement.")
	fs.Var(&floatList{dst: &cfg.Storage.ClassicBuckets}, "spanmetrics.histogram-buckets", "Classic histogram bucket upper bounds in seconds (comma-separated).")
	fs.BoolVar(&cfg.Storage.ClassicHistograms, "spanmetrics.classic-histograms", cfg.Storage.ClassicHistograms, "Write traces_spanmetrics_latency_bucket/_sum/_count.")
	fs.BoolVar(&cfg.Storage.NativeHistograms, "spanmetrics.native-histograms", cfg.Storage.NativeHistograms, "Write traces_spanmetrics_latency as a native histogram.")
	fs.Var(int32Value{&cfg.Storage.NativeSchema}, "spanmetrics.native-histogram-schema", "Native histogram schema, -4..8: buckets grow by 2^(2^-schema); 5 bounds the relative error near 1.1%.")
	fs.StringVar(&cfg.Storage.ExemplarLabel, "spanmetrics.exemplar-label", cfg.Storage.ExemplarLabel, "Label name of the trace id in exemplars (Tempo's metrics-generator uses traceID).")
	fs.Int64Var(&cfg.Storage.MaxExemplars, "storage.tsdb.max-exemplars", cfg.Storage.MaxExemplars, "Exemplars kept in memory per tenant; 0 turns exemplar storage off.")
	fs.Var(durationValue{&cfg.Query.LookbackDelta}, "query.lookback-delta", "How far back an instant vector selector looks for a sample.")
	fs.Var(durationValue{&cfg.Query.Timeout}, "query.timeout", "Longest a query may run.")
	fs.IntVar(&cfg.Query.MaxSamples, "query.max-samples", cfg.Query.MaxSamples, "Most samples a single query may load into memory.")
	fs.IntVar(&cfg.Query.MaxConcurrent, "query.max-concurrency", cfg.Query.MaxConcurrent, "Most queries evaluated at once; more wait for a slot.")
	fs.IntVar(&cfg.Query.MaxSeries, "query.max-series", cfg.Query.MaxSeries, "Most series a single query may select (0: no limit).")
	fs.Var(durationValue{&cfg.Query.MaxLength}, "query.max-length", "Longest end − start of a range query (0: no limit).")
	fs.IntVar(&cfg.Query.MaxExpressionBytes, "query.max-expression-size-bytes", cfg.Query.MaxExpressionBytes, "Longest PromQL text of one request, its query and match[] selectors together, in bytes (0: no limit).")
	fs.IntVar(&cfg.Query.MaxSubquerySteps, "query.max-subquery-steps", cfg.Query.MaxSubquerySteps, "Most evaluation steps of any one subquery of a query (0: no limit).")
	fs.BoolVar(&cfg.Query.DisableExactPath, "query.disable-exact-path", cfg.Query.DisableExactPath, "Leave quantile_over_time over hopwatch_latency_raw_seconds to Prometheus's engine (weights ignored) instead of the exact window path.")
	fs.StringVar(&lo.level, "log.level", lo.level, "Log level: debug, info, warn or error.")
	fs.StringVar(&lo.format, "log.format", lo.format, "Log format: logfmt or json.")
}

// stringList is a flag holding a list; the first Set replaces the default.
type stringList struct {
	dst *[]string
	set bool
}

func (l *stringList) String() string {
	if l.dst == nil {
		return ""
	}
	return strings.Join(*l.dst, ",")
}

func (l *stringList) Set(v string) error {
	if !l.set {
		*l.dst, l.set = nil, true
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l.dst = append(*l.dst, p)
		}
	}
	return nil
}

// durationList is a list of Prometheus durations.
type durationList struct {
	dst *[]time.Duration
	set bool
}

func (l *durationList) String() string {
	if l.dst == nil {
		return ""
	}
	s := make([]string, len(*l.dst))
	for i, d := range *l.dst {
		s[i] = model.Duration(d).String()
	}
	return strings.Join(s, ",")
}

func (l *durationList) Set(v string) error {
	if !l.set {
		*l.dst, l.set = nil, true
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		d, err := model.ParseDuration(p)
		if err != nil {
			return fmt.Errorf("%q is not a duration (e.g. 30s, 1m, 5m)", p)
		}
		*l.dst = append(*l.dst, time.Duration(d))
	}
	return nil
}

type floatList struct {
	dst *[]float64
	set bool
}

func (l *floatList) String() string {
	if l.dst == nil {
		return ""
	}
	s := make([]string, len(*l.dst))
	for i, v := range *l.dst {
		s[i] = strconv.FormatFloat(v, 'g', -1, 64)
	}
	return strings.Join(s, ",")
}

func (l *floatList) Set(v string) error {
	if !l.set {
		*l.dst, l.set = nil, true
	}
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		f, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", p)
		}
		*l.dst = append(*l.dst, f)
	}
	return nil
}

// fsyncValue sets the fsync policy of both tiers' WALs.
type fsyncValue struct{ cfg *server.Config }

func (v fsyncValue) String() string {
	if v.cfg == nil {
		return "false"
	}
	return strconv.FormatBool(v.cfg.Storage.WALFsync)
}

func (v fsyncValue) Set(s string) error {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return fmt.Errorf("%q is not true or false", s)
	}
	v.cfg.Storage.WALFsync, v.cfg.Raw.Fsync = b, b
	return nil
}

// IsBoolFlag lets --storage.wal.fsync stand alone.
func (fsyncValue) IsBoolFlag() bool { return true }

// durationValue parses durations as Prometheus does, so that "15d" and
// "1w" work as well as Go's "1h30m".
type durationValue struct{ p *time.Duration }

func (v durationValue) String() string {
	if v.p == nil {
		return "0s"
	}
	return model.Duration(*v.p).String()
}

func (v durationValue) Set(s string) error {
	d, err := model.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration (e.g. 30s, 5m, 15d)", s)
	}
	*v.p = time.Duration(d)
	return nil
}

type int32Value struct{ p *int32 }

func (v int32Value) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(int(*v.p))
}

func (v int32Value) Set(s string) error {
	n, err := strconv.ParseInt(s, 10, 32)
	if err != nil {
		return fmt.Errorf("%q is not an integer", s)
	}
	*v.p = int32(n)
	return nil
}

// applyConfigFile sets, from the YAML file, every flag not given on the
// command line. Unknown keys and bad values are errors naming file and line.
func applyConfigFile(fs *flag.FlagSet, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read config file: %w", err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })

	var errs []error
	var walk func(prefix string, n *yaml.Node)
	walk = func(prefix string, n *yaml.Node) {
		if n.Kind != yaml.MappingNode {
			errs = append(errs, fmt.Errorf("%s:%d: expected a mapping of settings", path, n.Line))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := k.Value
			if prefix != "" {
				key = prefix + "." + key
			}
			f := fs.Lookup(key)
			if f == nil && v.Kind == yaml.MappingNode {
				walk(key, v)
				continue
			}
			if f == nil || key == "config.file" {
				errs = append(errs, fmt.Errorf("%s:%d: unknown setting %q (see hopwatch serve -help)", path, k.Line, key))
				continue
			}
			if explicit[key] {
				continue
			}
			var vals []*yaml.Node
			switch v.Kind {
			case yaml.ScalarNode:
				vals = []*yaml.Node{v}
			case yaml.SequenceNode:
				vals = v.Content
			default:
				errs = append(errs, fmt.Errorf("%s:%d: %s: expected a value or a list", path, v.Line, key))
				continue
			}
			for _, e := range vals {
				if err := fs.Set(key, e.Value); err != nil {
					errs = append(errs, fmt.Errorf("%s:%d: %s: invalid value %q: %w", path, e.Line, key, e.Value, err))
				}
			}
		}
	}
	walk("", doc.Content[0])
	return errors.Join(errs...)
}

// effectiveConfig renders every setting as YAML, for /api/v1/status/config,
// and as a map, for /api/v1/status/flags.
func effectiveConfig(fs *flag.FlagSet) (string, map[string]string) {
	flags := map[string]string{}
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		flags[f.Name] = f.Value.String()
		if f.Name != "config.file" {
			names = append(names, f.Name)
		}
	})
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		v, _ := yaml.Marshal(flags[n])
		fmt.Fprintf(&b, "%s: %s", n, v)
	}
	return b.String(), flags
}
