package ingest

import (
	"sync"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/hopwatch/hopwatch/sample"
)

// Service graph labels and connection types, as Tempo's metrics-generator
// writes them.
const (
	LabelClient         = "client"
	LabelServer         = "server"
	LabelConnectionType = "connection_type"
	LabelProducer       = "producer"
	LabelConsumer       = "consumer"

	connMessaging = "messaging_system"
	connDatabase  = "database"
	connVirtual   = "virtual_node"

	// virtualUser is the client of a root server span: the user.
	virtualUser = "user"
)

// GraphOptions configures service graph pairing.
type GraphOptions struct {
	// Wait is how long a client or server span waits for its peer before it
	// counts as unpaired (or, for a client span naming its peer, becomes an
	// edge to a virtual node). Queue hops can take long: set it above the
	// longest queue wait that matters.
	Wait time.Duration
	// MaxItems bounds the spans waiting per node; beyond it new spans are
	// dropped and counted.
	MaxItems int
	// MaxHeldQueueHops bounds, per tenant, the queue hops held until the
	// clock offset between their producer's and consumer's nodes is known
	// (MaxItems bounds them for all tenants together); beyond it they are
	// counted as discarded (queue_hops_held_limit).
	MaxHeldQueueHops int
}

// DefaultGraphOptions waits 30 s (Tempo's 10 s loses long queue waits) for
// up to 100,000 spans, and holds up to 10,000 queue hops per tenant (about
// 1 MB) for a clock offset.
func DefaultGraphOptions() GraphOptions {
	return GraphOptions{Wait: 30 * time.Second, MaxItems: 100_000, MaxHeldQueueHops: 10_000}
}

// edgeKey identifies an edge being paired: the client span's trace and span
// id, which is the server span's parent, within a tenant.
type edgeKey struct {
	tenant string
	trace  [16]byte
	span   [8]byte
}

// halfEdge is a client or server span waiting for its peer.
type halfEdge struct {
	client     bool // a client or producer span; else server or consumer
	messaging  bool
	service    string
	node       string
	start, end int64
	failed     bool
	virtual    string // a client span's peer when no server answers
	connType   string
	expires    int64 // ns, the pairer's clock
}

// pairer pairs client and server spans into edges across requests. Its
// memory is bounded by MaxItems; spans waiting for a peer are lost on a
// crash (the spans themselves are durable in the span metrics).
type pairer struct {
	opts GraphOptions

	mtx     sync.Mutex
	pending map[edgeKey]*halfEdge
	// queue holds keys in arrival order, for expiry; entries paired
	// earlier are skipped when popped.
	queue []queued
	// strs interns the strings pending entries keep (tenants, services,
	// peers): there are few of them, seen again and again.
	strs map[string]string
	// series caches the output series by family and labels.
	series  map[string]sample.Series
	keyBuf  []byte
	lsetBuf []string
	// clocks holds the offset estimate of every node pair seen.
	clocks map[nodePair]*clockRing
	// held holds the queue hops between two nodes whose clock offset is
	// not known yet, by (tenant, producer node, consumer node), until a
	// request between the two nodes gives one or the wait ends: recorded
	// uncorrected, a queue time would carry the whole clock difference.
	held      map[nodePair][]heldHop
	heldCount map[string]int // per tenant
	heldAll   int            // all tenants': at most MaxItems
	heldSeq   uint64         // ids of held hops, for taking one back
}

// heldHop is a queue hop waiting for the clock offset between its nodes.
type heldHop struct {
	id                 uint64
	producer, consumer string
	start              int64 // the producer's end, producer clock
	wait               int64 // consumer start minus producer end, uncorrected
	trace              [16]byte
	expires            int64
}

// graphStats counts what pairing refused, for the discarded-samples metric.
type graphStats struct {
	negativeNetwork, negativeQueue int
	// noClockOffset counts queue hops between nodes with no clock offset
	// known when their wait ended (or with one node unknown);
	// heldOverflow, those the held set had no room for.
	noClockOffset, heldOverflow int
}

// Reasons pairing discards a derived sample, as metric label values.
const (
	discardNegativeNetwork = "negative_network_time"
	discardNegativeQueue   = "negative_queue_time"
	discardNoClockOffset   = "no_clock_offset"
	discardHeldOverflow    = "queue_hops_held_limit"
)

// pairOpKind is a change pairing made, as recorded in a pairUndo.
type pairOpKind uint8

