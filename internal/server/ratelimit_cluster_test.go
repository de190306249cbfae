package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/ratelimit"
)

// TestRateLimitsCluster: three nodes split a tenant's cluster-wide spans
// limit in proportion to the load each is offered, not limit/3 each. With
// twice the limit offered 70/20/10 over the three, the busiest node admits
// most of the limit and the quietest the least, the shares add up to the
// whole limit, every node is refused part of its load, the tenant's owner
// alone holds its demands, and no node falls back to the even split; the
// cluster never admits more than the limit's rate over the time of the
// load plus the nodes' bursts. When the owner is removed from the cluster,
// the tenant gets a new owner among the two left, which split the limit
// between them, again by their load.
func TestRateLimitsCluster(t *testing.T) {
	const (
		rate  = 400 // spans/s, cluster-wide
		burst = 400
		batch = 10 // spans per request
	)
	ids := []string{"n1", "n2", "n3"}
	// A tenant that n3 owns in the ring of the three (members in ID order,
	// as the cluster lists them), so that removing n3 moves the tenant's
	// limit to another owner.
	ring := []ratelimit.Member{{ID: "n1"}, {ID: "n2"}, {ID: "n3"}}
	tenantID := "skewed"
	for i := 1; ratelimit.Owner(tenantID, ring) != 2; i++ {
		tenantID = fmt.Sprintf("skewed-%d", i)
	}
	newOwner := ring[ratelimit.Owner(tenantID, ring[:2])].ID

	regs := map[string]*prometheus.Registry{}
	srvs := map[string]*server.Server{}
	addrs := map[string]server.Addrs{}
	for _, id := range ids {
		regs[id] = prometheus.NewRegistry()
		join := ""
		if id != "n1" {
			join = addrs["n1"].ClusterGRPC
		}
		srvs[id], addrs[id] = startLimitedNode(t, id, regs[id], join)
	}
	waitFor(t, "three members and one leader seen by all", func() bool {
		leaders := map[string]bool{}
		for _, id := range ids {
			st := clusterStatus(t, addrs[id].Web)
			if strings.Join(memberIDs(st), ",") != "n1,n2,n3" || st.LeaderID == "" {
				return false
			}
			leaders[st.LeaderID] = true
		}
		return len(leaders) == 1
	})

	waitFor(t, "the tenant's limits through the admin API", func() bool {
		code, _, _ := httpDo(t, http.DefaultClient, http.MethodPut, "http://"+addrs["n2"].Web+"/api/v1/admin/tenants/"+tenantID, "application/json",
			fmt.Appendf(nil, `{"limits":{"ingestion_rate_spans":%d,"ingestion_burst_spans":%d}}`, rate, burst), nil)
		return code == http.StatusCreated || code == http.StatusOK
	})
	for _, id := range ids {
		waitFor(t, "the limit in force on "+id, func() bool {
			return server.TenantRateLimit(srvs[id], tenantID) == ratelimit.Limit{Rate: rate, Burst: burst}
		})
	}

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: loadWorkers}, Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	start := time.Now()
	loads := map[string]*spanLoad{}
	for id, part := range map[string]float64{"n1": 0.7, "n2": 0.2, "n3": 0.1} {
		loads[id] = offerSpans(t, client, addrs[id].OTLPHTTP, tenantID, id, 2*rate*part, batch)
	}

	spans := func(name, id string) float64 {
		return counter(t, regs[id], name, map[string]string{"limit": "spans", "tenant": tenantID})
	}
	// share is NaN until the node has seen the tenant.
	share := func(id string) float64 {
		v, ok := sample(t, regs[id], "hopwatch_ratelimit_share", map[string]string{"limit": "spans", "tenant": tenantID})
		if !ok {
			return math.NaN()
		}
		return v
	}
	gauge := func(name, id string, lbls map[string]string) float64 { return counter(t, regs[id], name, lbls) }
	fallback := func(id string) float64 {
		return gauge("hopwatch_ratelimit_fallback_tenants", id, map[string]string{"limit": "spans"})
	}
	owned := func(id string) float64 { return gauge("hopwatch_ratelimit_owned_tenants", id, nil) }
	live := func(id string) float64 { return gauge("hopwatch_ratelimit_live_members", id, nil) }

	waitForSeen(t, "shares in proportion to the load", func() (bool, string) {
		s1, s2, s3 := share("n1"), share("n2"), share("n3")
		f1, f2, f3 := fallback("n1"), fallback("n2"), fallback("n3")
		o1, o2, o3 := owned("n1"), owned("n2"), owned("n3")
		return s1 > 0.5 && s1 > s2 && s2 > s3 && s3 > 0 && s3 < 0.25 && within(s1+s2+s3, 0.9, 1.1) &&
				f1+f2+f3 == 0 && o1 == 0 && o2 == 0 && o3 == 1,
			fmt.Sprintf("shares %.3f %.3f %.3f, fallback %v %v %v, owned %v %v %v", s1, s2, s3, f1, f2, f3, o1, o2, o3)
	})
	// Split by demand, every node is refused about the same fraction of
	// its load; split evenly, n3's load would fit in its third.
	waitForSeen(t, "every node refusing part of its load", func() (bool, string) {
		r1, r2, r3 := spans("hopwatch_ratelimit_refused_total", "n1"), spans("hopwatch_ratelimit_refused_total", "n2"), spans("hopwatch_ratelimit_refused_total", "n3")
		return r1 > 0 && r2 > 0 && r3 > 0, fmt.Sprintf("refused %v %v %v", r1, r2, r3)
	})

	// The load goes on until the cluster has been offered enough that
	// nodes each admitting the whole limit would exceed the bound below.
	waitForSeen(t, "the load offered", func() (bool, string) {
		var offered int64
		for _, l := range loads {
			offered += l.admitted.Load() + l.refused.Load()
		}
		return offered >= 16*burst, fmt.Sprintf("%d spans offered", offered)
	})

	// n3, the owner, is sent nothing more and is removed from the
	// cluster; the two left split the limit 70/20, not evenly.
	loads["n3"].stopLoad()
	code, a := clusterCall(t, addrs["n1"].Web, http.MethodDelete, "/api/v1/admin/cluster/members/n3", "")
	require.Equal(t, http.StatusOK, code, a.Error)
	waitForSeen(t, "n1 and n2 splitting the limit", func() (bool, string) {
		s1, s2 := share("n1"), share("n2")
		l1, l2 := live("n1"), live("n2")
		f1, f2 := fallback("n1"), fallback("n2")
		o := owned(newOwner)
		return s1 > 0.6 && s2 > 0 && s2 < 0.35 && within(s1+s2, 0.9, 1.1) && l1 == 2 && l2 == 2 && f1+f2 == 0 && o == 1,
			fmt.Sprintf("shares %.3f %.3f, live members %v %v, fallback %v %v, %s owns %v", s1, s2, l1, l2, f1, f2, newOwner, o)
	})
	for _, id := range ids {
		loads[id].stopLoad()
	}
	elapsed := time.Since(start)

	// Every node counted what its clients were answered, and the cluster
	// admitted no more than the limit allows over the time of the load:
	// the rate, plus a burst per node (buckets start full), plus a batch
	// per node for the buckets' rounding.
	var admitted int64
	for _, id := range ids {
		l := loads[id]
		require.Equal(t, float64(l.admitted.Load()), spans("hopwatch_ratelimit_admitted_total", id), id)
		require.Equal(t, float64(l.refused.Load()), spans("hopwatch_ratelimit_refused_total", id), id)
		admitted += l.admitted.Load()
		t.Logf("%s: admitted %d spans, refused %d", id, l.admitted.Load(), l.refused.Load())
	}
	require.Positive(t, admitted)
	bound := rate*elapsed.Seconds() + 3*burst + 3*batch
	t.Logf("the cluster admitted %d spans in %v, at most %.0f allowed", admitted, elapsed.Round(time.Millisecond), bound)
	require.LessOrEqual(t, float64(admitted), bound, "spans admitted over %v", elapsed)
}

