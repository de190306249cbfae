package ingest

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"

	"github.com/hopwatch/hopwatch/sample"
)

// edgeSamples flattens a batch into "family labels duration failed" rows.
type edgeRow struct {
	family   sample.Family
	labels   string
	duration int64
	failed   bool
}

func rows(b *sample.Batch) []edgeRow {
	var out []edgeRow
	for _, s := range b.Samples {
		sr := b.Series[s.Series]
		out = append(out, edgeRow{sr.Family, sr.Labels.String(), s.Duration, s.Failed})
	}
	return out
}

func hop(kind ptrace.SpanKind, service string, span, parent byte, start, end int64) hopSpan {
	h := hopSpan{traceID: [16]byte{1}, kind: kind, service: []byte(service), start: start, end: end}
	if span != 0 {
		h.spanID = []byte{span, 0, 0, 0, 0, 0, 0, 0}
	}
	if parent != 0 {
		h.parentID = []byte{parent, 0, 0, 0, 0, 0, 0, 0}
	}
	return h
}

func TestPairingAcrossRequests(t *testing.T) {
	p := newPairer(GraphOptions{Wait: time.Second, MaxItems: 100})
	var b sample.Batch
	// The server span arrives first, its client in a later request.
	p.process("t", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 110, 190)}, &b, 0, &graphStats{}, nil)
	require.Empty(t, b.Samples)
	c := hop(ptrace.SpanKindClient, "web", 1, 0, 100, 200)
	c.failed = true
	p.process("t", []hopSpan{c}, &b, 1, &graphStats{}, nil)
	require.Equal(t, []edgeRow{
		{sample.FamilyEdgeServer, `{client="web", server="api"}`, 80, true},
		{sample.FamilyEdgeClient, `{client="web", server="api"}`, 100, true},
		{sample.FamilyNetwork, `{client="web", server="api"}`, 20, false},
	}, rows(&b))
	require.Zero(t, p.pendingCount())

	// Producer and consumer pair as a messaging edge, in either order.
	b = sample.Batch{}
	p.process("t", []hopSpan{hop(ptrace.SpanKindProducer, "proc", 5, 0, 0, 10), hop(ptrace.SpanKindConsumer, "idx", 6, 5, 500, 900)}, &b, 2, &graphStats{}, nil)
	require.Equal(t, []edgeRow{
		{sample.FamilyEdgeServer, `{client="proc", connection_type="messaging_system", server="idx"}`, 400, false},
		{sample.FamilyEdgeClient, `{client="proc", connection_type="messaging_system", server="idx"}`, 10, false},
		{sample.FamilyQueue, `{consumer="idx", producer="proc"}`, 490, false},
	}, rows(&b))
}

func TestPairingVirtualNodesAndExpiry(t *testing.T) {
	p := newPairer(GraphOptions{Wait: time.Second, MaxItems: 100})
	var b sample.Batch
	root := hop(ptrace.SpanKindServer, "web", 1, 0, 0, 50)
	db := hop(ptrace.SpanKindClient, "api", 2, 1, 0, 30)
	db.dbSystem, db.dbName = []byte("postgresql"), []byte("users")
	ext := hop(ptrace.SpanKindClient, "api", 3, 1, 0, 70)
	ext.peerService = []byte("payments-provider")
	lonely := hop(ptrace.SpanKindServer, "worker", 4, 9, 0, 20)
	p.process("t", []hopSpan{root, db, ext, lonely}, &b, 0, &graphStats{}, nil)
	// A root server span is an edge from the user, at once.
	require.Equal(t, []edgeRow{{sample.FamilyEdgeServer, `{client="user", connection_type="virtual_node", server="web"}`, 50, false}}, rows(&b))
	require.Equal(t, 3, p.pendingCount())

	got := map[string]*sample.Batch{}
	p.expire(int64(500*time.Millisecond), func(tenant string, b *sample.Batch, _ *graphStats) error { got[tenant] = b; return nil })
	require.Empty(t, got, "nothing expires before the wait is over")
	p.expire(int64(time.Second), func(tenant string, b *sample.Batch, _ *graphStats) error { got[tenant] = b; return nil })
	require.Equal(t, []edgeRow{
		{sample.FamilyEdgeServer, `{client="api", connection_type="database", server="users"}`, 30, false},
		{sample.FamilyEdgeClient, `{client="api", connection_type="database", server="users"}`, 30, false},
		{sample.FamilyEdgeServer, `{client="api", connection_type="virtual_node", server="payments-provider"}`, 70, false},
		{sample.FamilyEdgeClient, `{client="api", connection_type="virtual_node", server="payments-provider"}`, 70, false},
		{sample.FamilyUnpaired, `{server="worker"}`, 0, false},
	}, rows(got["t"]))
	require.Zero(t, p.pendingCount())
}

