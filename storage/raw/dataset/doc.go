// Package dataset generates the deterministic latency datasets the raw
// tier is measured on (D1-D4), and states the entropy bound of each.
package dataset
