package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/hopwatch/hopwatch/internal/server"
)

// alertmanagerBinary is $HOPWATCH_ALERTMANAGER (scripts/test builds
// Alertmanager v0.31.1 and sets it), else an Alertmanager on the machine.
func alertmanagerBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("HOPWATCH_ALERTMANAGER"); p != "" {
		return p
	}
	for _, p := range []string{"/usr/bin/prometheus-alertmanager", "/usr/local/bin/alertmanager"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	p, err := exec.LookPath("alertmanager")
	require.NoError(t, err, "no Alertmanager: run the tests with scripts/test (it builds one) or set HOPWATCH_ALERTMANAGER")
	return p
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

// startAlertmanager runs a real Alertmanager on loopback and returns its
// base URL.
func startAlertmanager(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "alertmanager.yml")
	require.NoError(t, os.WriteFile(cfg, []byte(`route:
  receiver: devnull
  group_wait: 0s
  group_interval: 1s
receivers:
  - name: devnull
`), 0o644))
	addr := freePort(t)
	cmd := exec.Command(alertmanagerBinary(t), "--config.file="+cfg, "--storage.path="+dir,
		"--web.listen-address="+addr, "--cluster.listen-address=")
	cmd.Stdout, cmd.Stderr = t.Output(), t.Output()
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	url := "http://" + addr
	waitFor(t, "alertmanager ready", func() bool {
		resp, err := http.Get(url + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return url
}

type amAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

func alertmanagerAlerts(t *testing.T, url string) []amAlert {
	t.Helper()
	resp, err := http.Get(url + "/api/v2/alerts")
	require.NoError(t, err)
	defer resp.Body.Close()
	var out []amAlert
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&out))
	return out
}

func findAlert(alerts []amAlert, name string) *amAlert {
	for i := range alerts {
		if alerts[i].Labels["alertname"] == name {
			return &alerts[i]
		}
	}
	return nil
}

// webhookReceiver collects what hopwatch POSTs to a webhook.
type webhookReceiver struct {
	mtx    sync.Mutex
	alerts []amAlert
	fails  int // answer 503 to this many requests first
}

func (h *webhookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mtx.Lock()
	defer h.mtx.Unlock()
	if h.fails > 0 {
		h.fails--
		http.Error(w, "try again", http.StatusServiceUnavailable)
		return
	}
	var batch []amAlert
	body, _ := io.ReadAll(r.Body)
	if json.Unmarshal(body, &batch) == nil {
		h.alerts = append(h.alerts, batch...)
	}
}

func (h *webhookReceiver) find(name string) *amAlert {
	h.mtx.Lock()
	defer h.mtx.Unlock()
	return findAlert(h.alerts, name)
}

func TestAlertsReachAlertmanagerAndWebhook(t *testing.T) {
	amURL := startAlertmanager(t)
	hook := &webhookReceiver{fails: 2} // the webhook retries
	hookSrv := httptest.NewServer(hook)
	t.Cleanup(hookSrv.Close)

	rulesFile := filepath.Join(t.TempDir(), "latency.yml")
	require.NoError(t, os.WriteFile(rulesFile, []byte(`groups:
  - name: latency
    interval: 1s
    rules:
      - alert: CheckoutSlow
        expr: quantile_over_time(0.99, hopwatch_latency_raw_seconds{service="checkout"}[5m]) > 0.04
        labels:
          severity: page
        annotations:
          summary: 'checkout p99 is {{ $value | humanizeDuration }}'
`), 0o644))
	_, addrs := startServer(t, func(c *server.Config) {
		c.Alerting.RulesPaths = []string{rulesFile}
		c.Alerting.AlertmanagerURLs = []string{amURL}
		c.Alerting.WebhookURLs = []string{hookSrv.URL}
		c.Alerting.EvaluationInterval = time.Second
		c.RawSamplingEnabled = false
	})

	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure())
	require.NoError(t, err)
	durations := make([]time.Duration, 40)
	for i := range durations {
		durations[i] = 50 * time.Millisecond
	}
	emit(t, exp, []*spanSet{{service: "checkout", name: "POST /pay", kind: trace.SpanKindServer, durations: durations}})

	waitFor(t, "CheckoutSlow at Alertmanager", func() bool { return findAlert(alertmanagerAlerts(t, amURL), "CheckoutSlow") != nil })
	a := findAlert(alertmanagerAlerts(t, amURL), "CheckoutSlow")
	require.Equal(t, "page", a.Labels["severity"])
	require.Equal(t, "checkout", a.Labels["service"])
	require.Equal(t, "checkout p99 is 50ms", a.Annotations["summary"])
	waitFor(t, "CheckoutSlow at the webhook", func() bool { return hook.find("CheckoutSlow") != nil })

	// A group set through the ruler API fires too, and both show in
	// Prometheus's /api/v1/rules.
	base := "http://" + addrs.Web
	resp, err := http.Post(base+"/api/v1/rules/team", "application/yaml", strings.NewReader(`name: traffic
interval: 1s
rules:
  - alert: CheckoutHasTraffic
    expr: sum(traces_spanmetrics_calls_total{service="checkout"}) > 0
`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	waitFor(t, "CheckoutHasTraffic at Alertmanager", func() bool { return findAlert(alertmanagerAlerts(t, amURL), "CheckoutHasTraffic") != nil })

	var rules struct {
		Data struct {
			Groups []struct {
				Name  string `json:"name"`
				File  string `json:"file"`
				Rules []struct {
					Name  string `json:"name"`
					State string `json:"state"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"data"`
	}
	getJSONInto(t, base+"/api/v1/rules", &rules)
	names := map[string]string{}
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			names[g.Name+"/"+r.Name] = r.State
		}
	}
	require.Equal(t, "firing", names["latency/CheckoutSlow"])
	require.Contains(t, names, "traffic/CheckoutHasTraffic")

	var alerts struct {
		Data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		} `json:"data"`
	}
	getJSONInto(t, base+"/api/v1/alerts", &alerts)
	firing := map[string]bool{}
	for _, a := range alerts.Data.Alerts {
		firing[a.Labels["alertname"]] = a.State == "firing"
	}
	require.True(t, firing["CheckoutSlow"])

	// The group reads back as YAML; deleting it removes it.
	resp, err = http.Get(base + "/api/v1/rules/team/traffic")
	require.NoError(t, err)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, string(body), "CheckoutHasTraffic")
	req, _ := http.NewRequest(http.MethodDelete, base+"/api/v1/rules/team/traffic", nil)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	resp, err = http.Get(base + "/api/v1/rules/team/traffic")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestRuleAPIValidationNamesTheLine(t *testing.T) {
	_, addrs := startServer(t, nil)
	base := "http://" + addrs.Web
	for _, tc := range []struct{ body, want string }{
		{"name: g\nrules:\n  - alert: A\n    expr: sum(rate(x[5m])\n", "line 4"},
		{"name: g\nrules:\n  - record: r\n    expr: up\n    for: 1m\n", "line 3"},
		{"name: g\nrules:\n  - alert: A\n    expr: up\n    for: forever\n", "line 5"},
		{"name: [\n", "yaml"},
	} {
		resp, err := http.Post(base+"/api/v1/rules/ns", "application/yaml", strings.NewReader(tc.body))
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, string(b))
		require.Contains(t, string(b), tc.want, "body %q", tc.body)
	}
	resp, err := http.Get(base + "/api/v1/rules/ns/g")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "nothing was stored")
}

