package plugin_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/grafana/grafana-plugin-sdk-go/backend"
	"github.com/grafana/grafana-plugin-sdk-go/experimental/datasourcetest"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/internal/demo"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/plugin/pkg/plugin"
	"github.com/hopwatch/hopwatch/plugin/pkg/plugintest"
)

var screenshots = flag.String("screenshots", "", "write the harness pages as PNGs into this directory (relative to the module root), e.g. docs/images")

// noChromiumEnv opts out of the browser tests on a machine without Chromium;
// without it a missing Chromium fails them, so CI cannot skip them unseen.
const noChromiumEnv = "HOPWATCH_NO_CHROMIUM"

// demoTenant is the tenant the harness's datasource uses.
const demoTenant = "demo"

// testPlugin is the datasource served as Grafana runs it (see plugintest.Main).
var testPlugin *datasourcetest.TestPluginClient

func TestMain(m *testing.M) {
	flag.Parse()
	plugintest.Main(m, &testPlugin)
}

// chromium finds the browser, or fails (or skips, with noChromiumEnv set)
// saying how to get it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(noChromiumEnv) != "" {
		t.Skipf("no chromium on PATH and %s is set: the harness page was not tested", noChromiumEnv)
	}
	t.Fatalf("no chromium on PATH: install Debian's package (apt-get install chromium; scripts/test does) or set %s=1 to skip the browser tests", noChromiumEnv)
	return ""
}

// buildHarness builds harness/dist with webpack (npm run harness), after
// npm ci when node_modules is missing or stale.
func buildHarness(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("npm"); err != nil {
		if os.Getenv(noChromiumEnv) != "" {
			t.Skip("npm not on PATH: the harness page was not built")
		}
		t.Fatalf("npm not on PATH: the harness page cannot be built (set %s=1 to skip the browser tests)", noChromiumEnv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	lock, err := os.Stat("package-lock.json")
	require.NoError(t, err)
	if inst, err := os.Stat(filepath.Join("node_modules", ".package-lock.json")); err != nil || inst.ModTime().Before(lock.ModTime()) {
		npm(t, ctx, "ci", "--no-audit", "--no-fund")
	}
	npm(t, ctx, "run", "harness")
}

// startHopwatch runs a hopwatch node on loopback with multitenancy on and
// stops it when the test ends.
func startHopwatch(t *testing.T) server.Addrs {
	return plugintest.StartHopwatch(t, func(c *server.Config) { c.MultitenancyEnabled = true })
}

// sendDemo sends `hopwatch demo`'s workload (five services, fixed seed) for
// the two minutes before end, 20 traces a second, as the demo exports it.
func sendDemo(t *testing.T, grpcAddr string, end time.Time) {
	t.Helper()
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	defer conn.Close()
	client := ptraceotlp.NewGRPCClient(conn)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-scope-orgid", demoTenant)
	gen := demo.NewGenerator(1)
	for at := end.Add(-2 * time.Minute); !at.After(end); at = at.Add(time.Second) {
		_, err := client.Export(ctx, ptraceotlp.NewExportRequestFromTraces(gen.Traces(at, 20)))
		require.NoError(t, err)
	}
}

// harness is what the test serves on loopback: the page, and Grafana's two
// datasource endpoints the page needs, answered by the plugin over gRPC.
type harness struct {
	pctx    backend.PluginContext
	queries []backend.DataQuery
	titles  map[string]string
}

func (h *harness) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/" || r.URL.Path == "/index.html":
		http.ServeFile(w, r, filepath.Join("harness", "index.html"))
	case strings.HasPrefix(r.URL.Path, "/api/resources/"):
		h.resource(w, r)
	case r.URL.Path == "/api/query":
		h.query(w, r)
	default:
		http.FileServer(http.Dir(filepath.Join("harness", "dist"))).ServeHTTP(w, r)
	}
}

