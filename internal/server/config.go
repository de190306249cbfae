package server

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"time"

	"github.com/hopwatch/hopwatch/alerting"
	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/ingest"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/sampling"
	"github.com/hopwatch/hopwatch/internal/windowrec"
	"github.com/hopwatch/hopwatch/query"
	"github.com/hopwatch/hopwatch/storage/agg"
	"github.com/hopwatch/hopwatch/storage/raw"
)

// Config is the whole configuration of one hopwatch node.
type Config struct {
	WebListenAddress      string
	OTLPGRPCListenAddress string
	OTLPHTTPListenAddress string
	// FlushInterval is how often in-memory aggregates go to the TSDB.
	FlushInterval time.Duration
	// ShutdownTimeout bounds the graceful drain on SIGTERM.
	ShutdownTimeout time.Duration
	// MultitenancyEnabled takes the tenant of every request, write or
	// read, from X-Scope-OrgID; off, all requests are tenant "anonymous".
	// With Auth.Enabled the tenant comes from the bearer token instead.
	MultitenancyEnabled bool
	// Auth turns authentication on (see docs/security.md).
	Auth AuthConfig
	// TLS configures TLS on the web, OTLP/gRPC and OTLP/HTTP listeners.
	TLS TLSConfig
	// Tokens finds the tenant of a bearer token with Auth.Enabled. It is
	// not a setting but a dependency: nil, the node's own store, the
	// tenants in the cluster's replicated metadata (token hashes only, set
	// through the admin API), answers; tests give an auth.TokenMap.
	Tokens auth.Tokens
	// Cluster configures the node's membership of its raft cluster, which
	// replicates the metadata (tenants, rule groups, writer exclusions,
	// members). A single node is a cluster of one.
	Cluster ClusterConfig

	// WebHTTP and OTLPHTTP bound the reads of the web and OTLP/HTTP
	// listeners, so that slow or silent clients cannot hold connections.
	WebHTTP  HTTPTimeouts
	OTLPHTTP HTTPTimeouts

	Ingest  ingest.Options
	Storage agg.Options
	// RawEnabled keeps every sample losslessly in the raw tier as well.
	RawEnabled bool
	// Raw configures the raw tier; its Dir is derived from Storage.Dir.
	Raw raw.Options
	// RawSamplingEnabled lets the raw tier keep a consistent sample of
	// traces, with weights, while the node is overloaded; the aggregates
	// count every span regardless.
	RawSamplingEnabled bool
	// RawSampling says when the raw tier samples and how much.
	RawSampling sampling.Options
	// CompactInterval is how often the raw tier cuts blocks, compacts and
	// applies retention.
	CompactInterval time.Duration
	Query           query.Options
	// WindowQuantilesEnabled records the raw tier's window quantiles into
	// the aggregate tier (with the raw tier on).
	WindowQuantilesEnabled bool
	// WindowQuantiles configures them; Interval is FlushInterval.
	WindowQuantiles windowrec.Options
	// Alerting configures the ruler; its Dir is derived from Storage.Dir.
	Alerting alerting.Options
	// RateLimits are every tenant's default ingestion rate limits, held
	// across the cluster (see docs/ratelimit.md); the cluster's tenant
	// metadata overrides them per tenant.
	RateLimits RateLimitConfig

	// ConfigYAML is the effective configuration as served by /api/v1/status/config.
	ConfigYAML string
	// Flags are the command-line flags as served by /api/v1/status/flags.
	Flags map[string]string
}

// HTTPTimeouts bound how long an HTTP listener waits on a client.
type HTTPTimeouts struct {
	// ReadHeader bounds reading a request's headers (slowloris).
	ReadHeader time.Duration
	// Read bounds reading a whole request, body included, from its first
	// byte; it also ends the request's context, so it must exceed the
	// longest handler (a query's --query.timeout, a 30 s profile).
	Read time.Duration
	// Idle closes a keep-alive connection without a request for this long.
	Idle time.Duration
}