const (
	opAdd     pairOpKind = iota // a span started waiting
	opTake                      // a waiting span was paired, replaced or expired
	opHold                      // a queue hop was held
	opRelease                   // a held queue hop was recorded or discarded
)

type pairOp struct {
	kind  pairOpKind
	key   edgeKey
	entry *halfEdge
	pair  nodePair
	hop   heldHop
}

// pairUndo records what one call of process (or one tenant's expiry)
// changed, so that a batch whose append fails can be taken back: its
// client is told nothing was kept, so its retry must find the pairing as
// it was. The clock estimates are not taken back: an exchange seen twice
// is a duplicate in a minimum filter, not a count.
type pairUndo struct{ ops []pairOp }

func (u *pairUndo) reset() {
	if u != nil {
		clear(u.ops)
		u.ops = u.ops[:0]
	}
}

func (u *pairUndo) add(op pairOp) {
	if u != nil {
		u.ops = append(u.ops, op)
	}
}

type queued struct {
	key     edgeKey
	entry   *halfEdge
	expires int64
}

func newPairer(opts GraphOptions) *pairer {
	return &pairer{opts: opts, pending: map[edgeKey]*halfEdge{}, strs: map[string]string{}, series: map[string]sample.Series{},
		clocks: map[nodePair]*clockRing{}, held: map[nodePair][]heldHop{}, heldCount: map[string]int{}}
}

// maxInterned bounds the interning map; past it interning starts over.
const maxInterned = 1 << 16

func (p *pairer) intern(b []byte) string {
	if s, ok := p.strs[string(b)]; ok {
		return s
	}
	if len(p.strs) >= maxInterned {
		clear(p.strs)
	}
	s := string(b)
	p.strs[s] = s
	return s
}

// graphOut collects the samples pairing produces for one tenant.
type graphOut struct {
	p     *pairer
	batch *sample.Batch
	index map[string]uint32
}

// appendGraphKey appends the series key of a service graph family: the
// family, then the label pairs, each as appendKeyValue writes it.
func appendGraphKey(k []byte, family sample.Family, lset []string) []byte {
	k = append(k, byte(family), 0xff)
	for _, l := range lset {
		k = appendKeyValue(k, view(l))
	}
	return k
}

func (o *graphOut) add(family sample.Family, lset []string, smp sample.Sample) {
	// Known series cost a lookup, not an allocation.
	k := appendGraphKey(o.p.keyBuf[:0], family, lset)
	o.p.keyBuf = k
	i, ok := o.index[string(k)]
	if !ok {
		s, ok := o.p.series[string(k)]
		if !ok {
			s = sample.Series{Family: family, Key: string(k), Labels: labels.FromStrings(lset...)}
			if len(o.p.series) >= maxInterned {
				clear(o.p.series)
			}
			o.p.series[s.Key] = s
		}
		i = uint32(len(o.batch.Series))
		o.index[s.Key] = i
		o.batch.Series = append(o.batch.Series, s)
	}
	smp.Series = i
	o.batch.Samples = append(o.batch.Samples, smp)
}

// edgeLabels fills the pairer's scratch label list; valid until the next call.
func (p *pairer) edgeLabels(client, server, connType string) []string {
	l := append(p.lsetBuf[:0], LabelClient, client, LabelServer, server)
	if connType != "" {
		l = append(l, LabelConnectionType, connType)
	}
	p.lsetBuf = l
	return l
}

// sideLabels fills the scratch label list with one side of an edge.
func (p *pairer) sideLabels(side, service string) []string {
	p.lsetBuf = append(p.lsetBuf[:0], side, service)
	return p.lsetBuf
}

// emit writes the samples of one edge.
func (o *graphOut) emit(client, server, connType string, clientDur, serverDur int64, start int64, failed bool, trace [16]byte, hasClient, hasServer bool) {
	lset := o.p.edgeLabels(client, server, connType)
	if hasServer || !hasClient {
		o.add(sample.FamilyEdgeServer, lset, sample.Sample{Start: start, Duration: serverDur, TraceID: trace, Failed: failed})
	} else {
		// A virtual server: the request counts, its duration is the client's.
		o.add(sample.FamilyEdgeServer, lset, sample.Sample{Start: start, Duration: clientDur, TraceID: trace, Failed: failed})
	}
	if hasClient {
		o.add(sample.FamilyEdgeClient, lset, sample.Sample{Start: start, Duration: clientDur, TraceID: trace, Failed: failed})
	}
}