func TestPairingIsPerTenantAndBounded(t *testing.T) {
	p := newPairer(GraphOptions{Wait: time.Second, MaxItems: 2})
	var b sample.Batch
	p.process("a", []hopSpan{hop(ptrace.SpanKindClient, "web", 1, 0, 0, 10)}, &b, 0, &graphStats{}, nil)
	p.process("b", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 0, 5)}, &b, 0, &graphStats{}, nil)
	require.Empty(t, b.Samples, "the same ids in another tenant do not pair")
	p.process("a", []hopSpan{hop(ptrace.SpanKindClient, "web", 7, 0, 0, 10)}, &b, 0, &graphStats{}, nil)
	require.Equal(t, []edgeRow{{sample.FamilyDropped, `{client="web"}`, 0, false}}, rows(&b))
}

// TestClockOffsetAndCorrectedQueueTimes injects a clock skew between two
// nodes: requests from node a to node b give the NTP estimate, which must
// come within 10% (or 100 µs) of the skew, and messages from a to b must
// get their true queue time back.
func TestClockOffsetAndCorrectedQueueTimes(t *testing.T) {
	for _, skew := range []time.Duration{50 * time.Millisecond, -50 * time.Millisecond, 2 * time.Millisecond, -2 * time.Millisecond} {
		t.Run(skew.String(), func(t *testing.T) {
			p := newPairer(GraphOptions{Wait: time.Minute, MaxItems: 1000})
			rng := rand.New(rand.NewPCG(uint64(skew), 3))
			// Network legs: 100 µs plus an exponential tail of mean 400 µs,
			// drawn independently each way.
			leg := func() int64 { return int64(100e3 + rng.ExpFloat64()*400e3) }
			var est int64
			var span byte = 1
			b := &sample.Batch{}
			for i := range 100 {
				t1 := int64(i) * 1e7 // true time
				t2 := t1 + leg()
				t3 := t2 + int64(1e6+rng.IntN(1e6))
				t4 := t3 + leg()
				c := hop(ptrace.SpanKindClient, "web", span, 0, t1, t4)
				c.node = []byte("a")
				s := hop(ptrace.SpanKindServer, "api", span+1, span, t2+int64(skew), t3+int64(skew)) // server clock is off by skew
				s.node = []byte("b")
				c.traceID[1], s.traceID[1] = byte(i), byte(i)
				p.process("t", []hopSpan{c, s}, b, 0, &graphStats{}, nil)
				for j, smp := range b.Samples {
					if b.Series[smp.Series].Family == sample.FamilyClockOffset && j == len(b.Samples)-1 {
						est = smp.Duration
					}
				}
			}
			tol := max(int64(skew.Abs())/10, 100e3)
			require.InDelta(t, int64(skew), est, float64(tol), "estimate %s for skew %s", time.Duration(est), skew)

			// Messages from a (producer) to b (consumer), whose clock is ahead
			// by skew: the stored queue time is the true one, within the
			// estimate's error.
			var stats graphStats
			for i := range 20 {
				b = &sample.Batch{}
				end := int64(i) * 1e8
				truth := int64(200e3 + i*10e3)
				pr := hop(ptrace.SpanKindProducer, "proc", 1, 0, end-1e6, end)
				pr.node = []byte("a")
				co := hop(ptrace.SpanKindConsumer, "idx", 2, 1, end+truth+int64(skew), end+truth+int64(skew)+5e5)
				co.node = []byte("b")
				pr.traceID[2], co.traceID[2] = byte(i), byte(i)
				p.process("t", []hopSpan{pr, co}, b, 0, &stats, nil)
				var got int64 = -1
				for _, smp := range b.Samples {
					if b.Series[smp.Series].Family == sample.FamilyQueue {
						got = smp.Duration
					}
				}
				require.InDelta(t, truth, got, float64(tol), "message %d", i)
			}
			require.Zero(t, stats.negativeQueue)
		})
	}
}

