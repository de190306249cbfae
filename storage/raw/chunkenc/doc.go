// Package chunkenc encodes the columns of raw-tier chunks: timestamps and
// latencies in nanoseconds, losslessly, each with the cheapest of several
// encodings chosen per chunk and recorded in the column header. The format
// is specified in docs/storage-format.md.
package chunkenc