// startLimitedNode starts a node of a test cluster with multitenancy on,
// its metrics in reg, and a short rate limit exchange interval; it joins
// the cluster of the node at join unless join is empty, and waits until
// the node is ready.
func startLimitedNode(t *testing.T, id string, reg *prometheus.Registry, join string) (*server.Server, server.Addrs) {
	t.Helper()
	return startNodeReg(t, id, "", true, reg, func(cfg *server.Config) {
		cfg.MultitenancyEnabled = true
		cfg.Ingest.Stages.Names = nil
		cfg.RateLimits.ExchangeInterval = 200 * time.Millisecond
		if join != "" {
			joining(join)(cfg)
		}
	})
}

// loadWorkers bounds the requests in flight to one node: a tick that finds
// them all busy is skipped.
const loadWorkers = 4

// spanLoad is a steady load of one tenant's spans on one node's OTLP/HTTP
// listener, with the spans the node admitted and refused.
type spanLoad struct {
	admitted, refused atomic.Int64
	stop              context.CancelFunc
	done              chan struct{}
}

// offerSpans offers perSecond spans of tenantID per second to the
// OTLP/HTTP listener at addr, in requests of batch spans, until stopLoad
// (or the end of the test). A request answered other than 200 (admitted)
// or 429 (rate limited) fails the test.
func offerSpans(t *testing.T, client *http.Client, addr, tenantID, service string, perSecond float64, batch int) *spanLoad {
	t.Helper()
	body := spansRequest(t, service, batch, time.Now().Add(-time.Minute))
	ctx, cancel := context.WithCancel(context.Background())
	l := &spanLoad{stop: cancel, done: make(chan struct{})}
	send := func() {
		req, err := http.NewRequest(http.MethodPost, "http://"+addr+"/v1/traces", bytes.NewReader(body))
		if err != nil {
			t.Errorf("%s: %v", service, err)
			return
		}
		req.Header.Set("Content-Type", "application/x-protobuf")
		req.Header.Set(tenant.Header, tenantID)
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("%s: %v", service, err)
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		switch resp.StatusCode {
		case http.StatusOK:
			l.admitted.Add(int64(batch))
		case http.StatusTooManyRequests:
			l.refused.Add(int64(batch))
		default:
			t.Errorf("%s: %d %s", service, resp.StatusCode, b)
		}
	}
	go func() {
		defer close(l.done)
		var wg sync.WaitGroup
		defer wg.Wait()
		busy := make(chan struct{}, loadWorkers)
		tick := time.NewTicker(time.Duration(float64(batch) / perSecond * float64(time.Second)))
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case busy <- struct{}{}:
				wg.Go(func() {
					defer func() { <-busy }()
					send()
				})
			default:
			}
		}
	}()
	t.Cleanup(l.stopLoad)
	return l
}