func TestNegativeQueueTimeIsCountedNotClamped(t *testing.T) {
	p := newPairer(GraphOptions{Wait: time.Minute, MaxItems: 10})
	var b sample.Batch
	var stats graphStats
	pr := hop(ptrace.SpanKindProducer, "proc", 1, 0, 0, 1000)
	co := hop(ptrace.SpanKindConsumer, "idx", 2, 1, 500, 900) // starts before the producer ended, same node
	p.process("t", []hopSpan{pr, co}, &b, 0, &stats, nil)
	require.Equal(t, 1, stats.negativeQueue)
	for _, smp := range b.Samples {
		require.NotEqual(t, sample.FamilyQueue, b.Series[smp.Series].Family)
	}
}

// queueRows returns the queue times in b.
func queueRows(b *sample.Batch) []int64 {
	var out []int64
	for _, smp := range b.Samples {
		if b.Series[smp.Series].Family == sample.FamilyQueue {
			out = append(out, smp.Duration)
		}
	}
	return out
}

// messageHop returns a producer span on node a ending at end and its
// consumer on node b starting wait later on b's clock, in trace i.
func messageHop(i byte, end, wait int64) (pr, co hopSpan) {
	pr = hop(ptrace.SpanKindProducer, "proc", 1, 0, end-1e6, end)
	pr.node = []byte("a")
	co = hop(ptrace.SpanKindConsumer, "idx", 2, 1, end+wait, end+wait+5e5)
	co.node = []byte("b")
	pr.traceID[2], co.traceID[2] = i, i
	return pr, co
}

// requestHop returns a request from node a to node b, whose clock is
// ahead by skew, over a 200 µs symmetric network.
func requestHopSpans(i byte, t1, skew int64) (c, s hopSpan) {
	c = hop(ptrace.SpanKindClient, "web", 1, 0, t1, t1+1e6+400e3)
	c.node = []byte("a")
	s = hop(ptrace.SpanKindServer, "api", 2, 1, t1+200e3+skew, t1+200e3+1e6+skew)
	s.node = []byte("b")
	c.traceID[3], s.traceID[3] = i, i
	return c, s
}

