package server

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/hopwatch/hopwatch/alerting"
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
	// Tokens finds the tenant of a bearer token with Auth.Enabled: the
	// tenant metadata store, which keeps token hashes only. It is not a
	// setting but a dependency, given by whoever builds the node; nil with
	// Auth.Enabled is refused.
	Tokens auth.Tokens

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

	// ConfigYAML is the effective configuration as served by /api/v1/status/config.
	ConfigYAML string
	// Flags are the command-line flags as served by /api/v1/status/flags.
	Flags map[string]string
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
	}
}

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
	if c.FlushInterval < MinFlushInterval {
		add(fmt.Errorf("flush.interval: %s is shorter than the minimum of %s", c.FlushInterval, MinFlushInterval))
	}
	if c.ShutdownTimeout <= 0 {
		add(fmt.Errorf("shutdown-timeout: must be positive, got %s", c.ShutdownTimeout))
	}
	if c.Auth.Enabled && c.Tokens == nil {
		add(errors.New("auth.enabled: there is no store of tenants' tokens to check bearer tokens against: " +
			"hopwatch keeps them in its cluster metadata, which this node does not serve yet; " +
			"until it does, run with authentication off behind a gateway that authenticates and sets X-Scope-OrgID (--auth.multitenancy-enabled)"))
	}
	if c.Auth.AdminTokenFile != "" && !c.Auth.Enabled {
		add(errors.New("auth.admin-token-file: set without auth.enabled; admin tokens are checked only with authentication on"))
	}
	add(c.TLS.validate())
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
