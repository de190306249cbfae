// Package raw owns the raw tier: every accepted latency sample kept exactly
// (nanosecond timestamp and latency, trace id where selected), or under
// overload those of a consistent sample of traces with integer weights,
// appended WAL-first into an in-memory head of per-series columnar chunks
// (storage/raw/chunkenc) and read back by label matchers and time range.
package raw