// TestQueueHopsWaitForAClockOffset: queue hops between two nodes seen
// before any request between them are held, not recorded with the clock
// difference in them, and recorded corrected once a request between the
// nodes (in either direction) gives the offset; with none before the wait
// ends, they are counted as no_clock_offset. The held set is bounded per
// tenant. Time is the pairer's parameter: nothing sleeps.
func TestQueueHopsWaitForAClockOffset(t *testing.T) {
	const skew = int64(80 * time.Millisecond) // b's clock is ahead
	const truth = int64(3 * time.Millisecond)
	opts := GraphOptions{Wait: 10 * time.Second, MaxItems: 100, MaxHeldQueueHops: 3}

	t.Run("then a request", func(t *testing.T) {
		p := newPairer(opts)
		var stats graphStats
		for i := range byte(2) {
			b := &sample.Batch{}
			pr, co := messageHop(i, int64(i)*1e9, truth+skew)
			p.process("t", []hopSpan{pr, co}, b, int64(i)*1e9, &stats, nil)
			require.Empty(t, queueRows(b), "no offset known yet: held, not recorded uncorrected")
		}
		require.Equal(t, 2, p.heldCountOf("t"))
		b := &sample.Batch{}
		c, s := requestHopSpans(1, 5e9, skew)
		p.process("t", []hopSpan{c, s}, b, 5e9, &stats, nil)
		require.Equal(t, []int64{truth, truth}, queueRows(b), "recorded corrected when the offset is known")
		require.Zero(t, p.heldCountOf("t"))
		require.Equal(t, graphStats{}, stats)

		// Later hops are recorded at once, corrected.
		b = &sample.Batch{}
		pr, co := messageHop(9, 6e9, truth+skew)
		p.process("t", []hopSpan{pr, co}, b, 6e9, &stats, nil)
		require.Equal(t, []int64{truth}, queueRows(b))
	})

	t.Run("a request the other way", func(t *testing.T) {
		p := newPairer(opts)
		var stats graphStats
		b := &sample.Batch{}
		pr, co := messageHop(1, 1e9, truth+skew)
		p.process("t", []hopSpan{pr, co}, b, 1e9, &stats, nil)
		// b calls a: a's clock is behind by skew from b's side.
		c, s := requestHopSpans(1, 2e9, -skew)
		c.node, s.node = []byte("b"), []byte("a")
		p.process("t", []hopSpan{c, s}, b, 2e9, &stats, nil)
		require.Equal(t, []int64{truth}, queueRows(b))
	})

	t.Run("no request before the wait ends", func(t *testing.T) {
		p := newPairer(opts)
		var stats graphStats
		b := &sample.Batch{}
		for i := range byte(5) {
			pr, co := messageHop(i, int64(i)*1e6, truth+skew)
			p.process("t", []hopSpan{pr, co}, b, 0, &stats, nil)
		}
		require.Empty(t, queueRows(b))
		require.Equal(t, 3, p.heldCountOf("t"), "held up to MaxHeldQueueHops per tenant")
		require.Equal(t, 2, stats.heldOverflow)
		pr, co := messageHop(7, 0, truth+skew)
		p.process("u", []hopSpan{pr, co}, b, 0, &stats, nil)
		require.Equal(t, 1, p.heldCountOf("u"), "another tenant has its own room")

		expired := map[string]graphStats{}
		out := func(tenant string, b *sample.Batch, st *graphStats) error {
			require.Empty(t, queueRows(b))
			expired[tenant] = *st
			return nil
		}
		p.expire(int64(opts.Wait)-1, out)
		require.Empty(t, expired, "nothing before the wait ends")
		p.expire(int64(opts.Wait), out)
		require.Equal(t, map[string]graphStats{"t": {noClockOffset: 3}, "u": {noClockOffset: 1}}, expired)
		require.Zero(t, p.heldCountOf("t"))
		require.Empty(t, p.held)

		// A request after that finds nothing held.
		b = &sample.Batch{}
		c, s := requestHopSpans(1, 20e9, skew)
		p.process("t", []hopSpan{c, s}, b, 20e9, &stats, nil)
		require.Empty(t, queueRows(b))
	})

	t.Run("a node unknown", func(t *testing.T) {
		p := newPairer(opts)
		var stats graphStats
		b := &sample.Batch{}
		pr, co := messageHop(1, 1e9, truth+skew)
		co.node = nil
		p.process("t", []hopSpan{pr, co}, b, 0, &stats, nil)
		require.Empty(t, queueRows(b))
		require.Equal(t, 1, stats.noClockOffset, "no request can give an offset to a node without a name")
		require.Zero(t, p.heldCountOf("t"))
	})

	t.Run("many tenants", func(t *testing.T) {
		// Tenants are as many as X-Scope-OrgID values: together they hold
		// at most MaxItems.
		p := newPairer(GraphOptions{Wait: opts.Wait, MaxItems: 5, MaxHeldQueueHops: 3})
		var stats graphStats
		b := &sample.Batch{}
		for i := range byte(8) {
			pr, co := messageHop(i, 1e9, truth+skew)
			p.process(fmt.Sprint("tenant-", i), []hopSpan{pr, co}, b, 0, &stats, nil)
		}
		require.Equal(t, 5, p.heldTotal())
		require.Equal(t, 3, stats.heldOverflow)
		p.expire(int64(opts.Wait), func(string, *sample.Batch, *graphStats) error { return nil })
		require.Zero(t, p.heldTotal())
	})
}