func (h *harness) resource(w http.ResponseWriter, r *http.Request) {
	path := strings.TrimPrefix(r.URL.Path, "/api/resources/")
	var resp *backend.CallResourceResponse
	err := testPlugin.CallResource(r.Context(), &backend.CallResourceRequest{
		PluginContext: h.pctx, Path: path, Method: http.MethodGet, URL: path + "?" + r.URL.RawQuery,
	}, backend.CallResourceResponseSenderFunc(func(res *backend.CallResourceResponse) error {
		resp = res
		return nil
	}))
	if err != nil || resp == nil {
		http.Error(w, fmt.Sprintf("CallResource %s: %v", path, err), http.StatusBadGateway)
		return
	}
	for k, vs := range resp.Headers {
		w.Header()[k] = vs
	}
	w.WriteHeader(resp.Status)
	_, _ = w.Write(resp.Body)
}

func (h *harness) query(w http.ResponseWriter, r *http.Request) {
	resp, err := testPlugin.QueryData(r.Context(), &backend.QueryDataRequest{PluginContext: h.pctx, Queries: h.queries})
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	body, err := json.Marshal(resp)
	if err == nil {
		var m map[string]json.RawMessage
		if err = json.Unmarshal(body, &m); err == nil {
			m["titles"], _ = json.Marshal(h.titles)
			body, err = json.Marshal(m)
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

func dataQuery(refID string, q map[string]any, from, to time.Time, interval time.Duration) backend.DataQuery {
	b, _ := json.Marshal(q)
	return backend.DataQuery{RefID: refID, JSON: b, Interval: interval, MaxDataPoints: 1000, TimeRange: backend.TimeRange{From: from, To: to}}
}

// startHarness runs hopwatch with the demo workload and serves the harness
// page in front of the plugin; it returns the page's base URL.
func startHarness(t *testing.T) string {
	t.Helper()
	buildHarness(t)
	addrs := startHopwatch(t)
	end := time.Now().Truncate(time.Second)
	sendDemo(t, addrs.OTLPGRPC, end)
	jd, _ := json.Marshal(map[string]string{"tenant": demoTenant})
	h := &harness{
		pctx: backend.PluginContext{
			PluginID: plugin.ID, Namespace: "default",
			DataSourceInstanceSettings: &backend.DataSourceInstanceSettings{
				UID: "hopwatch-harness", Name: "hopwatch", URL: "http://" + addrs.Web, JSONData: jd, Updated: time.Unix(1, 0),
			},
		},
		titles: map[string]string{
			"A": `Exact P50/P90/P99 over 30s, {span_kind="SPAN_KIND_SERVER"} by service`,
			"B": "Hops of log-indexer",
			"C": "Service graph",
		},
	}
	from, to := end.Add(-90*time.Second), end
	// The aggregate tier (histograms, service graph) is written at flush
	// time, by the wall clock: those queries reach past the workload.
	aggTo := end.Add(time.Minute)
	h.queries = []backend.DataQuery{
		dataQuery("A", map[string]any{"mode": "exact", "selector": `{span_kind="SPAN_KIND_SERVER", service=~"api-gateway|log-store"}`, "window": "30s", "by": []string{"service"}}, from, to, 2*time.Second),
		dataQuery("B", map[string]any{"mode": "hops", "service": "log-indexer", "window": "5m"}, from, aggTo, 5*time.Second),
		dataQuery("C", map[string]any{"mode": "graph", "window": "5m"}, from, aggTo, 5*time.Second),
	}
	// Labels are visible once the node has taken the spans in.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var resp *backend.CallResourceResponse
		err := testPlugin.CallResource(context.Background(), &backend.CallResourceRequest{PluginContext: h.pctx, Path: "label/service/values", Method: http.MethodGet, URL: "label/service/values"},
			backend.CallResourceResponseSenderFunc(func(r *backend.CallResourceResponse) error { resp = r; return nil }))
		if err == nil && resp != nil && strings.Contains(string(resp.Body), "api-gateway") {
			break
		}
		require.True(t, time.Now().Before(deadline), "the demo's services never showed up: %v %v", err, resp)
		time.Sleep(200 * time.Millisecond)
	}

	// The aggregate tier (the hops' histograms) is written at flush time.
	for {
		resp, err := testPlugin.QueryData(context.Background(), &backend.QueryDataRequest{PluginContext: h.pctx, Queries: h.queries[1:2]})
		require.NoError(t, err)
		if len(resp.Responses["B"].Frames) > 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "no hops of log-indexer: %v", resp.Responses["B"].Error)
		time.Sleep(200 * time.Millisecond)
	}

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// browser starts headless Chromium for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.WindowSize(1200, 900),
		// Root in a container has no user namespaces for the sandbox.
		chromedp.NoSandbox,
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 45*time.Second)
	t.Cleanup(func() {
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
	})
	return ctx
}

