// Package ingest owns the OTLP receivers (gRPC and HTTP), the decoding of
// spans into latency samples and the refusal of bad input. It hands accepted
// samples to an Appender and knows nothing of how they are stored.
package ingest
