package client

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
)

var (
	errAckTimeout = errors.New("no acknowledgement within AckTimeout")
	errStreamEnd  = errors.New("stream ended by hopwatch")
)

// sender owns the stream: it sends sealed batches as credit allows, takes
// the acknowledgements, and reconnects and resends. It runs in one
// goroutine, started by New and ended by Close; the fields below are that
// goroutine's alone.
type sender struct {
	c *Client
	// unacked holds the batches taken from the client and not yet
	// resolved, in seq order: in flight, or waiting to be sent again.
	unacked []*batch
	// The current stream's generation (1, 2, ...), credit left and
	// batches in flight.
	stream   uint64
	credit   int64
	inflight int
	// paused holds sending after an UNAVAILABLE until retry fires.
	paused       bool
	retry        *time.Timer
	unavailable  int // UNAVAILABLE answers in a row
	disconnected int // failed streams since the last answered one
	rnd          *rand.Rand
	tick         *time.Ticker
	ackTimer     *time.Timer
	ackArmed     bool
	resolved     []*batch // scratch
}

func newSender(c *Client) *sender {
	s := &sender{
		c:        c,
		unacked:  make([]*batch, 0, c.nbatches),
		rnd:      rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
		retry:    time.NewTimer(time.Hour),
		ackTimer: time.NewTimer(time.Hour),
		resolved: make([]*batch, 0, c.nbatches),
	}
	s.retry.Stop()
	s.ackTimer.Stop()
	return s
}

func (s *sender) run() {
	c := s.c
	defer close(c.done)
	s.tick = time.NewTicker(c.opts.BatchInterval)
	defer s.tick.Stop()
	defer s.retry.Stop()
	defer s.ackTimer.Stop()
	for !s.finished() {
		st, err := s.open()
		if err == nil {
			err = s.serve(st)
			st.shutdown()
			if err == nil {
				return
			}
		}
		if c.runCtx.Err() != nil {
			return
		}
		c.metrics.reconnects.Inc()
		c.metrics.inflight.Set(0)
		c.metrics.credit.Set(0)
		d := c.opts.Backoff.Delay(s.disconnected, s.rnd.Float64())
		s.disconnected++
		c.logger.Warn("hopwatch stream failed, reconnecting", "err", err, "code", status.Code(err).String(),
			"backoff", d, "attempt", s.disconnected, "unacknowledged_batches", len(s.unacked))
		if !s.sleep(d) {
			return
		}
	}
}

// sleep waits d; false if the client is done meanwhile.
func (s *sender) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return true
		case <-s.c.runCtx.Done():
			return false
		case <-s.c.kick:
			if s.finished() {
				return false
			}
		}
	}
}

// finished tells whether Close was called and nothing is left to send.
func (s *sender) finished() bool {
	if len(s.unacked) > 0 {
		return false
	}
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing && c.held == 0 && len(c.ready) == 0 && !c.cuttableLocked()
}

// open opens a stream and marks every unresolved batch to be sent again on
// it, in seq order and with its seq: hopwatch answers DUPLICATE to those it
// had applied.
func (s *sender) open() (*stream, error) {
	c := s.c
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(c.runCtx, c.md))
	c.mu.Lock()
	c.opening = true
	c.mu.Unlock()
	cs, err := c.ingest.Stream(ctx)
	c.mu.Lock()
	c.opening = false
	c.mu.Unlock()
	if err != nil {
		cancel()
		return nil, err
	}
	for _, b := range s.unacked {
		if b.stream == s.stream && !b.resend {
			b.unanswered = true // in flight when the last stream ended
		}
		b.resend = true
	}
	s.stream++
	s.credit, s.inflight, s.paused, s.ackArmed = 0, 0, false, false
	s.retry.Stop()
	s.ackTimer.Stop()
	st := &stream{
		cs:     cs,
		cancel: cancel,
		sendq:  make(chan *batch, c.nbatches+1),
		notify: make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	st.wg.Add(2)
	go st.sendLoop()
	go st.recvLoop()
	return st, nil
}