// css selects with a CSS selector (DOM.querySelector).
type css = chromedp.CSS

// texts returns the text of every element matching the CSS selector.
func texts(ctx context.Context, sel string) ([]string, error) {
	return chromedp.Run(ctx, chromedp.Evaluate[[]string](fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).map(e => e.textContent.trim())`, sel)))
}

// bodyText is the page's text, for failure messages.
func bodyText(ctx context.Context) string {
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		return err.Error()
	}
	return s
}

// waitText waits until an element matching sel has text containing want.
func waitText(sel, want string) chromedp.Action[chromedp.Void] {
	poll := chromedp.Poll[bool](fmt.Sprintf(`Array.from(document.querySelectorAll(%q)).some(e => e.textContent.includes(%q))`, sel, want), chromedp.WithPollingTimeout(15*time.Second))
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := poll(ctx, t)
		if err != nil {
			err = fmt.Errorf("waiting for %q in %s: %w", want, sel, err)
		}
		return chromedp.Void{}, err
	}
}

// shot writes the element sel as <dir>/<name>.png when -screenshots is set.
func shot(t *testing.T, sel, name string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, tgt *chromedp.Target) error {
		if *screenshots == "" {
			return nil
		}
		png, err := chromedp.Screenshot(css(sel))(ctx, tgt)
		if err != nil {
			return err
		}
		dir := *screenshots
		if !filepath.IsAbs(dir) {
			dir = filepath.Join("..", dir) // the test runs in plugin/
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		t.Logf("writing %s", filepath.Join(dir, name+".png"))
		return os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644)
	})
}

// TestHarness renders the built editors and the frames of a QueryData call
// in headless Chromium, against a real hopwatch node with the demo workload,
// and checks the DOM. With -screenshots=docs/images it also writes the
// pictures the README shows.
func TestHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("the browser test is not short")
	}
	chromium(t)
	base := startHarness(t)
	ctx := browser(t)
	page := func(name string) string { return base + "/?page=" + url.QueryEscape(name) }
	const editor = `[data-testid="hopwatch-query-editor"]`
	const root = `#root > div > div`

	t.Run("query editor", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(page("query")),
			chromedp.WaitVisible(css(editor)),
		))
		labels, err := texts(ctx, editor+` label`)
		require.NoError(t, err)
		for _, want := range []string{"Exact", "Sketch", "Hops of", "Service graph", "Watermarks", "Quantiles", "Window", "Selector"} {
			require.Contains(t, labels, want, "the editor's labels")
		}
		// The quantile picker holds the default quantiles.
		require.NoError(t, chromedp.Do(ctx, waitText(editor, "P50"), waitText(editor, "P90"), waitText(editor, "P99")))

		// The window field edits the query.
		window, err := chromedp.Run(ctx, chromedp.Value(css(`input[aria-label="Window"]`)))
		require.NoError(t, err)
		require.Equal(t, "1m", window)
		require.NoError(t, chromedp.Do(ctx,
			chromedp.SendKeys(css(`input[aria-label="Window"]`), "\b\b5m"),
			waitText(`[data-testid="query-model"]`, `"window":"5m"`),
		))

		// Typing a label name suggests the tenant's labels (CallResource to
		// hopwatch); its values are the demo's services; Add writes the matcher.
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Click(css(`input[aria-label="Label name"]`)),
			chromedp.SendKeys(css(`input[aria-label="Label name"]`), "serv"),
			waitText(`[role="option"]`, "service"),
		))
		options, err := texts(ctx, `[role="option"]`)
		require.NoError(t, err)
		require.Contains(t, options, "service")
		require.NotContains(t, options, "span_kind", "typing filters the suggestions")
		require.NoError(t, chromedp.Do(ctx,
			chromedp.SendKeys(css(`input[aria-label="Label name"]`), "ice\r"),
			chromedp.Click(css(`input[aria-label="Label value"]`)),
			waitText(`[role="option"]`, "api-gateway"),
		))
		options, err = texts(ctx, `[role="option"]`)
		require.NoError(t, err)
		for _, svc := range []string{"web-frontend", "api-gateway", "log-processor", "log-indexer", "log-store"} {
			require.Contains(t, options, svc, "the demo's services")
		}
		require.NoError(t, chromedp.Do(ctx,
			chromedp.SendKeys(css(`input[aria-label="Label value"]`), "api-gateway\r"),
			chromedp.Click(css(`button[aria-label="Add matcher"]`)),
			waitText(`[data-testid="query-model"]`, `"selector":"{service=\"api-gateway\"}"`),
			shot(t, root, "query-editor"),
		))
		model, err := texts(ctx, `[data-testid="query-model"]`)
		require.NoError(t, err)
		var q map[string]any
		require.NoError(t, json.Unmarshal([]byte(model[0]), &q))
		require.Equal(t, map[string]any{"refId": "A", "mode": "exact", "quantiles": []any{0.5, 0.9, 0.99}, "window": "5m", "selector": `{service="api-gateway"}`}, q)
	})

	t.Run("config editor", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(page("config")),
			chromedp.WaitVisible(css(`#config-url`)),
		))
		u, err := chromedp.Run(ctx, chromedp.Value(css(`#config-url`)))
		require.NoError(t, err)
		require.Equal(t, "http://hopwatch:9800", u)
		tenant, err := chromedp.Run(ctx, chromedp.Value(css(`#config-tenant`)))
		require.NoError(t, err)
		require.Equal(t, demoTenant, tenant)
		configured, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('input')).filter(i => i.value === 'configured').map(i => i.id)`))
		require.NoError(t, err)
		require.Equal(t, []string{"config-token"}, configured, "a stored token shows as configured, never its value")
		labels, err := texts(ctx, `label`)
		require.NoError(t, err)
		for _, want := range []string{"URL", "Tenant", "Bearer token", "Traces datasource UID", "Trace URL"} {
			require.Contains(t, labels, want)
		}
		require.NoError(t, chromedp.Do(ctx, shot(t, root, "config-editor")))
		require.NoError(t, chromedp.Do(ctx,
			chromedp.SendKeys(css(`#config-tenant`), "-b"),
			waitText(`[data-testid="config-model"]`, `"tenant":"demo-b"`),
		))
	})

	t.Run("data", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Navigate(page("data")),
			waitText(`#root`, "Service graph"),
		), "the page says: %s", bodyText(ctx))
		errs, err := texts(ctx, `[data-testid="frame-error"]`)
		require.NoError(t, err)
		require.Empty(t, errs)
		names, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('[data-testid="frame"]')).map(e => e.dataset.frameName)`))
		require.NoError(t, err)
		for _, want := range []string{"nodes", "edges"} {
			require.Contains(t, names, want)
		}
		require.True(t, slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, "queue ") || strings.HasPrefix(n, "stage ") }), "hop frames in %q", names)
		plots, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll('[data-testid="plot"] polyline').length`))
		require.NoError(t, err)
		require.Positive(t, plots)
		require.NoError(t, chromedp.Do(ctx,
			waitText(`[data-testid="data-ready"]`, "P99 api-gateway"),
			shot(t, root, "query-data"),
		))
	})
}
