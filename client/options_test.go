package client

import (
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

func TestDefaultOptionsNeedTargetAndWriter(t *testing.T) {
	o := DefaultOptions()
	err := o.Validate()
	require.ErrorContains(t, err, "Target must be set")
	require.ErrorContains(t, err, "Writer must be set")
	o.Target, o.Writer = "127.0.0.1:4317", "host-1/1234"
	require.NoError(t, o.Validate())
}

func TestOptionsValidateReportsEveryProblem(t *testing.T) {
	o := Options{
		Target:          "x:1",
		Writer:          "tab\there",
		Tenant:          "a/b",
		MaxBatchRecords: 0,
		MaxBatchBytes:   100,
		BatchInterval:   -time.Second,
		QueueSize:       -1,
		FullPolicy:      7,
		DeadlineMargin:  -time.Millisecond,
		AckTimeout:      -time.Second,
		Backoff:         Backoff{Initial: time.Second, Max: time.Millisecond, Multiplier: 0.5, Jitter: 2},
		SpanDimensions:  []string{"http_method", "http.method"},
	}
	err := o.Validate()
	for _, want := range []string{
		`Writer "tab\there" must be printable ASCII`,
		`Tenant: hopwatch/tenant: tenant ID "a/b" has character '/'`,
		"MaxBatchRecords 0 outside [1, 1048576]",
		"MaxBatchBytes 100 is less than the minimum of 16384",
		"BatchInterval -1s must be positive",
		"QueueSize -1 must be at least MaxBatchRecords (0)",
		"FullPolicy FullPolicy(7) is not one of block, drop",
		"DeadlineMargin -1ms must not be negative",
		"AckTimeout -1s must not be negative",
		"Backoff.Max 1ms must be at least Backoff.Initial (1s)",
		"Backoff.Multiplier 0.5 must be at least 1",
		"Backoff.Jitter 2 outside [0, 1]",
		"MaxSeries 0 must be positive",
		`SpanDimensions[1]: label name "http.method" has character '.' at offset 4`,
	} {
		require.ErrorContains(t, err, want)
	}
	require.Len(t, strings.Split(err.Error(), "\n"), 14)

	o = DefaultOptions()
	o.Target, o.Writer = "x:1", strings.Repeat("w", 257)
	require.ErrorContains(t, o.Validate(), "Writer is 257 bytes, longer than hopwatch's limit of 256")

	_, err = New(o, nil, nil)
	require.ErrorContains(t, err, "hopwatch/client: invalid options: ")
}

func TestBackoffDelay(t *testing.T) {
	b := Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.2}
	f := func(n int, r float64, want time.Duration) {
		t.Helper()
		require.Equal(t, want, b.Delay(n, r))
	}
	f(0, 0.5, 100*time.Millisecond)
	f(3, 0.5, 800*time.Millisecond)
	f(0, 0, 80*time.Millisecond)
	f(0, 0.75, 110*time.Millisecond)
	f(7, 0.5, 10*time.Second) // 12.8s, capped
	f(7, 0, 8*time.Second)
	f(math.MaxInt, 0.5, 10*time.Second)
}

func TestFullPolicyText(t *testing.T) {
	for _, p := range []FullPolicy{Block, Drop} {
		text, err := p.MarshalText()
		require.NoError(t, err)
		var q FullPolicy
		require.NoError(t, q.UnmarshalText(text))
		require.Equal(t, p, q)
	}
	var q FullPolicy
	require.ErrorContains(t, q.UnmarshalText([]byte("wait")), `full policy "wait" is not one of block, drop`)
	_, err := FullPolicy(9).MarshalText()
	require.Error(t, err)
}

func TestMetricsRegistration(t *testing.T) {
	ts := startServer(t)
	reg := prometheus.NewRegistry()
	c, err := New(testOptions(ts), reg, nil)
	require.NoError(t, err)
	ss := ts.accept(t)
	wait := ss.serveInBackground(t, newStore(), 10)

	mfs, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	require.Equal(t, []string{
		"hopwatch_client_batches_retried_total",
		"hopwatch_client_batches_sent_total",
		"hopwatch_client_credit",
		"hopwatch_client_inflight_batches",
		"hopwatch_client_queue_capacity",
		"hopwatch_client_queue_length",
		"hopwatch_client_reconnects_total",
		"hopwatch_client_records_dropped_total",
		"hopwatch_client_records_sent_total",
		"hopwatch_client_send_duration_seconds",
	}, names)

	// A second client on the same registerer is refused, and told what to
	// do; nothing of it is left registered.
	_, err = New(testOptions(ts), reg, nil)
	require.ErrorContains(t, err, "WrapRegistererWith")
	mfs2, err := reg.Gather()
	require.NoError(t, err)
	require.Len(t, mfs2, len(mfs))

	require.NoError(t, c.Close(context.Background()))
	wait()
}

func TestMetricsOfClientsSideBySide(t *testing.T) {
	ts := startServer(t)
	reg := prometheus.NewRegistry()
	var (
		clients []*Client
		waits   []func()
	)
	for _, w := range []string{"a", "b"} {
		o := testOptions(ts)
		o.Writer = w
		c, err := New(o, prometheus.WrapRegistererWith(prometheus.Labels{"writer": w}, reg), nil)
		require.NoError(t, err)
		ss := ts.accept(t)
		clients = append(clients, c)
		waits = append(waits, ss.serveInBackground(t, newStore(), 10))
	}
	require.Equal(t, 2, testutil.CollectAndCount(reg, "hopwatch_client_queue_capacity"))
	for i, c := range clients {
		require.NoError(t, c.Close(context.Background()))
		waits[i]()
	}
}

func TestTokenIsValidatedWithoutBeingRepeated(t *testing.T) {
	f := func(token string) {
		t.Helper()
		o := DefaultOptions()
		o.Target, o.Writer, o.Token = "x:1", "w", token
		err := o.Validate()
		require.ErrorContains(t, err, "Token must be a bearer token")
		require.NotContains(t, err.Error(), token)
	}
	f("Bearer hw_secret-token-value")
	f("hw_secret token")
	f("hw_secret=token")
	f("hw_sécret")

	o := DefaultOptions()
	o.Target, o.Writer, o.Token = "x:1", "w", "hw_gxajcnnLMYCobZYO5hv7ciIdPL_cbl4c9YJGqS_nQP4"
	require.NoError(t, o.Validate())
}
