// Package server wires one hopwatch node together: listeners, ingest,
// storage, the query API and the flush loop, with a graceful shutdown.
package server