// process pairs the hop spans of one request of tenant and appends the
// resulting samples to b; now is the pairer's clock in ns. What it changes
// is recorded in undo (when not nil), for rollback.
func (p *pairer) process(tenant string, hops []hopSpan, b *sample.Batch, now int64, stats *graphStats, undo *pairUndo) {
	if len(hops) == 0 {
		return
	}
	p.mtx.Lock()
	defer p.mtx.Unlock()
	out := graphOut{p: p, batch: b, index: map[string]uint32{}}
	tenant = p.intern([]byte(tenant))
	for i := range hops {
		h := &hops[i]
		client := h.kind == ptrace.SpanKindClient || h.kind == ptrace.SpanKindProducer
		messaging := h.kind == ptrace.SpanKindProducer || h.kind == ptrace.SpanKindConsumer
		var id []byte
		if client {
			id = h.spanID
		} else {
			id = h.parentID
		}
		if !client && len(id) == 0 {
			// A root server span: its client is the user.
			out.emit(virtualUser, p.intern(h.service), connVirtual, 0, h.end-h.start, h.start, h.failed, h.traceID, false, true)
			continue
		}
		if len(id) != 8 {
			continue // no usable span id: nothing can pair with it
		}
		key := edgeKey{tenant: tenant, trace: h.traceID, span: [8]byte(id)}
		if peer, ok := p.pending[key]; ok && peer.client != client {
			delete(p.pending, key)
			undo.add(pairOp{kind: opTake, key: key, entry: peer})
			me := halfEdge{client: client, service: p.intern(h.service), node: p.intern(h.node), start: h.start, end: h.end, failed: h.failed}
			c, s := peer, &me
			if client {
				c, s = s, peer
			}
			connType := ""
			if messaging || peer.messaging {
				connType = connMessaging
			}
			out.emit(c.service, s.service, connType, c.end-c.start, s.end-s.start, c.start, c.failed || s.failed, h.traceID, true, true)
			if connType == connMessaging {
				p.queueHop(&out, tenant, c, s, h.traceID, now, stats, undo)
			} else {
				p.requestHop(&out, tenant, c, s, h.traceID, stats, undo)
			}
			continue
		}
		if len(p.pending) >= p.opts.MaxItems {
			side := LabelServer
			if client {
				side = LabelClient
			}
			out.add(sample.FamilyDropped, p.sideLabels(side, p.intern(h.service)), sample.Sample{Start: h.start})
			continue
		}
		e := &halfEdge{client: client, messaging: messaging, service: p.intern(h.service), node: p.intern(h.node), start: h.start, end: h.end, failed: h.failed,
			expires: now + p.opts.Wait.Nanoseconds()}
		// A client span that names its peer becomes an edge to it if no
		// server span answers: a database (db.name, else db.system) or a
		// service that is not traced (peer.service).
		switch {
		case client && len(h.dbSystem) > 0:
			server := h.dbName
			if len(server) == 0 {
				server = h.dbSystem
			}
			e.virtual, e.connType = p.intern(server), connDatabase
		case client && len(h.peerService) > 0:
			e.virtual, e.connType = p.intern(h.peerService), connVirtual
		}
		if old, ok := p.pending[key]; ok {
			undo.add(pairOp{kind: opTake, key: key, entry: old}) // a resent span replaces its earlier copy
		}
		p.pending[key] = e
		undo.add(pairOp{kind: opAdd, key: key, entry: e})
		p.queue = append(p.queue, queued{key: key, entry: e, expires: e.expires})
	}
	if len(p.queue) > 4*p.opts.MaxItems {
		// Mostly paired entries: drop them so the queue stays bounded too.
		live := p.queue[:0]
		for _, q := range p.queue {
			if cur, ok := p.pending[q.key]; ok && cur == q.entry {
				live = append(live, q)
			}
		}
		clear(p.queue[len(live):])
		p.queue = live
	}
}

