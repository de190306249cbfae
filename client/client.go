package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

// Errors returned by the client.
var (
	// ErrClosed is returned by Record, Flush and Close once Close was called.
	ErrClosed = errors.New("hopwatch/client: client closed")
	// ErrQueueFull is returned by Record when the queue has no room: at once
	// under Drop, at the deadline under Block (then wrapping the context's
	// error too). Raise Options.QueueSize, or find why hopwatch is slow or
	// unreachable (hopwatch_client_credit, hopwatch_client_reconnects_total).
	ErrQueueFull = errors.New("hopwatch/client: queue full")
	// ErrUnknownSeries is returned by Record for a SeriesRef this client did
	// not return.
	ErrUnknownSeries = errors.New("hopwatch/client: unknown series ref")
	// ErrInvalidHop is returned by Record for a hop hopwatch would refuse,
	// with its whole batch: one that starts before 1970, or ends after
	// 2262 (nanoseconds since 1970 overflow 64 bits), or lasts a negative
	// time.
	ErrInvalidHop = errors.New("hopwatch/client: invalid hop: Start must be after 1970, Start+Duration before 2262, and Duration not negative")
	// ErrInvalidSeries is wrapped by the errors of Series that name what is
	// wrong with the labels.
	ErrInvalidSeries = errors.New("hopwatch/client: invalid series")
	// ErrTooManySeries is returned by Series when Options.MaxSeries series
	// are registered.
	ErrTooManySeries = errors.New("hopwatch/client: too many series (Options.MaxSeries)")

	// Returned by Record under Block; made once so that refusing allocates
	// nothing.
	errQueueFullDeadline = fmt.Errorf("%w: %w", ErrQueueFull, context.DeadlineExceeded)
	errQueueFullCanceled = fmt.Errorf("%w: %w", ErrQueueFull, context.Canceled)
)

// Metadata keys of the stream.
const (
	writerKey        = "x-hopwatch-writer"
	tenantKey        = "x-scope-orgid"
	authorizationKey = "authorization"
)

// Hop is one record: a latency of a series, from Start for Duration.
type Hop struct {
	Series   SeriesRef
	Start    time.Time
	Duration time.Duration
	// TraceID is the W3C trace id of the operation, kept by hopwatch for
	// exemplars; all zero means none.
	TraceID [16]byte
	// Failed marks a failed operation.
	Failed bool
}

// Client sends hop records to hopwatch over one stream. It is safe for
// concurrent use. Record, Series and SetWatermark take one mutex for a few
// tens of nanoseconds; one goroutine, started by New and stopped by Close,
// owns the stream.
type Client struct {
	opts     Options
	logger   *slog.Logger
	metrics  *clientMetrics
	conn     *grpc.ClientConn
	ingest   hopwatchv1.IngestServiceClient
	md       metadata.MD
	nbatches int // the most batches that exist at once

	// kick tells the sender there is work: a sealed batch, a flush, Close.
	kick chan struct{}
	// runCtx ends the sender and its stream at once; Close cancels it when
	// its deadline passes.
	runCtx    context.Context
	cancelRun context.CancelFunc
	done      chan struct{} // closed when the sender has returned

	mu sync.Mutex
	// All below are guarded by mu.
	closing bool // Close was called: Record and Flush refuse
	closed  bool // Close has given up what was left
	opening bool // the sender is opening a stream
	series  []series
	byKey   map[string]SeriesRef
	// slots maps a SeriesRef to its index in the current batch's series
	// table, valid when its gen is the current batch's.
	slots     []slot
	cur       *batch   // being filled; nil when there was no free batch
	ready     []*batch // sealed full batches, in seq order, not yet sent
	free      []*batch
	allocated int
	gen       uint64
	nextSeq   uint64
	held      int // records in cur, ready and with the sender
	// unackedLow is the lowest seq the sender holds unresolved, 0 if none.
	unackedLow uint64
	flushDue   bool // Flush or Close wants cur cut now
	cutDue     bool // BatchInterval passed with cur not empty
	// watermark is the highest position given to SetWatermark, sealed the
	// one last attached to a batch (Unix ns).
	watermark, sealed int64
	// changed is closed, and replaced, when room is made or a batch is
	// resolved, if someone waits (changedWanted).
	changed       chan struct{}
	changedWanted bool
}

