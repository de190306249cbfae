package ingest

import (
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
	p.process("t", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 110, 190)}, &b, 0, &graphStats{})
	require.Empty(t, b.Samples)
	c := hop(ptrace.SpanKindClient, "web", 1, 0, 100, 200)
	c.failed = true
	p.process("t", []hopSpan{c}, &b, 1, &graphStats{})
	require.Equal(t, []edgeRow{
		{sample.FamilyEdgeServer, `{client="web", server="api"}`, 80, true},
		{sample.FamilyEdgeClient, `{client="web", server="api"}`, 100, true},
		{sample.FamilyNetwork, `{client="web", server="api"}`, 20, false},
	}, rows(&b))
	require.Zero(t, p.pendingCount())

	// Producer and consumer pair as a messaging edge, in either order.
	b = sample.Batch{}
	p.process("t", []hopSpan{hop(ptrace.SpanKindProducer, "proc", 5, 0, 0, 10), hop(ptrace.SpanKindConsumer, "idx", 6, 5, 500, 900)}, &b, 2, &graphStats{})
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
	p.process("t", []hopSpan{root, db, ext, lonely}, &b, 0, &graphStats{})
	// A root server span is an edge from the user, at once.
	require.Equal(t, []edgeRow{{sample.FamilyEdgeServer, `{client="user", connection_type="virtual_node", server="web"}`, 50, false}}, rows(&b))
	require.Equal(t, 3, p.pendingCount())

	got := map[string]*sample.Batch{}
	p.expire(int64(500*time.Millisecond), func(tenant string, b *sample.Batch) { got[tenant] = b })
	require.Empty(t, got, "nothing expires before the wait is over")
	p.expire(int64(time.Second), func(tenant string, b *sample.Batch) { got[tenant] = b })
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
	p.process("a", []hopSpan{hop(ptrace.SpanKindClient, "web", 1, 0, 0, 10)}, &b, 0, &graphStats{})
	p.process("b", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 0, 5)}, &b, 0, &graphStats{})
	require.Empty(t, b.Samples, "the same ids in another tenant do not pair")
	p.process("a", []hopSpan{hop(ptrace.SpanKindClient, "web", 7, 0, 0, 10)}, &b, 0, &graphStats{})
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
				p.process("t", []hopSpan{c, s}, b, 0, &graphStats{})
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
				p.process("t", []hopSpan{pr, co}, b, 0, &stats)
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
	p.process("t", []hopSpan{pr, co}, &b, 0, &stats)
	require.Equal(t, 1, stats.negativeQueue)
	for _, smp := range b.Samples {
		require.NotEqual(t, sample.FamilyQueue, b.Series[smp.Series].Family)
	}
}