func (t HTTPTimeouts) validate(flag string) error {
	if t.ReadHeader <= 0 || t.Read <= 0 || t.Idle <= 0 {
		return fmt.Errorf("%s.read-header-timeout, %s.read-timeout and %s.idle-timeout must be positive, got %s, %s and %s", flag, flag, flag, t.ReadHeader, t.Read, t.Idle)
	}
	return nil
}

// AuthConfig configures authentication.
type AuthConfig struct {
	// Enabled requires a bearer token on every request but the health
	// probes, and takes the request's tenant from it (--auth.enabled).
	Enabled bool
	// AdminTokenFile names the file of admin tokens or their hashes, one a
	// line (--auth.admin-token-file), read at start and again on
	// /-/reload. Empty: no request is admin.
	AdminTokenFile string
}

// TLSConfig configures TLS on the public listeners. Setting CertFile and
// KeyFile turns it on for the three of them.
type TLSConfig struct {
	CertFile string
	KeyFile  string
	// ClientCAFile holds the CAs that sign client certificates; a client
	// certificate is verified when one is sent.
	ClientCAFile string
	// RequireClientCert refuses clients without a certificate signed by
	// ClientCAFile (mTLS).
	RequireClientCert bool
}

// Enabled reports whether the listeners serve TLS.
func (c TLSConfig) Enabled() bool { return c.CertFile != "" || c.KeyFile != "" }

// ClusterConfig configures the node as a member of its raft cluster (see
// docs/cluster.md). The raft log and snapshots live in
// <storage.path>/cluster.
type ClusterConfig struct {
	// NodeID names the node in the cluster, for good: raft knows it by
	// this ID (--cluster.node-id). Empty: the ID the node stored at its
	// first start, else the host name.
	NodeID string
	// RaftAddress is the raft transport's listen address
	// (--cluster.raft-address).
	RaftAddress string
	// RaftAdvertiseAddress is the address other nodes dial for raft
	// (--cluster.raft-advertise-address). Empty: RaftAddress, or, when
	// that names no host (all addresses), this host's first private IP
	// with RaftAddress's port.
	RaftAdvertiseAddress string
	// GRPCAddress is the listen address of the internal gRPC server, where
	// other nodes reach this node's cluster service
	// (--cluster.grpc-address). It is not the public OTLP/gRPC listener.
	GRPCAddress string
	// GRPCAdvertiseAddress is where other nodes reach GRPCAddress
	// (--cluster.grpc-advertise-address), chosen as RaftAdvertiseAddress
	// is when empty.
	GRPCAdvertiseAddress string
	// Join lists internal gRPC addresses of members (--cluster.join): a
	// node without raft state asks them in turn, with backoff, to add it.
	Join []string
	// Bootstrap makes a node without raft state a cluster of one
	// (--cluster.bootstrap). Set on the first node only, never with Join;
	// hopwatch serve sets it when no --cluster.join is given. Without
	// both, a node waits to be added through the admin API of a member.
	// A node with raft state ignores Bootstrap and Join: it rejoins its
	// cluster.
	Bootstrap bool
	// TLS secures the raft transport and the internal gRPC server and
	// client with mutual TLS.
	TLS ClusterTLSConfig
	// SecretFile holds the cluster's shared secret (--cluster.secret-file),
	// the same on every node: raft connections prove it both ways and
	// internal gRPC calls carry a token derived from it. A node listens
	// beyond loopback only with it or with TLS.
	SecretFile string

	// Raft's timeouts: zero takes the cluster package's defaults, which
	// suit a LAN (a new leader within about 1-2.5 s of losing the old
	// one). They have no flags; tests shorten them.
	ApplyTimeout       time.Duration
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	UnreachableAfter   time.Duration
}