type slot struct {
	gen uint64
	idx uint32
}

// New returns a client of the hopwatch at opts.Target and starts its
// sender, which opens the stream in the background: New does not wait for
// hopwatch, and a hopwatch that is down is retried with opts.Backoff. reg,
// if not nil, receives the client's metrics; a nil logger discards.
func New(opts Options, reg prometheus.Registerer, logger *slog.Logger) (*Client, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/client: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Client{
		opts:     opts,
		logger:   logger.With("writer", opts.Writer),
		nbatches: opts.batches(),
		md:       metadata.Pairs(writerKey, opts.Writer),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
		byKey:    map[string]SeriesRef{},
		nextSeq:  1,
		changed:  make(chan struct{}),
	}
	if opts.Tenant != "" {
		c.md.Set(tenantKey, opts.Tenant)
	}
	if opts.Token != "" {
		c.md.Set(authorizationKey, "Bearer "+opts.Token)
	}
	c.ready = make([]*batch, 0, c.nbatches)
	c.free = make([]*batch, 0, c.nbatches)

	// gRPC reconnects the channel on its own schedule, by default up to
	// two minutes apart; make it follow the client's backoff so that a
	// hopwatch that comes back is found as soon as the client asks.
	dial := []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff: backoff.Config{
			BaseDelay:  opts.Backoff.Initial,
			Multiplier: opts.Backoff.Multiplier,
			Jitter:     opts.Backoff.Jitter,
			MaxDelay:   opts.Backoff.Max,
		},
		MinConnectTimeout: 20 * time.Second, // gRPC's default
	})}
	if opts.TLS != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(opts.TLS)))
	}
	dial = append(dial, opts.DialOptions...)
	conn, err := grpc.NewClient(opts.Target, dial...)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/client: %w", err)
	}
	m, err := newClientMetrics(reg, c.queueLength)
	if err != nil {
		return nil, errors.Join(err, conn.Close())
	}
	m.queueCapacity.Set(float64(c.nbatches * opts.MaxBatchRecords))
	c.conn, c.metrics = conn, m
	c.ingest = hopwatchv1.NewIngestServiceClient(c.conn)
	c.runCtx, c.cancelRun = context.WithCancel(context.Background())
	s := newSender(c)
	go s.run()
	return c, nil
}

// Series registers a series and returns its ref, the same one for the same
// kind and labels. labels are name-value pairs; which names a kind takes is
// documented on hopwatchv1.HopKind. Call it once per series, not per
// record: series are kept for the client's lifetime.
func (c *Client) Series(kind hopwatchv1.HopKind, labels ...string) (SeriesRef, error) {
	s, key, err := newSeries(kind, labels, c.opts.SpanDimensions)
	if err != nil {
		return 0, err
	}
	if batchOverhead+s.bytes+maxRecordBytes > c.opts.MaxBatchBytes {
		return 0, fmt.Errorf("%w: %s: %d bytes encoded, too large for a batch of MaxBatchBytes %d", ErrInvalidSeries, kind, s.bytes, c.opts.MaxBatchBytes)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if ref, ok := c.byKey[key]; ok {
		return ref, nil
	}
	if len(c.series) >= c.opts.MaxSeries {
		return 0, ErrTooManySeries
	}
	ref := SeriesRef(len(c.series))
	c.series = append(c.series, s)
	c.slots = append(c.slots, slot{})
	c.byKey[key] = ref
	return ref, nil
}

// Record queues one hop. It returns once the hop is queued, not sent: use
// Flush to wait for delivery. When the queue is full it waits or refuses as
// Options.FullPolicy says; ctx matters only then. It allocates nothing.
func (c *Client) Record(ctx context.Context, h Hop) error {
	// Unix() first: UnixNano is undefined outside 1678 to 2262.
	if sec := h.Start.Unix(); sec < 0 || sec >= math.MaxInt64/int64(time.Second) || h.Duration < 0 {
		return ErrInvalidHop
	}
	start := h.Start.UnixNano()
	if start <= 0 || int64(h.Duration) > math.MaxInt64-start {
		return ErrInvalidHop
	}
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		c.metrics.droppedClosed.Inc()
		return ErrClosed
	}
	if int(h.Series) >= len(c.series) {
		c.mu.Unlock()
		return ErrUnknownSeries
	}
	kick := false
	for {
		if c.cur == nil && !c.takeCurLocked() {
			if err := c.awaitRoomLocked(ctx); err != nil {
				c.mu.Unlock()
				c.wake(kick)
				return err
			}
		}
		b := c.cur
		sl := &c.slots[h.Series]
		if sl.gen == b.gen {
			break
		}
		s := &c.series[h.Series]
		if b.n > 0 && b.bytes+s.bytes+maxRecordBytes > c.opts.MaxBatchBytes {
			// The series would take the batch past MaxBatchBytes: send
			// what it holds and start the next one.
			c.ready = append(c.ready, c.sealLocked())
			kick = true
			continue
		}
		*sl = slot{gen: b.gen, idx: uint32(len(b.series))}
		b.series = append(b.series, s.msg)
		b.bytes += s.bytes
		break
	}
	b := c.cur
	b.add(c.slots[h.Series].idx, start, uint64(h.Duration), &h.TraceID, h.Failed)
	c.held++
	if b.n >= c.opts.MaxBatchRecords || b.bytes+maxRecordBytes > c.opts.MaxBatchBytes {
		c.ready = append(c.ready, c.sealLocked())
		kick = true
	}
	c.mu.Unlock()
	c.wake(kick)
	return nil
}

