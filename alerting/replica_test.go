package alerting

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/storage"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// memReplica is a replicated store in memory, shared by two rulers as two
// nodes share the cluster's metadata.
type memReplica struct {
	mtx         sync.Mutex
	groups      map[[3]string]string
	watchers    map[chan struct{}]bool
	unavailable bool
}

func newMemReplica() *memReplica {
	return &memReplica{groups: map[[3]string]string{}, watchers: map[chan struct{}]bool{}}
}

func (m *memReplica) changed() {
	for ch := range m.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

func (m *memReplica) PutGroup(_ context.Context, tenant, namespace, name, yaml string) error {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	if m.unavailable {
		return ErrUnavailable
	}
	m.groups[[3]string{tenant, namespace, name}] = yaml
	m.changed()
	return nil
}

func (m *memReplica) DeleteGroup(_ context.Context, tenant, namespace, name string) error {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	n := len(m.groups)
	for k := range m.groups {
		if k[0] == tenant && k[1] == namespace && (name == "" || k[2] == name) {
			delete(m.groups, k)
		}
	}
	if len(m.groups) == n {
		return ErrNotFound
	}
	m.changed()
	return nil
}

func (m *memReplica) Groups() []ReplicaGroup {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	var out []ReplicaGroup
	for k, y := range m.groups {
		out = append(out, ReplicaGroup{Tenant: k[0], Namespace: k[1], Name: k[2], YAML: y})
	}
	return out
}

func (m *memReplica) Watch() (<-chan struct{}, func()) {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	ch := make(chan struct{}, 1)
	m.watchers[ch] = true
	return ch, func() {
		m.mtx.Lock()
		defer m.mtx.Unlock()
		delete(m.watchers, ch)
	}
}

// noData is a tenant without data: rules evaluate to nothing.
type noData struct{}

func (noData) QueryFunc(string) rules.QueryFunc {
	return func(context.Context, string, time.Time) (promql.Vector, error) { return nil, nil }
}
func (noData) Appendable(string) storage.AppendableV2     { return nil }
func (noData) Queryable(string) storage.Queryable         { return nil }
func (noData) Watermark(string, int64) (int64, bool)      { return 0, false }
func (noData) Tenants() []string                          { return nil }
func (noData) Prepare(context.Context, string, time.Time) {}

func newReplicatedRuler(t *testing.T, rep Replica) (*Ruler, string) {
	t.Helper()
	o := DefaultOptions()
	o.Dir = t.TempDir()
	o.Replica = rep
	r, err := New(o, noData{}, nil, nil)
	require.NoError(t, err)
	t.Cleanup(r.Stop)
	srv := httptest.NewServer(r.ConfigHandler(tenant.Resolver{Enabled: true}))
	t.Cleanup(srv.Close)
	return r, srv.URL
}

func ruleRequest(t *testing.T, method, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set(tenant.Header, "team-a")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	return resp
}

// TestReplicatedRuleGroups: a group set through one node's API is held,
// served and evaluated by the other node; a delete on the other node
// removes it from both.
func TestReplicatedRuleGroups(t *testing.T) {
	rep := newMemReplica()
	a, urlA := newReplicatedRuler(t, rep)
	b, urlB := newReplicatedRuler(t, rep)

	group := "name: latency\ninterval: 1s\nrules:\n  - alert: Slow\n    expr: vector(1) > 2\n"
	require.Equal(t, http.StatusAccepted, ruleRequest(t, http.MethodPost, urlA+"/api/v1/rules/checkout", group).StatusCode)
	// In force on the node that took it when the answer came.
	require.NotNil(t, a.Manager("team-a"))
	require.Eventually(t, func() bool {
		return ruleRequest(t, http.MethodGet, urlB+"/api/v1/rules/checkout/latency", "").StatusCode == http.StatusOK && b.Manager("team-a") != nil
	}, 20*time.Second, 10*time.Millisecond, "the group reaches the other node")
	groups := b.Manager("team-a").RuleGroups()
	require.Len(t, groups, 1)
	require.Equal(t, "latency", groups[0].Name())
	require.Equal(t, time.Second, groups[0].Interval())

	require.Equal(t, http.StatusAccepted, ruleRequest(t, http.MethodDelete, urlB+"/api/v1/rules/checkout", "").StatusCode)
	require.Eventually(t, func() bool {
		return ruleRequest(t, http.MethodGet, urlA+"/api/v1/rules/checkout/latency", "").StatusCode == http.StatusNotFound && a.Manager("team-a") == nil
	}, 20*time.Second, 10*time.Millisecond, "the delete reaches the first node")
	_, err := os.Stat(filepath.Join(a.opts.Dir, "team-a", "checkout.yaml"))
	require.ErrorIs(t, err, os.ErrNotExist)
	require.Equal(t, http.StatusNotFound, ruleRequest(t, http.MethodDelete, urlA+"/api/v1/rules/checkout", "").StatusCode)

	// The generated namespace is not the API's; an unavailable store is
	// a 503 the client retries.
	require.Equal(t, http.StatusBadRequest, ruleRequest(t, http.MethodPost, urlA+"/api/v1/rules/"+AnomalyNamespace, group).StatusCode)
	rep.mtx.Lock()
	rep.unavailable = true
	rep.mtx.Unlock()
	resp := ruleRequest(t, http.MethodPost, urlA+"/api/v1/rules/checkout", group)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
}

// TestLocalGroupsImportedOnce: rule groups set through the API before the
// node kept them in the cluster are imported into it on the first start,
// and a group deleted in the cluster afterwards is not imported again.
func TestLocalGroupsImportedOnce(t *testing.T) {
	rep := newMemReplica()
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "team-a"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "team-a", "old.yaml"),
		[]byte("groups:\n  - name: kept\n    rules:\n      - alert: Slow\n        expr: vector(1) > 2\n"), 0o644))
	start := func() *Ruler {
		o := DefaultOptions()
		o.Dir = dir
		o.Replica = rep
		r, err := New(o, noData{}, nil, nil)
		require.NoError(t, err)
		return r
	}
	r := start()
	require.Eventually(t, func() bool { return len(rep.Groups()) == 1 }, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, ReplicaGroup{Tenant: "team-a", Namespace: "old", Name: "kept"}, ReplicaGroup{Tenant: rep.Groups()[0].Tenant, Namespace: rep.Groups()[0].Namespace, Name: rep.Groups()[0].Name})
	r.Stop()

	require.NoError(t, rep.DeleteGroup(context.Background(), "team-a", "old", ""))
	r = start()
	defer r.Stop()
	require.Eventually(t, func() bool {
		_, err := os.Stat(filepath.Join(dir, "team-a", "old.yaml"))
		return os.IsNotExist(err)
	}, 20*time.Second, 10*time.Millisecond, "the deleted group's file goes")
	require.Empty(t, rep.Groups(), "not imported again")
}
