package server

import (
	"github.com/hopwatch/hopwatch/ratelimit"
	"github.com/hopwatch/hopwatch/storage/raw"
)

// PinRawSampling fixes the raw tier's sampling level of a node built with
// sampling on.
func PinRawSampling(s *Server, level int) { s.sampler.Pin(level) }

// RawStore returns the raw tier of a ready node.
func RawStore(s *Server) *raw.Store { return s.raw }

// TenantMaxSeries returns the series limit in force for a tenant of a ready
// node.
func TenantMaxSeries(s *Server, tenant string) int { return s.store.Load().MaxSeries(tenant) }

// TenantRateLimit returns the cluster-wide spans limit in force for a
// tenant.
func TenantRateLimit(s *Server, tenant string) ratelimit.Limit { return s.spansLimiter.Limit(tenant) }

// TenantBytesLimit returns the cluster-wide bytes limit in force for a
// tenant.
func TenantBytesLimit(s *Server, tenant string) ratelimit.Limit { return s.bytesLimiter.Limit(tenant) }

// TenantSpansAllow takes n spans from a tenant's spans limiter and reports
// whether they were admitted.
func TenantSpansAllow(s *Server, tenant string, n int64) bool {
	return s.spansLimiter.AllowN(tenant, n).Allowed
}
