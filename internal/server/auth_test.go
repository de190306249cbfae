package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/ingest"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/server"
	"github.com/hopwatch/hopwatch/internal/tenant"
)

// authNode is a node with authentication on, two tenants' tokens and an
// admin token file.
type authNode struct {
	reg   *prometheus.Registry
	addrs server.Addrs
	a, b  *authTenant
	// admin is in the admin token file (as its hash); unknown is a token
	// hopwatch has never seen.
	admin, unknown string
	adminFile      string
}

// authTenant is one tenant of an authNode and the names that mark its
// data.
type authTenant struct {
	id, token string
	service   string
	// writer prefixes its writer ids; group names its rule group.
	writer, group string
}

func newToken(t *testing.T) string {
	t.Helper()
	tok, err := auth.NewToken(nil)
	require.NoError(t, err)
	return tok
}

// startAuthNode starts a node with authentication on: tokens of tenants
// team-a and team-b given through Config.Tokens, one admin token in the
// admin token file.
func startAuthNode(t *testing.T, mutate func(*server.Config)) *authNode {
	t.Helper()
	n := &authNode{
		reg:       prometheus.NewRegistry(),
		a:         &authTenant{id: "team-a", token: newToken(t), service: "svc-a", writer: "writer-a", group: "group-a"},
		b:         &authTenant{id: "team-b", token: newToken(t), service: "svc-b", writer: "writer-b", group: "group-b"},
		admin:     newToken(t),
		unknown:   newToken(t),
		adminFile: filepath.Join(t.TempDir(), "admin-tokens"),
	}
	writeAdminTokens(t, n.adminFile, auth.FormatHash(auth.HashToken(n.admin)))
	_, n.addrs = startServerReg(t, n.reg, func(c *server.Config) {
		c.Auth.Enabled = true
		c.Auth.AdminTokenFile = n.adminFile
		c.Tokens = auth.TokenMap{auth.HashToken(n.a.token): n.a.id, auth.HashToken(n.b.token): n.b.id}
		if mutate != nil {
			mutate(c)
		}
	})
	return n
}

func writeAdminTokens(t *testing.T, path string, lines ...string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte("# admins\n"+strings.Join(lines, "\n")+"\n"), 0o600))
}

// bearer is the header of a request with tok; tenantID, if given, is
// sent as X-Scope-OrgID too.
func bearer(tok string, tenantID ...string) map[string]string {
	h := map[string]string{auth.AuthorizationHeader: "Bearer " + tok}
	if len(tenantID) > 0 {
		h[tenant.Header] = tenantID[0]
	}
	return h
}

// outgoing is ctx with hdr as gRPC metadata.
func outgoing(ctx context.Context, hdr map[string]string) context.Context {
	md := metadata.MD{}
	for k, v := range hdr {
		md.Set(k, v) // lower-cases the key
	}
	return metadata.NewOutgoingContext(ctx, md)
}

