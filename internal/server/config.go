package server

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/hopwatch/hopwatch/alerting"
	"github.com/hopwatch/hopwatch/ingest"
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
	MultitenancyEnabled bool

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
