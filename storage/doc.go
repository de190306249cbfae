// Package storage holds hopwatch's two tiers: agg, the aggregate tier in the
// Prometheus TSDB, and (to come) raw, the lossless columnar latency store.
package storage