// refusals returns hopwatch_auth_refused_total by reason.
func refusals(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_auth_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "reason" {
					out[lp.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

// requireRefused requires exactly one more refusal, for reason, than in
// before.
func requireRefused(t *testing.T, reg *prometheus.Registry, before map[string]float64, reason, what string) {
	t.Helper()
	want := maps.Clone(before)
	want[reason]++
	require.Equal(t, want, refusals(t, reg), "%s: hopwatch_auth_refused_total", what)
}

// httpDo sends a request through c and returns its status, headers and
// body.
func httpDo(t *testing.T, c *http.Client, method, u, contentType string, body []byte, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	require.NoError(t, err)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, b
}

// webCall is a request to the web listener.
type webCall struct {
	name, method, path string
	// params are the query string of a GET, the form of other methods.
	params url.Values
	// yaml, if set, is the body instead of a form.
	yaml string
	// admin: the endpoint needs an admin token; else a tenant's.
	admin bool
	// ok is the status with a good credential; 0 means 200.
	ok int
}

func (w webCall) do(t *testing.T, c *http.Client, base string, hdr map[string]string) (int, http.Header, []byte) {
	t.Helper()
	u := base + w.path
	switch {
	case w.yaml != "":
		return httpDo(t, c, w.method, u, "application/yaml", []byte(w.yaml), hdr)
	case w.method == http.MethodGet:
		if len(w.params) > 0 {
			u += "?" + w.params.Encode()
		}
		return httpDo(t, c, w.method, u, "", nil, hdr)
	}
	return httpDo(t, c, w.method, u, "application/x-www-form-urlencoded", []byte(w.params.Encode()), hdr)
}

func (w webCall) okStatus() int {
	if w.ok == 0 {
		return http.StatusOK
	}
	return w.ok
}

// ruleGroup is a rule group named name whose alert always fires.
func ruleGroup(name string) string {
	return "name: " + name + "\ninterval: 1s\nrules:\n  - alert: Alert_" + strings.ReplaceAll(name, "-", "_") + "\n    expr: vector(1)\n"
}

// webCalls are the web endpoints: every tenant-scoped kind of request, and
// the admin ones.
func webCalls(now time.Time) []webCall {
	sec := func(t time.Time) string { return strconv.FormatInt(t.Unix(), 10) }
	window := url.Values{"start": {sec(now.Add(-10 * time.Minute))}, "end": {sec(now.Add(time.Minute))}}
	with := func(v url.Values, kv ...string) url.Values {
		out := maps.Clone(v)
		for i := 0; i < len(kv); i += 2 {
			out.Set(kv[i], kv[i+1])
		}
		return out
	}
	get, post := http.MethodGet, http.MethodPost
	return []webCall{
		{name: "query", method: get, path: "/api/v1/query", params: url.Values{"query": {"sum by (service, span_name) (traces_spanmetrics_calls_total)"}}},
		{name: "query POST", method: post, path: "/api/v1/query", params: url.Values{"query": {"sum by (service) (count_over_time(hopwatch_latency_raw_seconds[10m]))"}}},
		{name: "query_range", method: get, path: "/api/v1/query_range", params: with(window, "query", "sum by (service) (traces_spanmetrics_calls_total)", "step", "15")},
		{name: "series", method: get, path: "/api/v1/series", params: with(window, "match[]", `{__name__=~".+"}`)},
		{name: "labels", method: get, path: "/api/v1/labels", params: window},
		{name: "label values", method: get, path: "/api/v1/label/service/values", params: window},
		{name: "query_exemplars", method: get, path: "/api/v1/query_exemplars", params: with(window, "query", "traces_spanmetrics_latency")},
		{name: "latency", method: get, path: "/api/v1/latency", params: url.Values{"match[]": {"{}"}, "window": {"10m"}, "time": {sec(now.Add(time.Minute))}}},
		{name: "buildinfo", method: get, path: "/api/v1/status/buildinfo"},
		{name: "rules", method: get, path: "/api/v1/rules"},
		{name: "alerts", method: get, path: "/api/v1/alerts"},
		{name: "rule config POST", method: post, path: "/api/v1/rules/auth-ns", yaml: ruleGroup("refused-group"), ok: http.StatusAccepted},
		{name: "rule config GET", method: get, path: "/api/v1/rules/auth-ns"},
		{name: "writers", method: get, path: ingest.WritersPath},
		{name: "writer exclude", method: post, path: ingest.WritersPath + "/writer-a-grpc/exclude"},
		{name: "metrics", method: get, path: "/metrics", admin: true},
		{name: "reload", method: post, path: "/-/reload", admin: true},
		{name: "status config", method: get, path: "/api/v1/status/config", admin: true},
		{name: "status flags", method: get, path: "/api/v1/status/flags", admin: true},
		{name: "pprof", method: get, path: "/debug/pprof/", admin: true},
		{name: "cluster status", method: get, path: "/api/v1/cluster", admin: true},
		{name: "cluster member remove", method: http.MethodDelete, path: "/api/v1/admin/cluster/members/n9", admin: true, ok: http.StatusNotFound},
	}
}

// badCred is a credential refused, and how.
type badCred struct {
	name   string
	hdr    map[string]string
	status int
	code   codes.Code
	reason string
}

// tenantRefusals are the credentials refused on endpoints serving tenant
// team-a's data; adminRefusals those refused on admin endpoints.
func (n *authNode) tenantRefusals() []badCred {
	return []badCred{
		{"missing", nil, http.StatusUnauthorized, codes.Unauthenticated, "missing"},
		{"malformed", map[string]string{auth.AuthorizationHeader: "Basic dGVhbS1hOnB3"}, http.StatusUnauthorized, codes.Unauthenticated, "malformed"},
		{"wrong", bearer(n.unknown), http.StatusUnauthorized, codes.Unauthenticated, "invalid"},
		{"another tenant's", bearer(n.b.token, n.a.id), http.StatusForbidden, codes.PermissionDenied, "tenant_mismatch"},
		{"admin", bearer(n.admin), http.StatusForbidden, codes.PermissionDenied, "no_tenant"},
	}
}

func (n *authNode) adminRefusals() []badCred {
	return []badCred{
		{"missing", nil, http.StatusUnauthorized, codes.Unauthenticated, "missing"},
		{"malformed", map[string]string{auth.AuthorizationHeader: "Bearer hw_not a token"}, http.StatusUnauthorized, codes.Unauthenticated, "malformed"},
		{"wrong", bearer(n.unknown), http.StatusUnauthorized, codes.Unauthenticated, "invalid"},
		{"a tenant's", bearer(n.a.token), http.StatusForbidden, codes.PermissionDenied, "not_admin"},
	}
}

// refusedSpans is one span of service svc-refused, which no accepted
// request carries.
func refusedSpans() []sdktrace.ReadOnlySpan {
	start := time.Now().Add(-time.Minute)
	return tracetest.SpanStubs{{
		Name:        "refused-op",
		SpanKind:    trace.SpanKindServer,
		SpanContext: trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{0xde, 0xad}, SpanID: trace.SpanID{1}}),
		StartTime:   start,
		EndTime:     start.Add(time.Millisecond),
		Resource:    resource.NewSchemaless(attribute.String("service.name", "svc-refused")),
	}}.Snapshots()
}

// writeAs sends tn's spans with its token over OTLP/gRPC and OTLP/HTTP
// (OpenTelemetry's exporters) and the streaming client: spans spans
// through each.
func (n *authNode) writeAs(t *testing.T, tn *authTenant, spans int) {
	t.Helper()
	ctx := context.Background()
	gexp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(n.addrs.OTLPGRPC), otlptracegrpc.WithInsecure(),
		otlptracegrpc.WithHeaders(map[string]string{"authorization": "Bearer " + tn.token, "x-hopwatch-writer": tn.writer + "-grpc"}))
	require.NoError(t, err)
	emit(t, gexp, []*spanSet{{service: tn.service, name: "grpc-op", kind: trace.SpanKindServer, durations: spread(spans)}})
	hexp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(n.addrs.OTLPHTTP), otlptracehttp.WithInsecure(),
		otlptracehttp.WithHeaders(map[string]string{auth.AuthorizationHeader: "Bearer " + tn.token}))
	require.NoError(t, err)
	emit(t, hexp, []*spanSet{{service: tn.service, name: "http-op", kind: trace.SpanKindServer, durations: spread(spans)}})

	opts := client.DefaultOptions()
	opts.Target = n.addrs.OTLPGRPC
	opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	opts.Writer = tn.writer + "-stream"
	opts.Token = tn.token
	c, err := client.New(opts, nil, nil)
	require.NoError(t, err)
	ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", tn.service, "span_name", "stream-op")
	require.NoError(t, err)
	start := time.Now().Add(-time.Minute)
	for i := range spans {
		h := client.Hop{Series: ref, Start: start.Add(time.Duration(i) * time.Millisecond), Duration: time.Duration(i+1) * time.Millisecond}
		h.TraceID[0], h.TraceID[1], h.TraceID[15] = tn.id[5], 0x5e, byte(i+1)
		require.NoError(t, c.Record(ctx, h))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.Close(cctx))
}