// stopLoad stops the load and waits for the requests in flight.
func (l *spanLoad) stopLoad() {
	l.stop()
	<-l.done
}

// spansRequest is an OTLP protobuf request of n spans of service, all
// starting at start.
func spansRequest(t *testing.T, service string, n int, start time.Time) []byte {
	t.Helper()
	td := ptrace.NewTraces()
	rs := td.ResourceSpans().AppendEmpty()
	rs.Resource().Attributes().PutStr("service.name", service)
	spans := rs.ScopeSpans().AppendEmpty().Spans()
	for i := range n {
		s := spans.AppendEmpty()
		s.SetName("op")
		s.SetKind(ptrace.SpanKindInternal)
		s.SetTraceID(pcommon.TraceID{byte(i + 1), 1})
		s.SetStartTimestamp(pcommon.NewTimestampFromTime(start))
		s.SetEndTimestamp(pcommon.NewTimestampFromTime(start.Add(time.Millisecond)))
	}
	body, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)
	return body
}

// waitForSeen is waitFor with a description of what cond saw last,
// logged when the wait ends, whether cond held or the wait gave up.
func waitForSeen(t *testing.T, what string, cond func() (bool, string)) {
	t.Helper()
	var seen string
	defer func() { t.Logf("%s: %s", what, seen) }()
	waitFor(t, what, func() bool {
		ok, s := cond()
		seen = s
		return ok
	})
}

func within(v, lo, hi float64) bool { return v >= lo && v <= hi }