// expire removes the spans that waited past their deadline at now and
// hands out, per tenant, their virtual edges and unpaired counts, with the
// queue hops whose wait for a clock offset ended (counted in stats). When
// out fails, that tenant's expiry is taken back, to be tried again.
func (p *pairer) expire(now int64, out func(tenant string, b *sample.Batch, stats *graphStats) error) {
	type expired struct {
		o     *graphOut
		stats graphStats
		undo  pairUndo
	}
	p.mtx.Lock()
	batches := map[string]*expired{}
	get := func(tenant string) *expired {
		x := batches[tenant]
		if x == nil {
			x = &expired{o: &graphOut{p: p, batch: &sample.Batch{}, index: map[string]uint32{}}}
			batches[tenant] = x
		}
		return x
	}
	n := 0
	for ; n < len(p.queue) && p.queue[n].expires <= now; n++ {
		q := p.queue[n]
		if cur, ok := p.pending[q.key]; !ok || cur != q.entry {
			continue // paired meanwhile
		}
		delete(p.pending, q.key)
		x := get(q.key.tenant)
		x.undo.add(pairOp{kind: opTake, key: q.key, entry: q.entry})
		o := x.o
		e := q.entry
		if e.client && e.virtual != "" {
			o.emit(e.service, e.virtual, e.connType, e.end-e.start, 0, e.start, e.failed, q.key.trace, true, false)
			continue
		}
		side := LabelServer
		if e.client {
			side = LabelClient
		}
		o.add(sample.FamilyUnpaired, p.sideLabels(side, e.service), sample.Sample{Start: e.start})
	}
	p.queue = append(p.queue[:0], p.queue[n:]...)
	for pair, hs := range p.held {
		kept := hs[:0]
		for _, h := range hs {
			if h.expires > now {
				kept = append(kept, h)
				continue
			}
			x := get(pair.tenant)
			x.stats.noClockOffset++
			x.undo.add(pairOp{kind: opRelease, pair: pair, hop: h})
		}
		p.setHeld(pair, hs, kept)
	}
	p.mtx.Unlock()
	for tenant, x := range batches {
		if err := out(tenant, x.o.batch, &x.stats); err != nil {
			p.rollback(&x.undo)
		}
	}
}

// setHeld replaces the held hops of pair, hs, with kept (a prefix of its
// storage), keeping the tenant's count.
func (p *pairer) setHeld(pair nodePair, hs, kept []heldHop) {
	if len(kept) == len(hs) {
		return
	}
	clear(hs[len(kept):])
	p.heldCount[pair.tenant] -= len(hs) - len(kept)
	p.heldAll -= len(hs) - len(kept)
	if p.heldCount[pair.tenant] <= 0 {
		delete(p.heldCount, pair.tenant)
	}
	if len(kept) == 0 {
		delete(p.held, pair)
		return
	}
	p.held[pair] = kept
}

// rollback takes back the changes recorded in undo, newest first, where
// nothing else has changed the same entry since. A span put back waits in
// the expiry queue behind the spans that came after it: it expires late by
// at most the wait, never early.
func (p *pairer) rollback(undo *pairUndo) {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	for i := len(undo.ops) - 1; i >= 0; i-- {
		op := &undo.ops[i]
		switch op.kind {
		case opAdd:
			if p.pending[op.key] == op.entry {
				delete(p.pending, op.key)
			}
		case opTake:
			if _, ok := p.pending[op.key]; !ok {
				p.pending[op.key] = op.entry
				p.queue = append(p.queue, queued{key: op.key, entry: op.entry, expires: op.entry.expires})
			}
		case opHold:
			hs := p.held[op.pair]
			kept := hs[:0]
			for _, h := range hs {
				if h.id != op.hop.id {
					kept = append(kept, h)
				}
			}
			p.setHeld(op.pair, hs, kept)
		case opRelease:
			p.held[op.pair] = append(p.held[op.pair], op.hop)
			p.heldCount[op.pair.tenant]++
			p.heldAll++
		}
	}
	undo.reset()
}

// heldTotal returns how many queue hops wait for a clock offset.
func (p *pairer) heldTotal() int {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	return p.heldAll
}

// heldCountOf returns how many queue hops of tenant wait for a clock offset.
func (p *pairer) heldCountOf(tenant string) int {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	return p.heldCount[tenant]
}

// pendingCount returns how many spans wait for a peer.
func (p *pairer) pendingCount() int {
	p.mtx.Lock()
	defer p.mtx.Unlock()
	return len(p.pending)
}