func getJSONInto(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	require.NoError(t, json.Unmarshal(b, v), string(b))
}

// TestLaggingWriterHoldsAlertsBack: a writer whose spans are ten minutes
// old holds the tenant's watermark, and with it rule evaluation, ten
// minutes back, so recent slow spans of another writer fire nothing yet.
// Once the lagging writer is excluded (or has been silent longer than the
// heartbeat timeout) evaluation catches up and the alert fires.
func TestLaggingWriterHoldsAlertsBack(t *testing.T) {
	for _, release := range []string{"exclude", "timeout"} {
		t.Run(release, func(t *testing.T) {
			amURL := startAlertmanager(t)
			rulesFile := filepath.Join(t.TempDir(), "latency.yml")
			require.NoError(t, os.WriteFile(rulesFile, []byte(`groups:
  - name: latency
    interval: 1s
    rules:
      - alert: CheckoutSlow
        expr: quantile_over_time(0.99, hopwatch_latency_raw_seconds{service="checkout"}[2m]) > 0.04
`), 0o644))
			reg := prometheus.NewRegistry()
			_, addrs := startServerReg(t, reg, func(c *server.Config) {
				c.Alerting.RulesPaths = []string{rulesFile}
				c.Alerting.AlertmanagerURLs = []string{amURL}
				c.Alerting.EvaluationInterval = time.Second
				c.RawSamplingEnabled = false
				if release == "timeout" {
					c.Ingest.Watermark.HeartbeatTimeout = 3 * time.Second
				} else {
					c.Ingest.Watermark.HeartbeatTimeout = 10 * time.Minute
				}
			})
			exporter := func(writer string) *otlptrace.Exporter {
				exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
					otlptracehttp.WithHeaders(map[string]string{"X-Hopwatch-Writer": writer}))
				require.NoError(t, err)
				return exp
			}
			// The lagging writer: one fast span of another service, ten
			// minutes old.
			emitFrom(t, exporter("lagger"), time.Now().Add(-10*time.Minute), []*spanSet{{service: "batch", name: "job", kind: trace.SpanKindInternal, durations: []time.Duration{time.Millisecond}}})
			// The current writer: slow checkout spans a minute old.
			slow := make([]time.Duration, 20)
			for i := range slow {
				slow[i] = 50 * time.Millisecond
			}
			emit(t, exporter("fresh"), []*spanSet{{service: "checkout", name: "POST /pay", kind: trace.SpanKindServer, durations: slow}})

			// Evaluation is held about ten minutes back.
			waitFor(t, "evaluation held back", func() bool {
				return counter(t, reg, "hopwatch_ruler_watermark_holdback_seconds", map[string]string{"tenant": "anonymous"}) > 9*60
			})
			if release == "exclude" {
				// Held, the alert must not fire: evaluations go on at the
				// held time while nothing arrives at Alertmanager.
				before := sumMetric(t, reg, "prometheus_rule_evaluations_total")
				waitFor(t, "more evaluations", func() bool { return sumMetric(t, reg, "prometheus_rule_evaluations_total") >= before+3 })
				require.Nil(t, findAlert(alertmanagerAlerts(t, amURL), "CheckoutSlow"), "fired while the watermark held the window back")

				resp, err := http.Post("http://"+addrs.Web+"/api/v1/writers/lagger/exclude", "", nil)
				require.NoError(t, err)
				resp.Body.Close()
				require.Equal(t, http.StatusOK, resp.StatusCode)
			}
			waitFor(t, "CheckoutSlow at Alertmanager", func() bool { return findAlert(alertmanagerAlerts(t, amURL), "CheckoutSlow") != nil })
			require.Less(t, counter(t, reg, "hopwatch_ruler_watermark_holdback_seconds", map[string]string{"tenant": "anonymous"}), 9*60.0)
		})
	}
}

