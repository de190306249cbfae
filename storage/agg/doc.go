// Package agg owns the aggregate tier: span metrics accumulated in memory per
// tenant, made durable by a write-ahead log of accepted samples, and flushed
// every flush interval into one Prometheus TSDB per tenant as counters,
// classic and native histograms, and exemplars.
package agg
