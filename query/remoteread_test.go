package query

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	config_util "github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/prompb"
	"github.com/prometheus/prometheus/storage/remote"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// aggTenant opens an aggregate tier with one float sample a second of
// series m{tenant=<id>} over 100 s from 0.
func aggTenant(t *testing.T, id string) *tsdb.DB {
	t.Helper()
	db, err := tsdb.Open(t.TempDir(), nil, nil, tsdb.DefaultOptions(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	app := db.Appender(context.Background())
	for i := range int64(100) {
		_, err := app.Append(0, labels.FromStrings("__name__", "m", "tenant", id), i*1000, float64(i))
		require.NoError(t, err)
	}
	require.NoError(t, app.Commit())
	return db
}

// TestRemoteRead: POST /api/v1/read answers Prometheus's remote read
// client over TCP, in both response types, from the aggregate tier of the
// request's tenant only (it used to hang forever).
func TestRemoteRead(t *testing.T) {
	dbs := map[string]*tsdb.DB{"a": aggTenant(t, "a"), "b": aggTenant(t, "b")}
	opts := DefaultOptions()
	opts.MultitenancyEnabled = true
	api, err := New(opts, StorageFunc(func(id string) Queryable {
		if db, ok := dbs[id]; ok {
			return db
		}
		return nil
	}), nil, func() bool { return true }, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	srv := httptest.NewServer(api.Handler())
	t.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL + "/api/v1/read")
	require.NoError(t, err)

	read := func(id string, types ...prompb.ReadRequest_ResponseType) []float64 {
		t.Helper()
		c, err := remote.NewReadClient("test", &remote.ClientConfig{
			URL: &config_util.URL{URL: u}, Timeout: model.Duration(time.Minute),
			Headers: map[string]string{tenant.Header: id}, AcceptedResponseTypes: types, ChunkedReadLimit: 1 << 20,
		})
		require.NoError(t, err)
		ss, err := c.Read(context.Background(), &prompb.Query{
			StartTimestampMs: 10_000, EndTimestampMs: 19_999,
			Matchers: []*prompb.LabelMatcher{{Type: prompb.LabelMatcher_EQ, Name: "__name__", Value: "m"}},
		}, true)
		require.NoError(t, err)
		var vals []float64
		for ss.Next() {
			s := ss.At()
			require.Equal(t, id, s.Labels().Get("tenant"))
			it := s.Iterator(nil)
			for it.Next() == chunkenc.ValFloat {
				ts, v := it.At()
				if ts >= 10_000 && ts <= 19_999 {
					vals = append(vals, v)
				}
			}
			require.NoError(t, it.Err())
		}
		require.NoError(t, ss.Err())
		return vals
	}
	want := []float64{10, 11, 12, 13, 14, 15, 16, 17, 18, 19}
	for _, types := range [][]prompb.ReadRequest_ResponseType{
		{prompb.ReadRequest_SAMPLES},
		{prompb.ReadRequest_STREAMED_XOR_CHUNKS},
	} {
		require.Equal(t, want, read("a", types...), types)
		require.Equal(t, want, read("b", types...), types)
		require.Empty(t, read("nobody", types...), types)
	}

	// Without a tenant: refused at once, with a body.
	resp, err := http.Post(u.String(), "application/x-protobuf", nil)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
}