// requestHop derives from a paired request its network time (client minus
// server duration) and, between two known nodes, a clock offset exchange.
func (p *pairer) requestHop(out *graphOut, tenant string, c, s *halfEdge, trace [16]byte, stats *graphStats, undo *pairUndo) {
	network := (c.end - c.start) - (s.end - s.start)
	if network < 0 {
		// The server took longer than its client waited: broken
		// instrumentation, not a time to record. Counted, not clamped.
		stats.negativeNetwork++
	} else {
		out.add(sample.FamilyNetwork, p.edgeLabels(c.service, s.service, ""), sample.Sample{Start: c.start, Duration: network, TraceID: trace})
	}
	if c.node == "" || s.node == "" || c.node == s.node {
		return
	}
	offset, delay := exchange(c.start, s.start, s.end, c.end)
	if delay < 0 {
		return
	}
	key := nodePair{tenant: tenant, client: c.node, server: s.node}
	r := p.clocks[key]
	if r == nil {
		if len(p.clocks) >= maxInterned {
			clear(p.clocks)
		}
		r = &clockRing{}
		p.clocks[key] = r
	}
	est := r.add(offset, delay)
	p.lsetBuf = append(p.lsetBuf[:0], "client_node", c.node, "server_node", s.node)
	out.add(sample.FamilyClockOffset, p.lsetBuf, sample.Sample{Start: c.start, Duration: est})
	// The pair's offset is known now: the queue hops held for it, in
	// either direction, are recorded corrected.
	p.release(out, nodePair{tenant: tenant, client: c.node, server: s.node}, stats, undo)
	p.release(out, nodePair{tenant: tenant, client: s.node, server: c.node}, stats, undo)
}

// release records the queue hops held for pair (producer node as client,
// consumer node as server), corrected by the pair's clock offset.
func (p *pairer) release(out *graphOut, pair nodePair, stats *graphStats, undo *pairUndo) {
	if p.heldAll == 0 {
		// Nothing held (the usual case): no lookup per paired request.
		return
	}
	hs := p.held[pair]
	if len(hs) == 0 {
		return
	}
	off, _ := p.offset(pair.tenant, pair.client, pair.server)
	for _, h := range hs {
		undo.add(pairOp{kind: opRelease, pair: pair, hop: h})
		p.recordQueue(out, h.producer, h.consumer, h.start, h.wait-off, h.trace, stats)
	}
	p.setHeld(pair, hs, hs[:0])
}

// offset returns the estimated clock of node to minus that of node from,
// and whether any exchange between them was seen.
func (p *pairer) offset(tenant, from, to string) (int64, bool) {
	if from == to {
		return 0, true
	}
	if r := p.clocks[nodePair{tenant: tenant, client: from, server: to}]; r != nil {
		return r.best(), true
	}
	if r := p.clocks[nodePair{tenant: tenant, client: to, server: from}]; r != nil {
		return -r.best(), true
	}
	return 0, false
}

// queueHop records the time a message waited between its producer's end
// and its consumer's start, corrected by the clock offset between their
// nodes. With no offset known yet it holds the hop until a request between
// the two nodes gives one (release) or the wait ends (expire: counted as
// no_clock_offset): uncorrected, it would carry the clock difference. What
// is still negative after correction is counted, not clamped.
func (p *pairer) queueHop(out *graphOut, tenant string, prod, cons *halfEdge, trace [16]byte, now int64, stats *graphStats, undo *pairUndo) {
	wait := cons.start - prod.end
	if off, ok := p.offset(tenant, prod.node, cons.node); ok {
		p.recordQueue(out, prod.service, cons.service, prod.end, wait-off, trace, stats)
		return
	}
	if prod.node == "" || cons.node == "" {
		// One side names no node: no request can ever give the offset.
		stats.noClockOffset++
		return
	}
	// Per tenant, and for all tenants together as the spans waiting for
	// their peers (tenants are as many as X-Scope-OrgID values).
	if p.heldCount[tenant] >= p.opts.MaxHeldQueueHops || p.heldAll >= p.opts.MaxItems {
		stats.heldOverflow++
		return
	}
	pair := nodePair{tenant: tenant, client: prod.node, server: cons.node}
	p.heldSeq++
	h := heldHop{id: p.heldSeq, producer: prod.service, consumer: cons.service, start: prod.end, wait: wait, trace: trace,
		expires: now + p.opts.Wait.Nanoseconds()}
	p.held[pair] = append(p.held[pair], h)
	p.heldCount[tenant]++
	p.heldAll++
	undo.add(pairOp{kind: opHold, pair: pair, hop: h})
}

// recordQueue adds a clock-corrected queue time, or counts it when negative.
func (p *pairer) recordQueue(out *graphOut, producer, consumer string, start, wait int64, trace [16]byte, stats *graphStats) {
	if wait < 0 {
		stats.negativeQueue++
		return
	}
	p.lsetBuf = append(p.lsetBuf[:0], LabelProducer, producer, LabelConsumer, consumer)
	out.add(sample.FamilyQueue, p.lsetBuf, sample.Sample{Start: start, Duration: wait, TraceID: trace})
}