// TestPairingRollback: a request whose append fails leaves the pairing as
// it found it, so that its retry pairs exactly as the first try would have.
func TestPairingRollback(t *testing.T) {
	p := newPairer(GraphOptions{Wait: 10 * time.Second, MaxItems: 100, MaxHeldQueueHops: 10})
	var stats graphStats
	// Acknowledged earlier: a server span waiting for its client, and a
	// queue hop held for a clock offset.
	p.process("t", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 110, 190)}, &sample.Batch{}, 0, &stats, nil)
	pr, co := messageHop(1, 1e9, 5e6)
	p.process("t", []hopSpan{pr, co}, &sample.Batch{}, 0, &stats, nil)
	require.Equal(t, 1, p.pendingCount())
	require.Equal(t, 1, p.heldCountOf("t"))

	// The failing request: pairs the client, adds a new waiting span,
	// releases the held hop with a request between the nodes.
	c, s := requestHopSpans(2, 2e9, 0)
	req := []hopSpan{hop(ptrace.SpanKindClient, "web", 1, 0, 100, 200), hop(ptrace.SpanKindClient, "web", 5, 0, 0, 10), c, s}
	var undo pairUndo
	first := &sample.Batch{}
	p.process("t", req, first, 1, &stats, &undo)
	require.Zero(t, p.heldCountOf("t"))
	require.Equal(t, 1, p.pendingCount())
	p.rollback(&undo)
	require.Len(t, p.pending, 1)
	for _, e := range p.pending {
		require.Equal(t, "api", e.service, "the server span waits again, the new client span is gone")
	}
	require.Equal(t, 1, p.heldCountOf("t"), "the queue hop is held again")

	retry := &sample.Batch{}
	p.process("t", req, retry, 1, &stats, &undo)
	require.Equal(t, rows(first), rows(retry), "the retry pairs as the first try did")

	// An expiry whose append fails is tried again at the next one.
	p2 := newPairer(GraphOptions{Wait: time.Second, MaxItems: 100, MaxHeldQueueHops: 10})
	p2.process("t", []hopSpan{hop(ptrace.SpanKindServer, "worker", 4, 9, 0, 20)}, &sample.Batch{}, 0, &stats, nil)
	p2.process("t", []hopSpan{pr, co}, &sample.Batch{}, 0, &stats, nil)
	fail := func(string, *sample.Batch, *graphStats) error { return errors.New("storage down") }
	p2.expire(int64(time.Second), fail)
	require.Equal(t, 1, p2.pendingCount())
	require.Equal(t, 1, p2.heldCountOf("t"))
	var got []edgeRow
	var gotStats graphStats
	p2.expire(int64(2*time.Second), func(_ string, b *sample.Batch, st *graphStats) error {
		got, gotStats = rows(b), *st
		return nil
	})
	require.Equal(t, []edgeRow{{sample.FamilyUnpaired, `{server="worker"}`, 0, false}}, got)
	require.Equal(t, graphStats{noClockOffset: 1}, gotStats)
	require.Zero(t, p2.pendingCount())
}
