// Package bench holds hopwatch's whole-system benchmarks, the ones
// `hopwatch bench ...` runs and docs/BENCHMARKS.md records.
package bench
