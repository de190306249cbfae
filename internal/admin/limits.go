package admin

import (
	"context"
	"log/slog"
	"maps"
	"math"
	"slices"

	"github.com/hopwatch/hopwatch/cluster"
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

// LimitsTarget takes every tenant's limit overrides at once; *agg.Store
// implements it.
type LimitsTarget interface {
	SetTenantLimits(map[string]agg.TenantLimits) error
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
// Enforced today: max_series_per_tenant (storage/agg refuses new series
// past it). The ingestion rate limits are stored and validated by the
// cluster, for the rate limiter to read.
func ApplyLimits(ctx context.Context, src Watcher, target LimitsTarget, logger *slog.Logger) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "admin")
	changed, stop := src.Watch()
	defer stop()
	var applied map[string]agg.TenantLimits
	apply := func() {
		s := src.State()
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
		for _, id := range slices.Sorted(maps.Keys(next)) {
			if old, ok := applied[id]; !ok || old != next[id] {
				logger.Info("tenant limits applied", "tenant", id, "max_series_per_tenant", next[id].MaxSeries, "index", s.Index())
			}
		}
		for _, id := range slices.Sorted(maps.Keys(applied)) {
			if _, ok := next[id]; !ok {
				logger.Info("tenant limits back to the defaults", "tenant", id, "index", s.Index())
			}
		}
		applied = next
	}
	apply()
	for {
		select {
		case <-ctx.Done():
			return
		case <-changed:
			apply()
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
