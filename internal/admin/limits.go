package admin

import (
	"context"
	"log/slog"
	"maps"
	"math"
	"slices"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/ratelimit"
	"github.com/hopwatch/hopwatch/storage/agg"
)

// Watcher is the replicated tenant metadata ApplyLimits follows;
// *cluster.Node implements it.
type Watcher interface {
	State() *cluster.State
	// Watch returns a channel that receives after every applied change,
	// and a function that ends the watch.
	Watch() (<-chan struct{}, func())
}

var _ Watcher = (*cluster.Node)(nil)

// LimitsTarget takes every tenant's limit overrides at once, and the
// cluster's default series limit; *agg.Store implements it.
type LimitsTarget interface {
	SetTenantLimits(map[string]agg.TenantLimits) error
	SetDefaultMaxSeries(int) error
}

var _ LimitsTarget = (*agg.Store)(nil)

// ApplyLimits keeps target's per-tenant limits equal to the tenants' limit
// overrides in src: it applies them at once, then again after every change
// applied on this node (the cluster notifies on apply, so an override is in
// force within milliseconds of its commit reaching this node), until ctx
// ends. A tenant without an override, or deleted, goes back to the flag's
// value. It logs each tenant whose limits change. The caller runs it in a
// goroutine it owns and waits for it after cancelling ctx.
//
// It applies max_series_per_tenant (storage/agg refuses new series past
// it), the tenants' overrides and the cluster's default alike, so every
// node enforces one value; ApplyRateLimits applies the ingestion rate
// limits.
func ApplyLimits(ctx context.Context, src Watcher, target LimitsTarget, logger *slog.Logger) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "admin")
	var applied map[string]agg.TenantLimits
	appliedDefault := -1
	follow(ctx, src, func(s *cluster.State) {
		if d, set := s.DefaultLimits(); set && int(d.MaxSeriesPerTenant) != appliedDefault {
			if err := target.SetDefaultMaxSeries(int(d.MaxSeriesPerTenant)); err != nil {
				logger.Error("the cluster's default series limit is refused by storage", "index", s.Index(), "err", err)
			} else {
				logger.Info("the cluster's default series limit applied", "max_series_per_tenant", d.MaxSeriesPerTenant, "index", s.Index())
			}
			appliedDefault = int(d.MaxSeriesPerTenant)
		}
		next := overrides(s)
		if applied != nil && maps.Equal(applied, next) {
			return
		}
		if err := target.SetTenantLimits(next); err != nil {
			// The cluster validates limits before they are committed, so
			// this is a mismatch between the two: the tenants named keep the
			// flags' limits.
			logger.Error("tenant limits refused by storage", "index", s.Index(), "err", err)
		}
		logChanges(logger, "tenant limits", s.Index(), applied, next, func(l agg.TenantLimits) []any {
			return []any{"max_series_per_tenant", l.MaxSeries}
		})
		applied = next
	})
}

// follow calls apply with the cluster state at once, then after every
// change applied on this node, until ctx ends.
func follow(ctx context.Context, src Watcher, apply func(*cluster.State)) {
	changed, stop := src.Watch()
	defer stop()
	apply(src.State())
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			apply(src.State())
		}
	}
}

// logChanges logs each tenant whose overrides differ between applied and
// next: "<what> applied" with attrs, or "<what> back to the defaults".
func logChanges[L comparable](logger *slog.Logger, what string, index uint64, applied, next map[string]L, attrs func(L) []any) {
	for _, id := range slices.Sorted(maps.Keys(next)) {
		if old, ok := applied[id]; !ok || old != next[id] {
			logger.Info(what+" applied", append(append([]any{"tenant", id}, attrs(next[id])...), "index", index)...)
		}
	}
	for _, id := range slices.Sorted(maps.Keys(applied)) {
		if _, ok := next[id]; !ok {
			logger.Info(what+" back to the defaults", "tenant", id, "index", index)
		}
	}
}

// overrides returns the enforced limit overrides of every tenant that has
// one.
func overrides(s *cluster.State) map[string]agg.TenantLimits {
	out := map[string]agg.TenantLimits{}
	for _, t := range s.Tenants() {
		l := agg.TenantLimits{MaxSeries: int(min(t.Limits.MaxSeriesPerTenant, math.MaxInt))}
		if l != (agg.TenantLimits{}) {
			out[t.ID] = l
		}
	}
	return out
}

// RateLimitsTarget takes every tenant's overrides of one rate limit at
// once; *ratelimit.Limiter implements it.
type RateLimitsTarget interface {
	SetTenantLimits(map[string]ratelimit.Limit) error
}

var _ RateLimitsTarget = (*ratelimit.Limiter)(nil)

// ApplyRateLimits keeps the spans and bytes limiters' per-tenant limits
// equal to the tenants' ingestion rate overrides in src, as ApplyLimits
// does for storage: at once, then after every change applied on this node,
// until ctx ends. A zero field keeps the flag's value. There is no byte
// burst override: the bytes limit's burst is one second of its rate. The
// caller runs it in a goroutine it owns and waits for it after cancelling
// ctx.
func ApplyRateLimits(ctx context.Context, src Watcher, spans, bytes RateLimitsTarget, logger *slog.Logger) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "admin")
	var applied map[string]cluster.Limits
	follow(ctx, src, func(s *cluster.State) {
		next := rateOverrides(s)
		if applied != nil && maps.Equal(applied, next) {
			return
		}
		sp, by := map[string]ratelimit.Limit{}, map[string]ratelimit.Limit{}
		for id, l := range next {
			if l := (ratelimit.Limit{Rate: l.IngestionRateSpans, Burst: l.IngestionBurstSpans}); l != (ratelimit.Limit{}) {
				sp[id] = l
			}
			if l.IngestionRateBytes != 0 {
				by[id] = ratelimit.Limit{Rate: l.IngestionRateBytes}
			}
		}
		// The cluster validates limits before they are committed, so a
		// refusal is a mismatch between the two: the tenants keep the
		// flags' limits.
		if err := spans.SetTenantLimits(sp); err != nil {
			logger.Error("tenant span rate limits refused by the limiter", "index", s.Index(), "err", err)
		}
		if err := bytes.SetTenantLimits(by); err != nil {
			logger.Error("tenant byte rate limits refused by the limiter", "index", s.Index(), "err", err)
		}
		logChanges(logger, "tenant rate limits", s.Index(), applied, next, func(l cluster.Limits) []any {
			return []any{"ingestion_rate_spans", l.IngestionRateSpans, "ingestion_burst_spans", l.IngestionBurstSpans, "ingestion_rate_bytes", l.IngestionRateBytes}
		})
		applied = next
	})
}

// rateOverrides returns the ingestion rate overrides of every tenant that
// has one, the other limits zeroed.
func rateOverrides(s *cluster.State) map[string]cluster.Limits {
	out := map[string]cluster.Limits{}
	for _, t := range s.Tenants() {
		l := cluster.Limits{IngestionRateSpans: t.Limits.IngestionRateSpans, IngestionBurstSpans: t.Limits.IngestionBurstSpans, IngestionRateBytes: t.Limits.IngestionRateBytes}
		if l != (cluster.Limits{}) {
			out[t.ID] = l
		}
	}
	return out
}
