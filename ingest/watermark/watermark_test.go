package watermark

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const sec = int64(time.Second)

func newTracker(t *testing.T, timeout time.Duration) *Tracker {
	t.Helper()
	opts := DefaultOptions()
	opts.HeartbeatTimeout = timeout
	tr, err := New(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestMinimumOverActiveWriters(t *testing.T) {
	tr := newTracker(t, 30*time.Second)
	now := 1000 * sec
	if _, ok := tr.Watermark("a", now); ok {
		t.Fatal("a tenant that never wrote has a watermark")
	}
	tr.Observe("a", []byte("w1"), 990*sec, now)
	tr.Observe("a", []byte("w2"), 995*sec, now)
	if got, _ := tr.Watermark("a", now); got != 990*sec {
		t.Fatalf("watermark = %d, want the slower writer's 990s", got/sec)
	}
	// Positions only grow: an older batch does not move a writer back.
	tr.Observe("a", []byte("w1"), 980*sec, now)
	tr.Observe("a", []byte("w1"), 993*sec, now+sec)
	if got, _ := tr.Watermark("a", now+sec); got != 993*sec {
		t.Fatalf("watermark = %d, want 993s", got/sec)
	}
	// Tenants are separate.
	tr.Observe("b", []byte("w1"), 100*sec, now)
	if got, _ := tr.Watermark("a", now+sec); got != 993*sec {
		t.Fatalf("tenant b moved tenant a's watermark to %d", got/sec)
	}
	if got := tr.Mark("a"); got != 993*sec {
		t.Fatalf("Mark = %d, want the last computed 993s", got/sec)
	}
}

func TestIdleWriterLeavesAfterTimeoutAndReturnsOnWrite(t *testing.T) {
	tr := newTracker(t, 10*time.Second)
	now := 1000 * sec
	tr.Observe("a", []byte("slow"), 900*sec, now)
	tr.Observe("a", []byte("fast"), 999*sec, now)
	if got, _ := tr.Watermark("a", now+10*sec); got != 900*sec {
		t.Fatalf("at the timeout the silent writer still holds: got %d, want 900s", got/sec)
	}
	tr.Observe("a", []byte("fast"), 1010*sec, now+11*sec)
	if got, _ := tr.Watermark("a", now+11*sec); got != 1010*sec {
		t.Fatalf("past the timeout the silent writer is idle: got %d, want 1010s", got/sec)
	}
	_, ws := tr.Writers("a", now+11*sec)
	if len(ws) != 2 || ws[1].ID != "slow" || ws[1].State != Idle {
		t.Fatalf("writers = %+v, want slow idle", ws)
	}
	// Its next write brings it back, but the watermark never goes back.
	tr.Observe("a", []byte("slow"), 950*sec, now+12*sec)
	if got, _ := tr.Watermark("a", now+12*sec); got != 1010*sec {
		t.Fatalf("watermark went back to %d", got/sec)
	}
	tr.Observe("a", []byte("fast"), 1020*sec, now+13*sec)
	if got, _ := tr.Watermark("a", now+13*sec); got != 1010*sec {
		t.Fatalf("the returned slow writer must hold the watermark again: got %d, want 1010s", got/sec)
	}
	tr.Observe("a", []byte("slow"), 1012*sec, now+14*sec)
	if got, _ := tr.Watermark("a", now+14*sec); got != 1012*sec {
		t.Fatalf("watermark = %d, want 1012s", got/sec)
	}
}

func TestExcludeWithoutWaitingAndIncludeExplicitly(t *testing.T) {
	tr := newTracker(t, time.Hour)
	now := 1000 * sec
	tr.Observe("a", []byte("lag"), 500*sec, now)
	tr.Observe("a", []byte("ok"), 999*sec, now)
	if got, _ := tr.Watermark("a", now); got != 500*sec {
		t.Fatalf("watermark = %d, want 500s", got/sec)
	}
	w, err := tr.Exclude("a", "lag", now)
	if err != nil || w.State != Excluded {
		t.Fatalf("Exclude = %+v, %v", w, err)
	}
	if got, _ := tr.Watermark("a", now); got != 999*sec {
		t.Fatalf("after exclusion watermark = %d, want 999s at once", got/sec)
	}
	// Writing does not end the exclusion.
	tr.Observe("a", []byte("lag"), 600*sec, now+sec)
	if got, _ := tr.Watermark("a", now+sec); got != 999*sec {
		t.Fatalf("a write re-included the excluded writer: watermark %d", got/sec)
	}
	_, ws := tr.Writers("a", now+sec)
	if ws[0].ID != "lag" || ws[0].State != Excluded || ws[0].Position != 600*sec || ws[0].LastWrite != now+sec {
		t.Fatalf("excluded writer = %+v", ws[0])
	}
	w, err = tr.Include("a", "lag", now+2*sec)
	if err != nil || w.State != Active {
		t.Fatalf("Include = %+v, %v", w, err)
	}
	// Included, it holds the watermark again: no progress past it.
	tr.Observe("a", []byte("ok"), 1100*sec, now+3*sec)
	if got, _ := tr.Watermark("a", now+3*sec); got != 999*sec {
		t.Fatalf("included writer does not hold: watermark %d", got/sec)
	}
	if _, err := tr.Exclude("a", "nobody", now); !errors.Is(err, ErrUnknownWriter) {
		t.Fatalf("excluding an unknown writer: %v", err)
	}
	if _, err := tr.Include("zz", "lag", now); !errors.Is(err, ErrUnknownWriter) {
		t.Fatalf("including in an unknown tenant: %v", err)
	}
}

func TestNoActiveWriterFollowsWallClockNeverAhead(t *testing.T) {
	tr := newTracker(t, 10*time.Second)
	now := 1000 * sec
	// A writer whose clock runs ahead cannot move the watermark past now.
	tr.Observe("a", []byte("ahead"), 1005*sec, now)
	if got, _ := tr.Watermark("a", now); got != now {
		t.Fatalf("watermark = %d, want capped at now %d", got/sec, now/sec)
	}
	if got, _ := tr.Watermark("a", now+60*sec); got != now+60*sec {
		t.Fatalf("with every writer idle, watermark = %d, want the wall clock", got/sec)
	}
}

func TestForgetsLongIdleWritersKeepsExcluded(t *testing.T) {
	opts := Options{HeartbeatTimeout: 10 * time.Second, ForgetAfter: time.Minute, MaxWritersPerTenant: 2}
	tr, err := New(opts, nil)
	if err != nil {
		t.Fatal(err)
	}
	now := 1000 * sec
	tr.Observe("a", []byte("gone"), now, now)
	tr.Observe("a", []byte("out"), now, now)
	tr.Observe("a", []byte("third"), now, now) // over the limit: not tracked
	if _, err := tr.Exclude("a", "out", now); err != nil {
		t.Fatal(err)
	}
	_, ws := tr.Writers("a", now+2*time.Minute.Nanoseconds())
	if len(ws) != 1 || ws[0].ID != "out" {
		t.Fatalf("writers = %+v, want only the excluded one kept", ws)
	}
	if got := tr.tenant("a", false).untracked.Load(); got != 1 {
		t.Fatalf("untracked writes = %d, want 1", got)
	}
}

func TestValidate(t *testing.T) {
	err := Options{}.Validate()
	for _, want := range []string{"heartbeat timeout must be positive", "max writers per tenant"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, want it to say %q", err, want)
		}
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := New(Options{HeartbeatTimeout: time.Hour, ForgetAfter: time.Hour, MaxWritersPerTenant: 10}, reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UnixNano()
	tr.Observe("t1", []byte("w1"), now-5*sec, now)
	tr.Observe("t1", []byte("w2"), now, now)
	if _, err := tr.Exclude("t1", "w2", now); err != nil {
		t.Fatal(err)
	}
	mark := testutil.ToFloat64(gaugeOf(t, reg, "hopwatch_watermark_seconds"))
	if want := float64(now-5*sec) / 1e9; mark < want-1e-3 || mark > want+1e-3 {
		t.Fatalf("hopwatch_watermark_seconds = %f, want %f", mark, want)
	}
	lag := testutil.ToFloat64(gaugeOf(t, reg, "hopwatch_watermark_lag_seconds"))
	if lag < 5 || lag > 60 {
		t.Fatalf("hopwatch_watermark_lag_seconds = %f, want 5 s and a little", lag)
	}
	want := `
# HELP hopwatch_watermark_writers The tenant's writers by state (active, idle, excluded).
# TYPE hopwatch_watermark_writers gauge
hopwatch_watermark_writers{state="active",tenant="t1"} 1
hopwatch_watermark_writers{state="excluded",tenant="t1"} 1
hopwatch_watermark_writers{state="idle",tenant="t1"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "hopwatch_watermark_writers"); err != nil {
		t.Fatal(err)
	}
}

// gaugeOf returns a collector yielding the one sample of the named family.
func gaugeOf(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: "copy"}, func() float64 { return mf.GetMetric()[0].GetGauge().GetValue() })
		}
	}
	t.Fatalf("no single-sample family %s", name)
	return nil
}

func BenchmarkObserve(b *testing.B) {
	tr, err := New(DefaultOptions(), nil)
	if err != nil {
		b.Fatal(err)
	}
	id := []byte("instance-0001")
	b.ReportAllocs()
	for i := range b.N {
		tr.Observe("tenant", id, int64(i), int64(i))
	}
}

func TestReplicatedExclusions(t *testing.T) {
	tr := newTracker(t, time.Hour)
	now := 1000 * sec
	tr.Observe("a", []byte("lag"), 500*sec, now)
	tr.Observe("a", []byte("ok"), 999*sec, now)
	// The cluster's set: "lag" and a writer this node has not seen yet.
	tr.SetExclusions(map[string][]string{"a": {"lag", "later"}}, now)
	if got, _ := tr.Watermark("a", now); got != 999*sec {
		t.Fatalf("watermark = %d, want 999s with lag excluded", got/sec)
	}
	tr.Observe("a", []byte("later"), 100*sec, now+sec)
	if w, ok := tr.Writer("a", "later", now+sec); !ok || w.State != Excluded {
		t.Fatalf("a writer excluded before its first write = %+v, %v; want it excluded", w, ok)
	}
	if got, _ := tr.Watermark("a", now+sec); got != 999*sec {
		t.Fatalf("watermark = %d, want 999s: the excluded newcomer holds nothing", got/sec)
	}
	// Out of the set, both hold again (no progress past 999s).
	tr.SetExclusions(nil, now+2*sec)
	tr.Observe("a", []byte("ok"), 1100*sec, now+2*sec)
	if got, _ := tr.Watermark("a", now+2*sec); got != 999*sec {
		t.Fatalf("watermark = %d after the exclusions ended, want it held at 999s", got/sec)
	}
	if w, ok := tr.Writer("a", "lag", now+2*sec); !ok || w.State != Active {
		t.Fatalf("lag = %+v, %v; want active", w, ok)
	}
	if _, ok := tr.Writer("a", "nobody", now); ok {
		t.Fatal("an unknown writer was found")
	}
}