// serve runs one stream until it fails (the error) or ends after Close
// (nil).
func (s *sender) serve(st *stream) error {
	c := s.c
	closeSent := false
	for {
		if !closeSent {
			s.pump(st)
			if s.finished() {
				st.enqueue(nil) // CloseSend: hopwatch ends the stream in turn
				closeSent = true
			}
		}
		switch {
		case c.opts.AckTimeout > 0 && s.inflight > 0 && !s.ackArmed:
			s.ackTimer.Reset(c.opts.AckTimeout)
			s.ackArmed = true
		case s.inflight == 0 && s.ackArmed:
			s.ackTimer.Stop()
			s.ackArmed = false
		}
		c.metrics.inflight.Set(float64(s.inflight))
		c.metrics.credit.Set(float64(max(s.credit, 0)))

		select {
		case <-st.notify:
			s.handle(st)
		case <-st.done:
			s.handle(st)
			err := st.err
			switch {
			case closeSent:
				// Everything was delivered: how hopwatch ended the stream
				// changes nothing.
				if err != io.EOF {
					c.logger.Debug("hopwatch ended the stream with an error after the client closed it", "err", err)
				}
				return nil
			case err == io.EOF:
				err = errStreamEnd
			}
			return err
		case <-s.tick.C:
			c.mu.Lock()
			if c.cuttableLocked() {
				c.cutDue = true
			}
			c.mu.Unlock()
		case <-c.kick:
		case <-s.retry.C:
			s.paused = false
		case <-s.ackTimer.C:
			return errAckTimeout
		case <-c.runCtx.Done():
			return c.runCtx.Err()
		}
	}
}

// pump sends batches while credit lasts: first those to be sent again, in
// seq order, then sealed ones, then the current batch if it is due.
func (s *sender) pump(st *stream) {
	if s.paused {
		return
	}
	for s.credit > 0 {
		b := s.nextResend()
		if b == nil {
			if b = s.take(); b == nil {
				return
			}
			s.unacked = append(s.unacked, b)
		}
		s.send(st, b)
	}
}

func (s *sender) nextResend() *batch {
	for _, b := range s.unacked {
		if b.resend {
			return b
		}
	}
	return nil
}

// take takes the next batch from the client: a sealed one, or the current
// one if BatchInterval, Flush or Close made it due.
func (s *sender) take() *batch {
	c := s.c
	c.mu.Lock()
	defer c.mu.Unlock()
	var b *batch
	switch {
	case len(c.ready) > 0:
		b = c.ready[0]
		copy(c.ready, c.ready[1:])
		c.ready[len(c.ready)-1] = nil
		c.ready = c.ready[:len(c.ready)-1]
	case (c.cutDue || c.flushDue || c.closing) && c.cuttableLocked():
		if c.cur == nil && !c.takeCurLocked() {
			return nil // a watermark to send, and no batch free to carry it
		}
		b = c.sealLocked()
	default:
		return nil
	}
	if c.unackedLow == 0 {
		c.unackedLow = b.seq
	}
	return b
}

func (s *sender) send(st *stream, b *batch) {
	m := s.c.metrics
	b.sends++
	if b.sends == 1 {
		m.batchesSent.Inc()
	} else {
		m.batchesRetried.Inc()
	}
	b.stream, b.resend, b.sentAt = s.stream, false, time.Now()
	b.queuedAt = st.enqueue(b)
	s.credit--
	s.inflight++
}

// handle takes the stream's answers: credit, and acknowledgements.
func (s *sender) handle(st *stream) {
	c, m := s.c, s.c.metrics
	rs := st.take()
	if len(rs) == 0 {
		return
	}
	s.disconnected = 0
	s.resolved = s.resolved[:0]
	var sent, rejected, duplicate int
	for _, r := range rs {
		s.credit += int64(r.credit)
		if r.seq == 0 {
			continue
		}
		i := s.find(r.seq)
		if i < 0 || s.unacked[i].stream != s.stream || s.unacked[i].resend {
			c.logger.Debug("acknowledgement of no batch in flight", "seq", r.seq, "status", r.status.String())
			continue
		}
		b := s.unacked[i]
		s.inflight--
		m.sendDuration.Observe(time.Since(b.sentAt).Seconds())
		switch r.status {
		case hopwatchv1.AckStatus_ACK_STATUS_OK:
			n := min(int(r.rejected), b.n)
			sent += b.n - n
			rejected += n
			if n > 0 {
				c.logger.Warn("hopwatch refused records", "seq", b.seq, "rejected_records", n, "records", b.n, "err", r.msg)
			}
			s.unavailable = 0
		case hopwatchv1.AckStatus_ACK_STATUS_DUPLICATE:
			switch {
			case b.unanswered:
				sent += b.n // applied on a stream that ended before answering
			case b.sends == 1:
				duplicate += b.n
				c.logger.Error("hopwatch already had this batch's seq from this writer id, and did not apply the batch: is the writer id used by another client or a previous run?",
					"seq", b.seq, "records", b.n)
			default:
				// Every earlier send was answered UNAVAILABLE, so it was
				// never applied: hopwatch applied a later seq meanwhile.
				duplicate += b.n
				c.logger.Error("hopwatch answered DUPLICATE to a batch it had not applied, having applied a later one: its records are lost",
					"seq", b.seq, "records", b.n)
			}
			s.unavailable = 0
		case hopwatchv1.AckStatus_ACK_STATUS_REJECTED:
			rejected += b.n
			c.logger.Error("hopwatch rejected a batch", "seq", b.seq, "records", b.n, "err", r.msg)
		default: // UNAVAILABLE, or a status this client does not know: send again
			b.resend = true
			if !s.paused {
				d := c.opts.Backoff.Delay(s.unavailable, s.rnd.Float64())
				s.unavailable++
				s.paused = true
				s.retry.Reset(d)
				c.logger.Warn("hopwatch could not store a batch, sending it again", "seq", b.seq, "status", r.status.String(),
					"err", r.msg, "backoff", d, "attempt", s.unavailable)
			}
			continue
		}
		s.unacked = slices.Delete(s.unacked, i, i+1)
		s.resolved = append(s.resolved, b)
	}
	if s.ackArmed {
		if s.inflight > 0 {
			s.ackTimer.Reset(c.opts.AckTimeout)
		} else {
			s.ackTimer.Stop()
			s.ackArmed = false
		}
	}
	// Counted before release, so that a Flush that returns sees them.
	m.recordsSent.Add(float64(sent))
	m.droppedRejected.Add(float64(rejected))
	m.droppedDuplicateSeq.Add(float64(duplicate))
	if len(s.resolved) > 0 {
		s.release(st, s.resolved)
		clear(s.resolved)
	}
}