// RateLimitConfig holds the default ingestion rate limits of every tenant,
// cluster-wide: the nodes of a cluster together admit them, not each node.
type RateLimitConfig struct {
	// IngestionRateSpans is the spans per second a tenant may send
	// (--limits.ingestion-rate-spans); 0 means no limit.
	IngestionRateSpans float64
	// IngestionBurstSpans is the spans a tenant that has been quiet may
	// send at once (--limits.ingestion-burst-spans); 0 means one second of
	// IngestionRateSpans. A request with more spans is refused as too
	// large.
	IngestionBurstSpans int64
	// IngestionRateBytes is the request bytes per second (after
	// decompression) a tenant may send (--limits.ingestion-rate-bytes), with
	// a burst of one second of it; 0 means no limit.
	IngestionRateBytes float64
	// ExchangeInterval is how often the nodes exchange each tenant's demand
	// with its owner, which splits the limit among them
	// (--limits.exchange-interval). Every node should use the same.
	ExchangeInterval time.Duration
}

func (c RateLimitConfig) validate() error {
	var errs []error
	rate := func(flag string, v float64) {
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			errs = append(errs, fmt.Errorf("%s: %v is not a finite number >= 0 (0 means no limit)", flag, v))
		}
	}
	rate("limits.ingestion-rate-spans", c.IngestionRateSpans)
	rate("limits.ingestion-rate-bytes", c.IngestionRateBytes)
	if c.IngestionBurstSpans < 0 {
		errs = append(errs, fmt.Errorf("limits.ingestion-burst-spans: %d is negative (0 means one second of limits.ingestion-rate-spans)", c.IngestionBurstSpans))
	}
	if c.ExchangeInterval <= 0 {
		errs = append(errs, fmt.Errorf("limits.exchange-interval: must be positive, got %s", c.ExchangeInterval))
	}
	return errors.Join(errs...)
}

// ClusterTLSConfig configures mutual TLS between the nodes: all three
// files, or none.
type ClusterTLSConfig struct {
	// CertFile and KeyFile are the node's certificate, served to the
	// nodes that dial it and presented to those it dials. It must name
	// the advertised addresses (IP SANs or DNS names).
	CertFile string
	KeyFile  string
	// CAFile holds the CAs that sign every node's certificate; a peer
	// without such a certificate is refused, both ways.
	CAFile string
}

// Enabled reports whether the cluster's connections use TLS.
func (c ClusterTLSConfig) Enabled() bool {
	return c.CertFile != "" || c.KeyFile != "" || c.CAFile != ""
}

// ClusterDir holds the raft log, the snapshots and the node's stored ID.
func (c Config) ClusterDir() string { return filepath.Join(c.Storage.Dir, "cluster") }

// multitenant tells whether requests name their tenant: with
// authentication on, the middleware sets X-Scope-OrgID from the token for
// every component behind it.
func (c Config) multitenant() bool { return c.MultitenancyEnabled || c.Auth.Enabled }

// windowRecOptions are the recorder's options, stepping at the flush
// interval.
func (c Config) windowRecOptions() windowrec.Options {
	o := c.WindowQuantiles
	o.Interval = c.FlushInterval
	if o.MaxCatchUp < o.Interval {
		o.MaxCatchUp = o.Interval
	}
	return o
}

// RulesDir keeps the rule groups set through the API.
func (c Config) RulesDir() string { return filepath.Join(c.Storage.Dir, "rules") }

// RawDir is where the raw tier keeps its tenants.
func (c Config) RawDir() string { return filepath.Join(c.Storage.Dir, "raw") }

// MinFlushInterval is the shortest flush interval: below a second the TSDB
// would hold mostly repeated values and flushes would compete with ingest.
const MinFlushInterval = time.Second