// query runs an instant query as tn and returns its answer's body.
func (n *authNode) query(t *testing.T, tn *authTenant, q string) string {
	t.Helper()
	code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+n.addrs.Web+"/api/v1/query?"+url.Values{"query": {q}}.Encode(), "", nil, bearer(tn.token))
	require.Equal(t, http.StatusOK, code, "%s", body)
	return string(body)
}

// callsBySpanName is sum by (span_name) (traces_spanmetrics_calls_total)
// as tn.
func (n *authNode) callsBySpanName(t *testing.T, tn *authTenant) map[string]int {
	t.Helper()
	var r apiResponse
	require.NoError(t, jsonUnmarshal(n.query(t, tn, "sum by (span_name) (traces_spanmetrics_calls_total)"), &r))
	var data any
	require.NoError(t, jsonUnmarshal(string(r.Data), &data))
	return sumBy(t, data, "span_name")
}

// TestAuthentication runs a node with authentication on and two tenants:
// every endpoint refuses a missing, malformed, wrong or another tenant's
// token (and a tenant's token where an admin is needed), counts the
// refusal, and writes nothing of it; a good token works and sees its own
// tenant's data only.
func TestAuthentication(t *testing.T) {
	n := startAuthNode(t, func(c *server.Config) { c.RawSamplingEnabled = false })
	a, b := n.a, n.b
	web := "http://" + n.addrs.Web
	ctx := context.Background()

	// Both tenants write first, so that writers exist to be excluded.
	n.writeAs(t, a, 3)
	n.writeAs(t, b, 4)
	want := func(spans int) map[string]int {
		return map[string]int{"grpc-op": spans, "http-op": spans, "stream-op": spans}
	}
	waitFor(t, "both tenants' aggregates", func() bool {
		return maps.Equal(n.callsBySpanName(t, a), want(3)) && maps.Equal(n.callsBySpanName(t, b), want(4))
	})

	t.Run("refused", func(t *testing.T) {
		requests := func() float64 { return sumMetric(t, n.reg, "hopwatch_otlp_requests_total") }
		requestsBefore := requests()

		for _, w := range webCalls(time.Now()) {
			creds := n.tenantRefusals()
			if w.admin {
				creds = n.adminRefusals()
			}
			for _, c := range creds {
				what := w.name + " (" + w.method + " " + w.path + ") with " + c.name + " credentials"
				before := refusals(t, n.reg)
				code, hdr, body := w.do(t, http.DefaultClient, web, c.hdr)
				require.Equal(t, c.status, code, "%s: %s", what, body)
				requireRefused(t, n.reg, before, c.reason, what)
				var r apiResponse
				require.NoError(t, jsonUnmarshal(string(body), &r), "%s: %s", what, body)
				require.Equal(t, "error", r.Status, what)
				if code == http.StatusUnauthorized {
					require.Contains(t, hdr.Get("WWW-Authenticate"), `Bearer realm="hopwatch"`, what)
				}
				for _, tok := range []string{n.unknown, n.admin, a.token, b.token} {
					require.NotContains(t, string(body), tok, "%s: the answer repeats a token", what)
				}
			}
		}

		conn := dialGRPC(t, n.addrs.OTLPGRPC)
		traces := ptraceotlp.NewGRPCClient(conn)
		ingestSvc := hopwatchv1.NewIngestServiceClient(conn)
		writers := hopwatchv1.NewWriterServiceClient(conn)
		handled := func(method, typ string, code codes.Code) float64 {
			svc := map[string]string{"Export": "opentelemetry.proto.collector.trace.v1.TraceService", "Stream": "hopwatch.v1.IngestService"}[method]
			if svc == "" {
				svc = "hopwatch.v1.WriterService"
			}
			return counter(t, n.reg, "grpc_server_handled_total", map[string]string{"grpc_service": svc, "grpc_method": method, "grpc_type": typ, "grpc_code": code.String()})
		}
		for _, c := range n.tenantRefusals() {
			hdr := maps.Clone(c.hdr)
			if hdr == nil {
				hdr = map[string]string{}
			}
			hdr[ingest.WriterHeader] = "refused-writer"
			check := func(what string, err error, before map[string]float64) {
				t.Helper()
				what += " with " + c.name + " credentials"
				require.Equal(t, c.code, status.Code(err), "%s: %v", what, err)
				requireRefused(t, n.reg, before, c.reason, what)
			}

			// OTLP/gRPC, with the collector's client and with OpenTelemetry's exporter.
			before, handledBefore := refusals(t, n.reg), handled("Export", "unary", c.code)
			_, err := traces.Export(outgoing(ctx, hdr), ptraceotlp.NewExportRequestFromTraces(otlpTraces("svc-refused", "refused-op", 0xee)))
			check("TraceService/Export", err, before)
			require.Equal(t, handledBefore+1, handled("Export", "unary", c.code), "refused calls are counted per method")

			gexp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(n.addrs.OTLPGRPC), otlptracegrpc.WithInsecure(), otlptracegrpc.WithHeaders(hdr))
			require.NoError(t, err)
			before = refusals(t, n.reg)
			check("otlptracegrpc", gexp.ExportSpans(ctx, refusedSpans()), before)
			require.NoError(t, gexp.Shutdown(ctx))

			// OTLP/HTTP, as protobuf by hand and with OpenTelemetry's exporter.
			body, err := ptraceotlp.NewExportRequestFromTraces(otlpTraces("svc-refused", "refused-op", 0xef)).MarshalProto()
			require.NoError(t, err)
			before = refusals(t, n.reg)
			code, rh, rb := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+n.addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf", body, hdr)
			require.Equal(t, c.status, code, "OTLP/HTTP with %s credentials", c.name)
			require.Equal(t, "application/x-protobuf", rh.Get("Content-Type"))
			var st spb.Status
			require.NoError(t, proto.Unmarshal(rb, &st))
			require.Equal(t, int32(c.code), st.GetCode(), st.GetMessage())
			requireRefused(t, n.reg, before, c.reason, "OTLP/HTTP with "+c.name+" credentials")

			hexp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(n.addrs.OTLPHTTP), otlptracehttp.WithInsecure(), otlptracehttp.WithHeaders(hdr))
			require.NoError(t, err)
			before = refusals(t, n.reg)
			err = hexp.ExportSpans(ctx, refusedSpans())
			require.ErrorContains(t, err, strconv.Itoa(c.status))
			requireRefused(t, n.reg, before, c.reason, "otlptracehttp with "+c.name+" credentials")
			require.NoError(t, hexp.Shutdown(ctx))

			// The streaming ingest service: refused when the stream opens,
			// before a batch is read.
			before = refusals(t, n.reg)
			stream, err := ingestSvc.Stream(outgoing(ctx, hdr))
			require.NoError(t, err)
			_ = stream.Send(hopBatch(1, 10, time.Now().Add(-time.Minute), time.Millisecond)) // may already see the end
			_, err = stream.Recv()
			check("IngestService/Stream", err, before)

			// The writer service.
			before = refusals(t, n.reg)
			_, err = writers.ListWriters(outgoing(ctx, hdr), &hopwatchv1.ListWritersRequest{})
			check("WriterService/ListWriters", err, before)
			before = refusals(t, n.reg)
			_, err = writers.ExcludeWriter(outgoing(ctx, hdr), &hopwatchv1.ExcludeWriterRequest{Writer: a.writer + "-grpc"})
			check("WriterService/ExcludeWriter", err, before)
		}
		require.Equal(t, 0.0, counter(t, n.reg, "hopwatch_otlp_requests_refused_total", map[string]string{"protocol": "grpc", "reason": "malformed"}),
			"an Export refused by authentication is not a malformed request")
		require.Equal(t, requestsBefore, requests(), "refused requests never reach the receiver")

		// The streaming client with a token hopwatch does not know: every
		// stream it opens is refused, and it keeps its records.
		opts := client.DefaultOptions()
		opts.Target = n.addrs.OTLPGRPC
		opts.DialOptions = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		opts.Writer = "refused-writer"
		opts.Token = n.unknown
		before := refusals(t, n.reg)
		c, err := client.New(opts, nil, nil)
		require.NoError(t, err)
		ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "svc-refused", "span_name", "refused-op")
		require.NoError(t, err)
		require.NoError(t, c.Record(ctx, client.Hop{Series: ref, Start: time.Now().Add(-time.Minute), Duration: time.Millisecond}))
		waitFor(t, "the client's stream refused", func() bool { return refusals(t, n.reg)["invalid"] > before["invalid"] })
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		require.ErrorIs(t, c.Close(cctx), context.DeadlineExceeded, "the record was never delivered")
		after := refusals(t, n.reg)
		after["invalid"] = before["invalid"]
		require.Equal(t, before, after, "only invalid-token refusals")
	})

	t.Run("nothing refused was written", func(t *testing.T) {
		// A write accepted after all the refused ones, waited for in the
		// aggregates: anything written before it would show by then.
		for _, tn := range []*authTenant{a, b} {
			code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, "http://"+n.addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf",
				mustMarshal(t, otlpTraces(tn.service, "barrier", tn.id[5])), bearer(tn.token))
			require.Equal(t, http.StatusOK, code, "%s", body)
		}
		waitFor(t, "the barrier spans", func() bool {
			return n.callsBySpanName(t, a)["barrier"] == 1 && n.callsBySpanName(t, b)["barrier"] == 1
		})
		for _, tn := range []*authTenant{a, b} {
			counts := n.callsBySpanName(t, tn)
			delete(counts, "barrier")
			require.Equal(t, want(map[string]int{"team-a": 3, "team-b": 4}[tn.id]), counts, "tenant %s's spans", tn.id)
			var r apiResponse
			code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, web+"/api/v1/label/service/values", "", nil, bearer(tn.token))
			require.Equal(t, http.StatusOK, code)
			require.NoError(t, jsonUnmarshal(string(body), &r))
			require.JSONEq(t, `["`+tn.service+`"]`, string(r.Data), "services of tenant %s in both tiers", tn.id)
			require.NotContains(t, n.query(t, tn, `count_over_time({service="svc-refused"}[1h])`), "svc-refused")

			_, states := writerStatesWith(t, web, bearer(tn.token))
			// Without a writer header, OTLP/HTTP's writer is the service.
			require.Equal(t, map[string]string{tn.writer + "-grpc": "active", tn.writer + "-stream": "active", tn.service: "active"}, states,
				"tenant %s's writers: none excluded, no refused writer", tn.id)

			code, _, body = httpDo(t, http.DefaultClient, http.MethodGet, web+"/api/v1/rules/auth-ns", "", nil, bearer(tn.token))
			require.Equal(t, http.StatusNotFound, code, "tenant %s has no rule group: %s", tn.id, body)
			code, _, body = httpDo(t, http.DefaultClient, http.MethodGet, web+"/api/v1/rules", "", nil, bearer(tn.token))
			require.Equal(t, http.StatusOK, code)
			require.NotContains(t, string(body), "refused-group")
		}
	})

	t.Run("good tokens see their own tenant only", func(t *testing.T) {
		for _, own := range []*authTenant{a, b} {
			code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, web+"/api/v1/rules/auth-ns", "application/yaml", []byte(ruleGroup(own.group)), bearer(own.token))
			require.Equal(t, http.StatusAccepted, code, "%s", body)
		}
		before := refusals(t, n.reg)
		for _, p := range []struct{ own, other *authTenant }{{a, b}, {b, a}} {
			own, other := p.own, p.other
			for _, w := range webCalls(time.Now()) {
				if w.admin || w.method != http.MethodGet {
					continue
				}
				// With X-Scope-OrgID naming the token's tenant too, as a
				// client set up for a gateway sends it.
				for _, hdr := range []map[string]string{bearer(own.token), bearer(own.token, own.id)} {
					code, _, body := w.do(t, http.DefaultClient, web, hdr)
					what := w.name + " as tenant " + own.id
					require.Equal(t, w.okStatus(), code, "%s: %s", what, body)
					for _, mark := range []string{other.service, other.writer, other.group, other.id} {
						require.NotContains(t, string(body), mark, "%s shows tenant %s's data", what, other.id)
					}
					switch w.name {
					case "query", "query POST", "query_range", "series", "label values", "query_exemplars", "latency":
						require.Contains(t, string(body), own.service, what)
					case "rules", "rule config GET":
						require.Contains(t, string(body), own.group, what)
					case "writers":
						require.Contains(t, string(body), own.writer, what)
					}
				}
			}
			// The other tenant's writer does not exist for this one; its own
			// can be excluded and included back.
			for _, act := range []string{"exclude", "include"} {
				code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, web+ingest.WritersPath+"/"+other.writer+"-grpc/"+act, "", nil, bearer(own.token))
				require.Equal(t, http.StatusNotFound, code, "%s", body)
				code, _, body = httpDo(t, http.DefaultClient, http.MethodPost, web+ingest.WritersPath+"/"+own.writer+"-grpc/"+act, "", nil, bearer(own.token))
				require.Equal(t, http.StatusOK, code, "%s", body)
			}
			list, err := hopwatchv1.NewWriterServiceClient(dialGRPC(t, n.addrs.OTLPGRPC)).ListWriters(outgoing(ctx, bearer(own.token)), &hopwatchv1.ListWritersRequest{})
			require.NoError(t, err)
			var ids []string
			for _, w := range list.GetWriters() {
				ids = append(ids, w.GetWriter())
			}
			require.ElementsMatch(t, []string{own.writer + "-grpc", own.writer + "-stream", own.service}, ids)
		}
		for _, w := range webCalls(time.Now()) {
			if !w.admin {
				continue
			}
			code, _, body := w.do(t, http.DefaultClient, web, bearer(n.admin))
			require.Equal(t, w.okStatus(), code, "%s as admin: %s", w.name, body)
			switch w.name {
			case "metrics":
				require.Contains(t, string(body), `hopwatch_auth_refused_total{reason="tenant_mismatch"}`)
			case "status config":
				require.Contains(t, string(body), `"yaml"`)
			}
		}
		for _, path := range []string{"/-/healthy", "/-/ready"} {
			code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, web+path, "", nil, nil)
			require.Equal(t, http.StatusOK, code, "%s needs no token: %s", path, body)
		}
		require.Equal(t, before, refusals(t, n.reg), "nothing refused")
	})

	t.Run("admin tokens reload", func(t *testing.T) {
		metrics := web + "/metrics"
		next := newToken(t)
		// A token in clear is hashed when read.
		writeAdminTokens(t, n.adminFile, next)
		code, _, body := httpDo(t, http.DefaultClient, http.MethodPost, web+"/-/reload", "", nil, bearer(n.admin))
		require.Equal(t, http.StatusOK, code, "%s", body)
		code, _, _ = httpDo(t, http.DefaultClient, http.MethodGet, metrics, "", nil, bearer(next))
		require.Equal(t, http.StatusOK, code, "the new admin token")
		before := refusals(t, n.reg)
		code, _, _ = httpDo(t, http.DefaultClient, http.MethodGet, metrics, "", nil, bearer(n.admin))
		require.Equal(t, http.StatusUnauthorized, code, "the old admin token is gone")
		requireRefused(t, n.reg, before, "invalid", "the old admin token")

		// A broken file keeps the tokens in service.
		writeAdminTokens(t, n.adminFile, "not a token")
		code, _, body = httpDo(t, http.DefaultClient, http.MethodPost, web+"/-/reload", "", nil, bearer(next))
		require.Equal(t, http.StatusInternalServerError, code)
		require.Contains(t, string(body), "the admin tokens in service are kept")
		require.Contains(t, string(body), "line 2")
		code, _, _ = httpDo(t, http.DefaultClient, http.MethodGet, metrics, "", nil, bearer(next))
		require.Equal(t, http.StatusOK, code)
	})
}

