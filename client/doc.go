// Package client sends hop records to hopwatch's streaming ingest service
// (hopwatch.v1.IngestService/Stream): it batches them, bounds what it
// holds, and delivers each batch exactly once through reconnects.
//
//	c, err := client.New(opts, reg, logger)
//	checkout, err := c.Series(hopwatchv1.HopKind_HOP_KIND_STAGE,
//		"service", "checkout", "span_name", "process-order", "from_stage", "enqueue", "to_stage", "dequeue")
//	err = c.Record(ctx, client.Hop{Series: checkout, Start: t0, Duration: d, TraceID: tid})
//	err = c.Close(ctx)
//
// # Batching
//
// Record appends to the current batch, a set of columns laid out as the
// wire's HopBatch, without allocating. A batch is sent when it holds
// Options.MaxBatchRecords records (or Options.MaxBatchBytes), when
// Options.BatchInterval has passed, or on Flush and Close.
//
// # Full queue
//
// The client holds at most Options.QueueSize records that hopwatch has not
// acknowledged. When they are all taken, Record follows
// Options.FullPolicy: Block waits for room until its context ends, or
// until the context's deadline less Options.DeadlineMargin; Drop refuses
// at once. Either way a refused record is counted in
// hopwatch_client_records_dropped_total{reason="queue_full"} and Record
// returns an error wrapping ErrQueueFull. Block is the default: hopwatch
// withholds credit when it is overloaded precisely so that producers slow
// down instead of losing data. A caller on a request path that must never
// wait uses Drop, or gives Record a context with a short deadline.
//
// # Flow control
//
// hopwatch grants credit, in batches: its first message grants the initial
// credit and each later one grants more. The client never has more batches
// sent and unacknowledged than the credit granted on the stream, so a slow
// hopwatch fills the client's queue instead of its own memory.
//
// # Delivery, retries and idempotence
//
// Batches are numbered 1, 2, 3, ... for the client's lifetime and keep
// their number through every retry. The client keeps every batch until
// hopwatch answers for it:
//   - OK: delivered; records hopwatch refused one by one (rejected_records)
//     are counted as dropped with reason rejected and logged.
//   - DUPLICATE: hopwatch had applied it before the stream broke:
//     delivered. A DUPLICATE for a batch that cannot have been applied
//     (sent once, or every earlier send answered UNAVAILABLE) means another
//     client used the same writer id, or hopwatch applied a later batch
//     first; its records are counted as dropped with reason duplicate_seq.
//   - REJECTED: hopwatch will never take it; its records are dropped
//     (reason rejected) and the reason is logged.
//   - UNAVAILABLE: hopwatch could not store it now. The client stops
//     sending, waits Options.Backoff, and sends it again.
//
// When the stream fails (or answers nothing for Options.AckTimeout while
// batches are in flight), the client reconnects after Options.Backoff
// (exponential, with jitter, capped) and sends every unacknowledged batch
// again, in order and with its number. hopwatch deduplicates by writer and
// number, so a batch applied before the failure is not applied twice. This
// is why Options.Writer must be unique to one Client: a new Client numbers
// from 1 again.
//
// # Deadlines
//
// Every method that waits (Record under Block, Flush, Close) waits until
// its context's deadline less Options.DeadlineMargin, so the caller has its
// answer before its own deadline and time to act on it.
//
// # Authentication and TLS
//
// For a hopwatch running with --auth.enabled, Options.Token is sent as
// "authorization: Bearer <token>" on every stream; the token decides the
// tenant. A refused stream (Unauthenticated, PermissionDenied) is retried
// like any failed stream, keeping its records. Options.TLS connects over
// TLS, with a client certificate where hopwatch requires one.
//
// # Metrics
//
// The client's metrics, all prefixed hopwatch_client_, are registered on
// the registerer given to New: records_sent_total,
// records_dropped_total{reason}, batches_sent_total, batches_retried_total,
// reconnects_total, queue_length, queue_capacity, inflight_batches, credit
// and send_duration_seconds. Each client needs its own registerer (or
// prometheus.WrapRegistererWith), since the names are the same.
//
// # Goroutines
//
// New starts one goroutine, which owns the stream (with one goroutine
// sending and one receiving on it). Close ends them all; a Client that is
// not closed keeps them, and its connection, running.
package client
