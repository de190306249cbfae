// Package nativehist accumulates observations into Prometheus native
// (exponential) histograms: the one sketch format hopwatch uses for streaming
// aggregates, chunk summaries and the aggregate tier.
package nativehist