// DefaultConfig returns the embedded default: one node, data in ./data.
func DefaultConfig() Config {
	return Config{
		WebListenAddress:       ":9800",
		OTLPGRPCListenAddress:  ":4317",
		OTLPHTTPListenAddress:  ":4318",
		WebHTTP:                HTTPTimeouts{ReadHeader: 10 * time.Second, Read: 5 * time.Minute, Idle: 5 * time.Minute},
		OTLPHTTP:               HTTPTimeouts{ReadHeader: 10 * time.Second, Read: time.Minute, Idle: 2 * time.Minute},
		FlushInterval:          5 * time.Second,
		ShutdownTimeout:        30 * time.Second,
		Ingest:                 ingest.DefaultOptions(),
		Storage:                agg.DefaultOptions(),
		RawEnabled:             true,
		Raw:                    raw.DefaultOptions(),
		RawSamplingEnabled:     true,
		RawSampling:            sampling.DefaultOptions(),
		CompactInterval:        time.Minute,
		Query:                  query.DefaultOptions(),
		WindowQuantilesEnabled: true,
		WindowQuantiles:        windowrec.DefaultOptions(),
		Alerting:               alerting.DefaultOptions(),
		RateLimits:             RateLimitConfig{ExchangeInterval: time.Second},
		// Loopback: a cluster of one needs no other host to reach it, and
		// a listener other hosts reach needs authentication.
		Cluster: ClusterConfig{
			RaftAddress: "127.0.0.1:" + cluster.DefaultRaftPort,
			GRPCAddress: "127.0.0.1:" + DefaultClusterGRPCPort,
			Bootstrap:   true,
		},
	}
}

// DefaultClusterGRPCPort is the internal gRPC server's port.
const DefaultClusterGRPCPort = "9802"

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	addr := func(field, v string) {
		if _, _, err := net.SplitHostPort(v); err != nil {
			add(fmt.Errorf("%s: %q is not host:port: %w", field, v, err))
		}
	}
	addr("web.listen-address", c.WebListenAddress)
	addr("otlp.grpc.listen-address", c.OTLPGRPCListenAddress)
	addr("otlp.http.listen-address", c.OTLPHTTPListenAddress)
	add(c.WebHTTP.validate("web"))
	add(c.OTLPHTTP.validate("otlp.http"))
	if c.WebHTTP.Read <= c.Query.Timeout {
		add(fmt.Errorf("web.read-timeout: %s must exceed query.timeout (%s): it ends the request's context", c.WebHTTP.Read, c.Query.Timeout))
	}
	if c.FlushInterval < MinFlushInterval {
		add(fmt.Errorf("flush.interval: %s is shorter than the minimum of %s", c.FlushInterval, MinFlushInterval))
	}
	if c.ShutdownTimeout <= 0 {
		add(fmt.Errorf("shutdown-timeout: must be positive, got %s", c.ShutdownTimeout))
	}
	if c.Auth.AdminTokenFile != "" && !c.Auth.Enabled {
		add(errors.New("auth.admin-token-file: set without auth.enabled; admin tokens are checked only with authentication on"))
	}
	add(c.TLS.validate())
	add(c.Cluster.validate())
	add(c.RateLimits.validate())
	if err := c.Ingest.Validate(); err != nil {
		add(fmt.Errorf("ingest: %w", err))
	}
	if err := c.Storage.Validate(); err != nil {
		add(fmt.Errorf("storage: %w", err))
	}
	if c.RawEnabled {
		r := c.Raw
		r.Dir = c.RawDir()
		if err := r.Validate(); err != nil {
			add(fmt.Errorf("storage.raw: %w", err))
		}
		if c.CompactInterval <= 0 {
			add(fmt.Errorf("storage.raw.compact-interval: must be positive, got %s", c.CompactInterval))
		}
		if c.RawSamplingEnabled {
			if err := c.RawSampling.Validate(); err != nil {
				add(fmt.Errorf("storage.raw.sampling: %w", err))
			}
			if c.RawSampling.MaxLevel > raw.MaxSamplingLevel {
				add(fmt.Errorf("storage.raw.sampling: MaxLevel %d above the raw tier's %d", c.RawSampling.MaxLevel, raw.MaxSamplingLevel))
			}
		}
	}
	if err := c.Query.Validate(); err != nil {
		add(fmt.Errorf("query: %w", err))
	}
	aopts := c.Alerting
	aopts.Dir = c.RulesDir()
	if err := aopts.Validate(); err != nil {
		add(fmt.Errorf("ruler: %w", err))
	}
	if c.RawEnabled && c.WindowQuantilesEnabled {
		if err := c.windowRecOptions().Validate(); err != nil {
			add(fmt.Errorf("window-quantiles: %w", err))
		}
	}
	return errors.Join(errs...)
}