// writerStatesWith is GET /api/v1/writers with hdr.
func writerStatesWith(t *testing.T, web string, hdr map[string]string) (float64, map[string]string) {
	t.Helper()
	code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, web+ingest.WritersPath, "", nil, hdr)
	require.Equal(t, http.StatusOK, code, "%s", body)
	var r apiResponse
	require.NoError(t, jsonUnmarshal(string(body), &r))
	var ws struct {
		Watermark *float64
		Writers   []struct{ Writer, State string }
	}
	require.NoError(t, jsonUnmarshal(string(r.Data), &ws))
	states := map[string]string{}
	for _, w := range ws.Writers {
		states[w.Writer] = w.State
	}
	var mark float64
	if ws.Watermark != nil {
		mark = *ws.Watermark
	}
	return mark, states
}

// TestAuthenticationConfig: authentication and TLS settings that cannot
// work are refused at start, each naming its setting.
func TestAuthenticationConfig(t *testing.T) {
	cfg := server.DefaultConfig()
	cfg.Auth.Enabled = true
	cfg.TLS.KeyFile = "key.pem"
	cfg.TLS.RequireClientCert = true
	_, err := server.New(cfg, nil, nil)
	require.ErrorContains(t, err, "tls.cert-file: needed with tls.key-file")
	require.ErrorContains(t, err, "tls.require-client-cert: needs tls.client-ca-file")

	cfg = server.DefaultConfig()
	cfg.Auth.AdminTokenFile = "admins"
	cfg.TLS.ClientCAFile = "ca.pem"
	_, err = server.New(cfg, nil, nil)
	require.ErrorContains(t, err, "auth.admin-token-file: set without auth.enabled")
	require.ErrorContains(t, err, "tls.client-ca-file: set without tls.cert-file and tls.key-file")

	// Files are read when the node is built, and their errors name them.
	cfg = server.DefaultConfig()
	cfg.Storage.Dir = t.TempDir()
	cfg.Auth.Enabled = true
	cfg.Tokens = auth.TokenMap{}
	cfg.Auth.AdminTokenFile = filepath.Join(t.TempDir(), "missing")
	_, err = server.New(cfg, nil, nil)
	require.ErrorContains(t, err, "auth.admin-token-file: hopwatch/auth: reading the admin token file")
	cfg.Auth.AdminTokenFile = ""
	cfg.TLS.CertFile, cfg.TLS.KeyFile = filepath.Join(t.TempDir(), "cert.pem"), filepath.Join(t.TempDir(), "key.pem")
	_, err = server.New(cfg, nil, nil)
	require.ErrorContains(t, err, "certificate file")
}

// TestAuthenticationOffAddsNothing: with authentication off there is no
// refusal counter and the admin endpoints stay open, as before.
func TestAuthenticationOffAddsNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, nil)
	for _, path := range []string{"/metrics", "/api/v1/status/config", "/debug/pprof/"} {
		code, _, body := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+addrs.Web+path, "", nil, nil)
		require.Equal(t, http.StatusOK, code, "%s: %s", path, body)
	}
	require.Empty(t, refusals(t, reg))
}

// mustMarshal is td as an OTLP/HTTP protobuf body.
func mustMarshal(t *testing.T, td ptrace.Traces) []byte {
	t.Helper()
	b, err := ptraceotlp.NewExportRequestFromTraces(td).MarshalProto()
	require.NoError(t, err)
	return b
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