func (s *sender) find(seq uint64) int {
	for i, b := range s.unacked {
		if b.seq == seq {
			return i
		}
	}
	return -1
}

// release gives resolved batches back to the client.
func (s *sender) release(st *stream, bs []*batch) {
	c := s.c
	sent := st.sent.Load() // orders the stream's reading of the batches before their reuse
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, b := range bs {
		c.held -= b.n
		if b.queuedAt <= sent {
			c.free = append(c.free, b)
		} else {
			// Acknowledged before Send returned (a stats handler may still
			// read it): leave it to the garbage collector.
			c.allocated--
		}
	}
	c.unackedLow = 0
	if len(s.unacked) > 0 {
		c.unackedLow = s.unacked[0].seq
	}
	c.broadcastLocked()
}

// stream is one IngestService.Stream call and its two goroutines: one
// sends (Send blocks on HTTP/2 flow control, which must not hold up
// acknowledgements), one receives. The sender starts them in open and
// waits for them in shutdown.
type stream struct {
	cs     grpc.BidiStreamingClient[hopwatchv1.StreamRequest, hopwatchv1.StreamResponse]
	cancel context.CancelFunc
	wg     sync.WaitGroup
	// sendq holds batches to send, nil for CloseSend. It never fills: a
	// batch is in it at most once, and there are at most nbatches.
	sendq  chan *batch
	queued uint64        // batches put in sendq; the sender's
	sent   atomic.Uint64 // sendq entries done with by sendLoop

	notify chan struct{} // answers arrived
	done   chan struct{} // closed when recvLoop has returned
	mu     sync.Mutex
	resps  []response // guarded by mu
	spare  []response // the sender's
	err    error      // set before done is closed
}

// response is a StreamResponse as the sender needs it. accepted_records
// is not kept: a batch's records less the rejected ones were accepted.
type response struct {
	seq      uint64
	status   hopwatchv1.AckStatus
	rejected uint32
	credit   uint32
	msg      string
}

// enqueue hands b to sendLoop (nil: CloseSend) and returns its position.
func (st *stream) enqueue(b *batch) uint64 {
	st.queued++
	st.sendq <- b
	return st.queued
}

func (st *stream) sendLoop() {
	defer st.wg.Done()
	failed := false
	for b := range st.sendq {
		switch {
		case failed:
		case b == nil:
			failed = st.cs.CloseSend() != nil
		default:
			// After an error the stream is over; recvLoop reports why.
			failed = st.cs.Send(&b.req) != nil
		}
		st.sent.Add(1)
	}
}

func (st *stream) recvLoop() {
	defer st.wg.Done()
	defer close(st.done)
	var m hopwatchv1.StreamResponse
	for {
		if err := st.cs.RecvMsg(&m); err != nil {
			st.err = err
			return
		}
		r := response{seq: m.Seq, status: m.Status, rejected: m.RejectedRecords, credit: m.Credit, msg: m.ErrorMessage}
		st.mu.Lock()
		st.resps = append(st.resps, r)
		st.mu.Unlock()
		select {
		case st.notify <- struct{}{}:
		default:
		}
	}
}

// take returns the answers received so far; they are valid until the
// next take.
func (st *stream) take() []response {
	st.mu.Lock()
	rs := st.resps
	st.resps = st.spare[:0]
	st.mu.Unlock()
	st.spare = rs
	return rs
}

// shutdown ends the stream and waits for its goroutines.
func (st *stream) shutdown() {
	st.cancel()
	close(st.sendq)
	st.wg.Wait()
}