// SetWatermark promises that no record this client sends later ends before
// t. The position goes with the next batch cut; with no record to send, a
// batch without records carries it within BatchInterval (a heartbeat),
// which keeps this writer in its tenant's watermark while it has nothing
// to say. A t behind an earlier one is ignored.
func (c *Client) SetWatermark(t time.Time) {
	ns := t.UnixNano()
	c.mu.Lock()
	if ns > c.watermark && !c.closing {
		c.watermark = ns
	}
	c.mu.Unlock()
}

// Flush sends what is queued without waiting for BatchInterval, and waits
// until every record recorded before the call is acknowledged or dropped
// (refused by hopwatch: see hopwatch_client_records_dropped_total), or
// until ctx ends or its deadline less DeadlineMargin passes.
func (c *Client) Flush(ctx context.Context) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return ErrClosed
	}
	target := c.flushLocked()
	c.mu.Unlock()
	c.wake(true)
	return c.await(ctx, target)
}

// Close flushes, then ends the stream (it half-closes it and waits for
// hopwatch to end it) and the connection. Records still queued when ctx
// ends, or its deadline less DeadlineMargin passes, are dropped, counted
// with reason closed, and reported in the error. Record and Flush return
// ErrClosed once Close is called; so does a second Close.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return ErrClosed
	}
	c.closing = true
	c.flushLocked()
	c.broadcastLocked() // Records waiting for room give up
	// With nothing to deliver there is no stream to end gracefully; do not
	// wait for one to open (up to a connect timeout).
	idle := c.opening && c.held == 0 && len(c.ready) == 0 && c.unackedLow == 0 && !c.cuttableLocked()
	c.mu.Unlock()
	if idle {
		c.cancelRun()
	}
	c.wake(true)

	dctx, cancel := c.withMargin(ctx)
	defer cancel()
	var err error
	select {
	case <-c.done:
	case <-dctx.Done():
		err = dctx.Err()
	}
	c.cancelRun()
	<-c.done

	c.mu.Lock()
	lost := c.held
	c.closed = true
	c.held, c.cur, c.ready, c.unackedLow = 0, nil, nil, 0
	c.broadcastLocked()
	c.mu.Unlock()
	c.metrics.droppedClosed.Add(float64(lost))
	c.metrics.inflight.Set(0)
	c.metrics.credit.Set(0)
	cerr := c.conn.Close()
	if lost > 0 {
		if err == nil {
			err = errors.New("stream ended")
		}
		return fmt.Errorf("hopwatch/client: closed with %d records not acknowledged: %w", lost, err)
	}
	if cerr != nil {
		return fmt.Errorf("hopwatch/client: closing connection: %w", cerr)
	}
	return nil
}

// queueLength is read by the queue length gauge.
func (c *Client) queueLength() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return float64(c.held)
}

// withMargin returns ctx with its deadline, if any, DeadlineMargin earlier.
func (c *Client) withMargin(ctx context.Context) (context.Context, context.CancelFunc) {
	if d, ok := ctx.Deadline(); ok {
		return context.WithDeadline(ctx, d.Add(-c.opts.DeadlineMargin))
	}
	return context.WithCancel(ctx)
}