// sumMetric adds up every series of a counter or gauge family.
func sumMetric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				sum += metricValue(m)
			}
		}
	}
	return sum
}

// TestBaselineAnomalyAlert: with anomaly alerts on for checkout, a steady
// P99 builds a baseline; a step from 5 ms to 50 ms fires
// HopwatchLatencyAnomaly at a real Alertmanager, and the generated group
// is listed like any other.
func TestBaselineAnomalyAlert(t *testing.T) {
	amURL := startAlertmanager(t)
	hook := &webhookReceiver{}
	hookSrv := httptest.NewServer(hook)
	t.Cleanup(hookSrv.Close)
	_, addrs := startServer(t, func(c *server.Config) {
		c.Alerting.AlertmanagerURLs = []string{amURL}
		c.Alerting.WebhookURLs = []string{hookSrv.URL}
		c.Alerting.EvaluationInterval = time.Second
		c.RawSamplingEnabled = false
		// Short windows and baseline keep the test short. A step is
		// anomalous until the baseline takes it in (one window later), so
		// the alert fires on its first anomalous evaluation here; the count
		// of consecutive windows is the unit test's.
		c.WindowQuantiles.Windows = []time.Duration{3 * time.Second}
		a := &c.Alerting.Anomaly
		a.Selector = `{service="checkout"}`
		a.Window = 3 * time.Second
		a.Baseline = 15 * time.Second
		a.Windows = 1
		a.MinBaselineSamples = 6
	})
	exp, err := otlptracehttp.New(context.Background(), otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithInsecure())
	require.NoError(t, err)
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "checkout"))),
		sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tr := tp.Tracer("anomaly")
	send := func(d time.Duration) {
		now := time.Now()
		for i := range 10 {
			// 4.5..5.4 ms: a steady baseline with some spread.
			dd := d + time.Duration(i-5)*d/50
			_, span := tr.Start(context.Background(), "POST /pay", trace.WithSpanKind(trace.SpanKindServer), trace.WithTimestamp(now.Add(-dd)))
			span.End(trace.WithTimestamp(now))
		}
	}
	// A baseline of steady 5 ms windows.
	base := "http://" + addrs.Web
	waitFor(t, "a baseline", func() bool {
		send(5 * time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		var res struct {
			Data struct {
				Result []struct {
					Value [2]any `json:"value"`
				} `json:"result"`
			} `json:"data"`
		}
		getJSONInto(t, base+"/api/v1/query?query="+url.QueryEscape(`count_over_time(hopwatch_window_latency_seconds{service="checkout", quantile="0.99"}[12s] offset 3s)`), &res)
		if len(res.Data.Result) == 0 {
			return false
		}
		n, _ := strconv.ParseFloat(res.Data.Result[0].Value[1].(string), 64)
		return n >= 8
	})
	require.Nil(t, findAlert(alertmanagerAlerts(t, amURL), "HopwatchLatencyAnomaly"), "no anomaly on a steady baseline")
	// The step.
	waitFor(t, "HopwatchLatencyAnomaly at Alertmanager", func() bool {
		send(50 * time.Millisecond)
		time.Sleep(100 * time.Millisecond)
		return findAlert(alertmanagerAlerts(t, amURL), "HopwatchLatencyAnomaly") != nil
	})
	a := findAlert(alertmanagerAlerts(t, amURL), "HopwatchLatencyAnomaly")
	require.Equal(t, "checkout", a.Labels["service"])
	require.Equal(t, "baseline", a.Labels["anomaly"])
	waitFor(t, "HopwatchLatencyAnomaly at the webhook", func() bool { return hook.find("HopwatchLatencyAnomaly") != nil })
	require.Equal(t, "checkout", hook.find("HopwatchLatencyAnomaly").Labels["service"])

	var rules struct {
		Data struct {
			Groups []struct {
				Name string `json:"name"`
			} `json:"groups"`
		} `json:"data"`
	}
	getJSONInto(t, base+"/api/v1/rules", &rules)
	require.Len(t, rules.Data.Groups, 1)
	require.Equal(t, "latency-baseline", rules.Data.Groups[0].Name)
	resp, err := http.Get(base + "/api/v1/rules/hopwatch-anomaly/latency-baseline")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
}