// validate checks that the TLS settings go together; the files are read
// when the node is built.
func (c TLSConfig) validate() error {
	var errs []error
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		errs = append(errs, errors.New("tls.key-file: needed with tls.cert-file"))
	case c.CertFile == "" && c.KeyFile != "":
		errs = append(errs, errors.New("tls.cert-file: needed with tls.key-file"))
	}
	if c.ClientCAFile != "" && !c.Enabled() {
		errs = append(errs, errors.New("tls.client-ca-file: set without tls.cert-file and tls.key-file; client certificates are checked only on TLS listeners"))
	}
	if c.RequireClientCert && c.ClientCAFile == "" {
		errs = append(errs, errors.New("tls.require-client-cert: needs tls.client-ca-file, the CAs that sign the client certificates"))
	}
	return errors.Join(errs...)
}

// validate reports every problem with the cluster settings, naming the
// flag. The node ID's rule is the cluster's (raft IDs).
func (c ClusterConfig) validate() error {
	var errs []error
	if c.NodeID != "" {
		if err := validNodeID(c.NodeID); err != nil {
			errs = append(errs, fmt.Errorf("cluster.node-id: %w", err))
		}
	}
	listen := func(flag, v string) (host, port string) {
		host, port, err := net.SplitHostPort(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not host:port: %w", flag, v, err))
		}
		return host, port
	}
	advertise := func(flag, v string) {
		if v == "" {
			return
		}
		host, port, err := net.SplitHostPort(v)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %q is not host:port: %w", flag, v, err))
		case host == "" || isUnspecified(host):
			errs = append(errs, fmt.Errorf("%s: %q names no host that other nodes can dial; give this node's IP address or DNS name", flag, v))
		case port == "" || port == "0":
			errs = append(errs, fmt.Errorf("%s: %q has no port; give the port the listener is on", flag, v))
		}
	}
	raftHost, raftPort := listen("cluster.raft-address", c.RaftAddress)
	listen("cluster.grpc-address", c.GRPCAddress)
	advertise("cluster.raft-advertise-address", c.RaftAdvertiseAddress)
	advertise("cluster.grpc-advertise-address", c.GRPCAdvertiseAddress)
	if raftPort == "0" && (raftHost == "" || isUnspecified(raftHost)) && c.RaftAdvertiseAddress == "" {
		// The advertised address is fixed before the transport listens:
		// raft records it in its configuration.
		errs = append(errs, fmt.Errorf("cluster.raft-address: %q picks a port on every address, which cannot be advertised; give a port, a host (127.0.0.1:0 in tests), or cluster.raft-advertise-address", c.RaftAddress))
	}
	for _, j := range c.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			errs = append(errs, fmt.Errorf("cluster.join: %q is not host:port (a member's cluster.grpc-address): %w", j, err))
		}
	}
	// A listener on loopback serves the nodes of this host only: refuse
	// settings that expect nodes elsewhere to reach it.
	for _, l := range []struct{ flag, listen, advFlag, advertise string }{
		{"cluster.raft-address", c.RaftAddress, "cluster.raft-advertise-address", c.RaftAdvertiseAddress},
		{"cluster.grpc-address", c.GRPCAddress, "cluster.grpc-advertise-address", c.GRPCAdvertiseAddress},
	} {
		host, _, err := net.SplitHostPort(l.listen)
		if err != nil || !IsLoopbackHost(host) {
			continue
		}
		fix := "set --cluster.raft-address and --cluster.grpc-address to addresses the other nodes reach (such as :9801 and :9802), with --cluster.secret-file or --cluster.tls.*"
		if ah, _, err := net.SplitHostPort(l.advertise); err == nil && !IsLoopbackHost(ah) {
			errs = append(errs, fmt.Errorf("%s: %q is on loopback, but %s %q expects other hosts to reach it; %s", l.flag, l.listen, l.advFlag, l.advertise, fix))
			continue
		}
		for _, j := range c.Join {
			if jh, _, err := net.SplitHostPort(j); err == nil && !IsLoopbackHost(jh) {
				errs = append(errs, fmt.Errorf("%s: %q is on loopback, which the member to join (cluster.join %s) on another host cannot reach; %s", l.flag, l.listen, j, fix))
				break
			}
		}
	}
	if c.Bootstrap && len(c.Join) > 0 {
		errs = append(errs, errors.New("cluster.bootstrap: set together with cluster.join; bootstrap the first node only, and let the others join it"))
	}
	for _, l := range []struct{ flag, v string }{{"cluster.raft-address", c.RaftAddress}, {"cluster.grpc-address", c.GRPCAddress}} {
		if err := c.checkAuthenticated(l.flag, l.v); err != nil {
			errs = append(errs, err)
		}
	}
	t := c.TLS
	if t.Enabled() {
		for _, f := range []struct{ flag, v string }{
			{"cluster.tls.cert-file", t.CertFile}, {"cluster.tls.key-file", t.KeyFile}, {"cluster.tls.ca-file", t.CAFile},
		} {
			if f.v == "" {
				errs = append(errs, fmt.Errorf("%s: needed with the other cluster.tls settings; cluster TLS is mutual and takes all three files", f.flag))
			}
		}
	}
	return errors.Join(errs...)
}

