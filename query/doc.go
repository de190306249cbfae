// Package query owns hopwatch's read side: the Prometheus-compatible HTTP
// API (PromQL through the Prometheus engine, series, labels, metadata,
// exemplars), scoped to the tenant of each request. It never writes data.
package query
