package ingest

import (
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
	p.process("t", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 110, 190)}, &b, 0)
	require.Empty(t, b.Samples)
	c := hop(ptrace.SpanKindClient, "web", 1, 0, 100, 200)
	c.failed = true
	p.process("t", []hopSpan{c}, &b, 1)
	require.Equal(t, []edgeRow{
		{sample.FamilyEdgeServer, `{client="web", server="api"}`, 80, true},
		{sample.FamilyEdgeClient, `{client="web", server="api"}`, 100, true},
	}, rows(&b))
	require.Zero(t, p.pendingCount())

	// Producer and consumer pair as a messaging edge, in either order.
	b = sample.Batch{}
	p.process("t", []hopSpan{hop(ptrace.SpanKindProducer, "proc", 5, 0, 0, 10), hop(ptrace.SpanKindConsumer, "idx", 6, 5, 500, 900)}, &b, 2)
	require.Equal(t, []edgeRow{
		{sample.FamilyEdgeServer, `{client="proc", connection_type="messaging_system", server="idx"}`, 400, false},
		{sample.FamilyEdgeClient, `{client="proc", connection_type="messaging_system", server="idx"}`, 10, false},
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
	p.process("t", []hopSpan{root, db, ext, lonely}, &b, 0)
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
	p.process("a", []hopSpan{hop(ptrace.SpanKindClient, "web", 1, 0, 0, 10)}, &b, 0)
	p.process("b", []hopSpan{hop(ptrace.SpanKindServer, "api", 2, 1, 0, 5)}, &b, 0)
	require.Empty(t, b.Samples, "the same ids in another tenant do not pair")
	p.process("a", []hopSpan{hop(ptrace.SpanKindClient, "web", 7, 0, 0, 10)}, &b, 0)
	require.Equal(t, []edgeRow{{sample.FamilyDropped, `{client="web"}`, 0, false}}, rows(&b))
}