// wake tells the sender there is work, if kick.
func (c *Client) wake(kick bool) {
	if !kick {
		return
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// takeCurLocked makes a free batch current; false if there is none and
// the queue is at its size.
func (c *Client) takeCurLocked() bool {
	var b *batch
	switch {
	case len(c.free) > 0:
		b = c.free[len(c.free)-1]
		c.free = c.free[:len(c.free)-1]
	case c.allocated < c.nbatches:
		b = newBatch(c.opts.MaxBatchRecords)
		c.allocated++
	default:
		return false
	}
	c.gen++
	b.reset(c.gen)
	c.cur = b
	return true
}

// sealLocked seals cur with the next seq; the sender takes it from there.
func (c *Client) sealLocked() *batch {
	b := c.cur
	c.cur = nil
	var wm int64
	if c.watermark > c.sealed {
		wm, c.sealed = c.watermark, c.watermark
	}
	b.seal(c.nextSeq, wm)
	c.nextSeq++
	c.flushDue, c.cutDue = false, false
	return b
}

// cuttableLocked tells whether a cut would send something: records, or a
// watermark not yet sent.
func (c *Client) cuttableLocked() bool {
	return c.cur != nil && c.cur.n > 0 || c.watermark > c.sealed
}

// flushLocked asks the sender to cut cur now and returns the seq up to
// which everything recorded so far will have been sealed.
func (c *Client) flushLocked() uint64 {
	if c.cuttableLocked() {
		c.flushDue = true
		return c.nextSeq
	}
	return c.nextSeq - 1
}

// lowestUnresolvedLocked returns the lowest seq not yet acknowledged or
// dropped (or to be given to the next batch sealed).
func (c *Client) lowestUnresolvedLocked() uint64 {
	switch {
	case c.unackedLow != 0:
		return c.unackedLow
	case len(c.ready) > 0:
		return c.ready[0].seq
	}
	return c.nextSeq
}

// changedLocked returns a channel closed at the next broadcastLocked.
func (c *Client) changedLocked() <-chan struct{} {
	c.changedWanted = true
	return c.changed
}

// broadcastLocked wakes whoever waits on changedLocked. It allocates only
// when someone waits.
func (c *Client) broadcastLocked() {
	if c.changedWanted {
		close(c.changed)
		c.changed = make(chan struct{})
		c.changedWanted = false
	}
}

// awaitRoomLocked waits, under Block, until a batch is free to be made
// current. It is called with c.mu held and returns with it held: nil with
// c.cur set, or the error Record returns, the drop counted.
func (c *Client) awaitRoomLocked(ctx context.Context) error {
	if c.opts.FullPolicy == Drop {
		c.metrics.droppedQueueFull.Inc()
		return ErrQueueFull
	}
	dctx, cancel := c.withMargin(ctx)
	defer cancel()
	for {
		ch := c.changedLocked()
		c.mu.Unlock()
		var done bool
		select {
		case <-ch:
		case <-dctx.Done():
			done = true
		}
		c.mu.Lock()
		if c.closing {
			c.metrics.droppedClosed.Inc()
			return ErrClosed
		}
		if c.cur != nil || c.takeCurLocked() {
			return nil
		}
		if done {
			c.metrics.droppedQueueFull.Inc()
			if errors.Is(dctx.Err(), context.Canceled) {
				return errQueueFullCanceled
			}
			return errQueueFullDeadline
		}
	}
}

// await waits until every batch up to seq target is resolved.
func (c *Client) await(ctx context.Context, target uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lowestUnresolvedLocked() > target {
		return nil
	}
	dctx, cancel := c.withMargin(ctx)
	defer cancel()
	for c.lowestUnresolvedLocked() <= target {
		ch := c.changedLocked()
		c.mu.Unlock()
		var err error
		select {
		case <-ch:
		case <-dctx.Done():
			err = dctx.Err()
		}
		c.mu.Lock()
		if c.closed {
			return ErrClosed
		}
		if err != nil && c.lowestUnresolvedLocked() <= target {
			return fmt.Errorf("hopwatch/client: flush: %d records still queued: %w", c.held, err)
		}
	}
	return nil
}
