package alerting

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/notifier"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestWebhookRetriesThenDeadLetters(t *testing.T) {
	var calls, failFirst atomic.Int64
	var got atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if n <= failFirst.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var batch []postableAlert
		require.NoError(t, json.NewDecoder(r.Body).Decode(&batch))
		got.Store(batch)
	}))
	defer srv.Close()
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusBadGateway) }))
	defer dead.Close()

	opts := WebhookOptions{Timeout: time.Second, MaxAttempts: 4, MinBackoff: time.Millisecond, MaxBackoff: 4 * time.Millisecond, QueueCapacity: 10}
	wh, err := newWebhook([]string{srv.URL, dead.URL}, opts, prometheus.NewRegistry(), nil)
	require.NoError(t, err)
	wh.start()
	defer wh.stop()

	failFirst.Store(3) // succeeds on the last allowed try
	wh.send([]*notifier.Alert{{Labels: labels.FromStrings("alertname", "Slow", "service", "checkout"), Annotations: labels.FromStrings("summary", "s")}})
	require.Eventually(t, func() bool { return testutil.ToFloat64(wh.sent.WithLabelValues(srv.URL)) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, 3.0, testutil.ToFloat64(wh.failed.WithLabelValues(srv.URL)))
	batch := got.Load().([]postableAlert)
	require.Equal(t, map[string]string{"alertname": "Slow", "service": "checkout"}, batch[0].Labels)
	require.Equal(t, "s", batch[0].Annotations["summary"])

	// The other webhook never accepts: after MaxAttempts the batch is dead.
	require.Eventually(t, func() bool { return testutil.ToFloat64(wh.dead.WithLabelValues(dead.URL)) == 1 }, 10*time.Second, 5*time.Millisecond)
	require.Equal(t, 4.0, testutil.ToFloat64(wh.failed.WithLabelValues(dead.URL)))
	require.Zero(t, testutil.ToFloat64(wh.dead.WithLabelValues(srv.URL)))
}
