package server_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/client"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/server"
)

// httpsClient is an HTTP client trusting ca, presenting certs.
func httpsClient(t *testing.T, ca testCA, certs ...tls.Certificate) *http.Client {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool, Certificates: certs, MinVersion: tls.VersionTLS12}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// dialTLS is a gRPC connection to addr trusting ca, presenting certs.
func dialTLS(t *testing.T, addr string, ca testCA, certs ...tls.Certificate) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool, Certificates: certs, MinVersion: tls.VersionTLS12})))
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestTLS: with --tls.* every public listener serves TLS only, and the
// OpenTelemetry exporters, the streaming client and HTTP clients work over
// it with a token.
func TestTLS(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile, _ := ca.issue(t, "hopwatch")
	tok := newToken(t)
	_, addrs := startServer(t, func(c *server.Config) {
		c.TLS.CertFile, c.TLS.KeyFile = certFile, keyFile
		c.Auth.Enabled = true
		c.Tokens = auth.TokenMap{auth.HashToken(tok): "team-tls"}
		c.RawSamplingEnabled = false
	})
	ctx := context.Background()
	hdr := map[string]string{"authorization": "Bearer " + tok}

	gexp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addrs.OTLPGRPC), otlptracegrpc.WithHeaders(hdr),
		otlptracegrpc.WithTLSCredentials(credentials.NewClientTLSFromCert(ca.Pool, "")))
	require.NoError(t, err)
	emit(t, gexp, []*spanSet{{service: "svc-tls", name: "grpc-op", kind: trace.SpanKindServer, durations: spread(2)}})
	hexp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpoint(addrs.OTLPHTTP), otlptracehttp.WithHeaders(hdr),
		otlptracehttp.WithTLSClientConfig(&tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}))
	require.NoError(t, err)
	emit(t, hexp, []*spanSet{{service: "svc-tls", name: "http-op", kind: trace.SpanKindServer, durations: spread(3)}})

	opts := client.DefaultOptions()
	opts.Target = addrs.OTLPGRPC
	opts.TLS = &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	opts.Token = tok
	opts.Writer = "tls-stream"
	c, err := client.New(opts, nil, nil)
	require.NoError(t, err)
	ref, err := c.Series(hopwatchv1.HopKind_HOP_KIND_SPAN, "service", "svc-tls", "span_name", "stream-op")
	require.NoError(t, err)
	for i := range 4 {
		require.NoError(t, c.Record(ctx, client.Hop{Series: ref, Start: time.Now().Add(-time.Minute), Duration: time.Duration(i+1) * time.Millisecond}))
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	require.NoError(t, c.Close(cctx))

	hc := httpsClient(t, ca)
	query := "https://" + addrs.Web + "/api/v1/query?" + url.Values{"query": {"sum by (span_name) (traces_spanmetrics_calls_total)"}}.Encode()
	waitFor(t, "the spans over https", func() bool {
		code, _, body := httpDo(t, hc, http.MethodGet, query, "", nil, bearer(tok))
		require.Equal(t, http.StatusOK, code, "%s", body)
		var r apiResponse
		require.NoError(t, jsonUnmarshal(string(body), &r))
		var data any
		require.NoError(t, jsonUnmarshal(string(r.Data), &data))
		got := sumBy(t, data, "span_name")
		return got["grpc-op"] == 2 && got["http-op"] == 3 && got["stream-op"] == 4
	})

	// Plain text is not served.
	code, _, _ := httpDo(t, http.DefaultClient, http.MethodGet, "http://"+addrs.Web+"/-/healthy", "", nil, nil)
	require.Equal(t, http.StatusBadRequest, code, "plain HTTP to the web listener")
	code, _, _ = httpDo(t, http.DefaultClient, http.MethodPost, "http://"+addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf", mustMarshal(t, otlpTraces("svc-plain", "op", 1)), bearer(tok))
	require.Equal(t, http.StatusBadRequest, code, "plain HTTP to the OTLP/HTTP listener")
	_, err = ptraceotlp.NewGRPCClient(dialGRPC(t, addrs.OTLPGRPC)).Export(outgoing(ctx, bearer(tok)), ptraceotlp.NewExportRequestFromTraces(otlpTraces("svc-plain", "op", 1)))
	require.Equal(t, codes.Unavailable, status.Code(err), "plain gRPC: %v", err)
}

// TestMutualTLS: with --tls.require-client-cert a client without a
// certificate signed by --tls.client-ca-file is refused at the handshake
// on every public listener; one with such a certificate is served.
func TestMutualTLS(t *testing.T) {
	ca := newTestCA(t)
	certFile, keyFile, _ := ca.issue(t, "hopwatch")
	_, _, clientCert := ca.issue(t, "client")
	_, _, strangerCert := newTestCA(t).issue(t, "stranger")
	reg := prometheus.NewRegistry()
	_, addrs := startServerReg(t, reg, func(c *server.Config) {
		c.TLS = server.TLSConfig{CertFile: certFile, KeyFile: keyFile, ClientCAFile: ca.File, RequireClientCert: true}
	})
	ctx := context.Background()
	traces := func() ptraceotlp.ExportRequest {
		return ptraceotlp.NewExportRequestFromTraces(otlpTraces("svc-mtls", "op", 2))
	}

	for name, certs := range map[string][]tls.Certificate{"no certificate": nil, "a certificate of another CA": {strangerCert}} {
		hc := httpsClient(t, ca, certs...)
		for _, u := range []string{"https://" + addrs.Web + "/-/healthy", "https://" + addrs.OTLPHTTP + "/v1/traces"} {
			req, err := http.NewRequest(http.MethodPost, u, nil)
			require.NoError(t, err)
			resp, err := hc.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			require.Error(t, err, "%s with %s", u, name)
		}
		_, err := ptraceotlp.NewGRPCClient(dialTLS(t, addrs.OTLPGRPC, ca, certs...)).Export(ctx, traces())
		require.Equal(t, codes.Unavailable, status.Code(err), "gRPC with %s: %v", name, err)
	}
	require.Equal(t, 0.0, sumMetric(t, reg, "hopwatch_otlp_requests_total"), "no refused client reached the receiver")

	hc := httpsClient(t, ca, clientCert)
	code, _, body := httpDo(t, hc, http.MethodGet, "https://"+addrs.Web+"/-/healthy", "", nil, nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	code, _, body = httpDo(t, hc, http.MethodPost, "https://"+addrs.OTLPHTTP+"/v1/traces", "application/x-protobuf", mustMarshal(t, otlpTraces("svc-mtls", "op", 3)), nil)
	require.Equal(t, http.StatusOK, code, "%s", body)
	_, err := ptraceotlp.NewGRPCClient(dialTLS(t, addrs.OTLPGRPC, ca, clientCert)).Export(ctx, traces())
	require.NoError(t, err)
	require.Equal(t, 2.0, sumMetric(t, reg, "hopwatch_otlp_requests_total"))
}