// Authenticated reports whether the nodes authenticate each other: with
// cluster TLS or a cluster secret.
func (c ClusterConfig) Authenticated() bool { return c.TLS.Enabled() || c.SecretFile != "" }

// checkAuthenticated refuses a cluster listener that other hosts can reach
// while nothing authenticates the nodes: whoever reaches it could change
// the tenants, their tokens and the members.
func (c ClusterConfig) checkAuthenticated(flag, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || c.Authenticated() || IsLoopbackHost(host) {
		return nil
	}
	return fmt.Errorf("%s: %q is reachable from other hosts, and nothing authenticates the nodes that connect to it: whoever reaches it could change tenants, tokens and members. "+
		"Set --cluster.secret-file (a file with the same secret on every node, e.g. from openssl rand -hex 32), "+
		"or --cluster.tls.cert-file, --cluster.tls.key-file and --cluster.tls.ca-file (mutual TLS); "+
		"or, for a single node, listen on 127.0.0.1", flag, addr)
}

// IsLoopbackHost tells whether a listen address's host reaches this host
// only: a loopback IP or "localhost". An empty host, an unspecified
// address (0.0.0.0, ::) or any other name listens beyond it.
func IsLoopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// validNodeID checks an ID against the cluster's rule for member IDs.
func validNodeID(id string) error {
	if len(id) == 0 || len(id) > maxNodeIDBytes {
		return fmt.Errorf("%q: use 1 to %d characters", id, maxNodeIDBytes)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_') {
			return fmt.Errorf("%q: use only A-Z, a-z, 0-9, '.', '-' and '_'", id)
		}
	}
	return nil
}

// maxNodeIDBytes is the cluster's bound on a member ID.
const maxNodeIDBytes = 128

func isUnspecified(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}
