package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/ingest/watermark"
)

// memExclusions is a replicated exclusion store in memory, shared by two
// receivers as two nodes share the cluster's metadata.
type memExclusions struct {
	mtx      sync.Mutex
	set      map[string][]string
	watchers []chan struct{}
	down     bool
}

func (m *memExclusions) change(tenant, writer string, exclude bool) error {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	if m.down {
		return errors.New("no leader")
	}
	ws := slices.DeleteFunc(m.set[tenant], func(w string) bool { return w == writer })
	if exclude {
		ws = append(ws, writer)
	}
	m.set[tenant] = ws
	for _, ch := range m.watchers {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return nil
}

func (m *memExclusions) Exclude(_ context.Context, tenant, writer string) error {
	return m.change(tenant, writer, true)
}

func (m *memExclusions) Include(_ context.Context, tenant, writer string) error {
	return m.change(tenant, writer, false)
}

func (m *memExclusions) Excluded() map[string][]string {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	out := map[string][]string{}
	for t, ws := range m.set {
		out[t] = slices.Clone(ws)
	}
	return out
}

func (m *memExclusions) Watch() (<-chan struct{}, func()) {
	m.mtx.Lock()
	defer m.mtx.Unlock()
	ch := make(chan struct{}, 1)
	m.watchers = append(m.watchers, ch)
	return ch, func() {}
}

// TestReplicatedWriterExclusion: a writer excluded through one node's API
// is excluded on the other node too, including there before it first
// writes; included again on the second node, it holds both watermarks.
func TestReplicatedWriterExclusion(t *testing.T) {
	rep := &memExclusions{set: map[string][]string{}}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	node := func() (*Receiver, *httptest.Server) {
		r, err := New(DefaultOptions(), nopAppender{}, nil, nil)
		require.NoError(t, err)
		wg.Add(1)
		go func() { defer wg.Done(); r.UseExclusionReplica(ctx, rep) }()
		srv := httptest.NewServer(r.WritersHandler())
		t.Cleanup(srv.Close)
		return r, srv
	}
	a, srvA := node()
	b, srvB := node()
	require.Eventually(t, func() bool { return a.exclusions.Load() != nil && b.exclusions.Load() != nil }, 10*time.Second, time.Millisecond)

	now := time.Now().UnixNano()
	a.Watermarks().Observe("anonymous", []byte("lag"), now-int64(time.Hour), now)
	a.Watermarks().Observe("anonymous", []byte("ok"), now, now)
	post := func(url string) (int, map[string]any) {
		resp, err := http.Post(url, "", nil)
		require.NoError(t, err)
		defer resp.Body.Close()
		var body map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		return resp.StatusCode, body
	}
	code, body := post(srvA.URL + WritersPath + "/lag/exclude")
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, "excluded", body["data"].(map[string]any)["state"])
	mark, _ := a.Watermarks().Watermark("anonymous", time.Now().UnixNano())
	require.GreaterOrEqual(t, mark, now, "excluded on the node asked when the answer comes")

	// The other node: the writer starts excluded when it first writes.
	require.Eventually(t, func() bool { return len(b.Watermarks().Pinned("anonymous")) == 1 }, 10*time.Second, time.Millisecond)
	b.Watermarks().Observe("anonymous", []byte("lag"), now-int64(time.Hour), now)
	w, ok := b.Watermarks().Writer("anonymous", "lag", now)
	require.True(t, ok)
	require.Equal(t, watermark.Excluded, w.State)

	// Included on the second node: active on both.
	code, body = post(srvB.URL + WritersPath + "/lag/include")
	require.Equal(t, http.StatusOK, code, body)
	require.Eventually(t, func() bool {
		w, ok := a.Watermarks().Writer("anonymous", "lag", time.Now().UnixNano())
		return ok && w.State == watermark.Active
	}, 10*time.Second, time.Millisecond)

	// Unknown writers are 404; a store without a leader is 503, and
	// nothing changes.
	code, _ = post(srvB.URL + WritersPath + "/nobody/exclude")
	require.Equal(t, http.StatusNotFound, code)
	rep.mtx.Lock()
	rep.down = true
	rep.mtx.Unlock()
	code, body = post(srvA.URL + WritersPath + "/lag/exclude")
	require.Equal(t, http.StatusServiceUnavailable, code, body)
	w, _ = a.Watermarks().Writer("anonymous", "lag", time.Now().UnixNano())
	require.Equal(t, watermark.Active, w.State)
}
