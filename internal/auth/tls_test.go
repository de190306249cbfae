package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/testcerts"
)

// testCA signs certificates for the tests.
type testCA struct{ *testcerts.CA }

func newTestCA(t *testing.T, name string) testCA { return testCA{testcerts.NewCA(t, name)} }

// keyPair is a certificate and key as PEM.
type keyPair struct{ cert, key []byte }

// issue returns a certificate for localhost and 127.0.0.1, usable by
// servers and clients, with the given serial number.
func (ca testCA) issue(t *testing.T, cn string, serial int64) keyPair {
	t.Helper()
	p := ca.Issue(t, cn, serial)
	return keyPair{cert: p.Cert, key: p.Key}
}

// files writes kp to name.crt and name.key in dir.
func (kp keyPair) files(t *testing.T, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writeStamped(t, certFile, kp.cert, time.Now())
	writeStamped(t, keyFile, kp.key, time.Now())
	return certFile, keyFile
}

// writeStamped writes b to path with modification time mod, so that a
// rotation is seen whatever the file system's time resolution.
func writeStamped(t *testing.T, path string, b []byte, mod time.Time) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, b, 0o600))
	require.NoError(t, os.Chtimes(path, mod, mod))
}

// serveTLS serves h over TLS with cfg on 127.0.0.1 and returns its URL.
func serveTLS(t *testing.T, cfg *tls.Config, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	// Refused handshakes are the point of some tests: keep them out of the log.
	srv := &http.Server{Handler: h, TLSConfig: cfg, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	served := make(chan error, 1)
	go func() { served <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		require.NoError(t, srv.Close())
		require.ErrorIs(t, <-served, http.ErrServerClosed)
	})
	return "https://" + ln.Addr().String()
}

// get makes one request on a new connection and returns the server's
// certificate serial and the body.
func get(t *testing.T, url string, cfg *tls.Config) (serial int64, body string, err error) {
	t.Helper()
	tr := &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, "", err
	}
	if resp.TLS == nil || resp.TLS.Version < tls.VersionTLS12 {
		return 0, "", errors.New("not TLS 1.2 or later")
	}
	return resp.TLS.PeerCertificates[0].SerialNumber.Int64(), string(b), nil
}

// peerHandler answers with the client certificate's common name and serial.
var peerHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if len(r.TLS.PeerCertificates) == 0 {
		fmt.Fprint(w, "no client certificate")
		return
	}
	c := r.TLS.PeerCertificates[0]
	fmt.Fprintf(w, "%s #%d", c.Subject.CommonName, c.SerialNumber)
})

// requireRefusedHandshake checks that err is the server's refusal of a
// handshake: its alert (want), or, in TLS 1.3, where the client may write
// before the server has checked its certificate, the connection closed
// under that write.
func requireRefusedHandshake(t *testing.T, err error, want string) {
	t.Helper()
	require.Error(t, err)
	for _, s := range []string{want, "broken pipe", "connection reset by peer"} {
		if strings.Contains(err.Error(), s) {
			return
		}
	}
	t.Fatalf("%v: not a refused handshake (%s)", err, want)
}

func TestTLSConfigErrors(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, "node-1", 2).files(t, dir, "node-1")
	_, otherKey := ca.issue(t, "node-2", 3).files(t, dir, "node-2")
	garbage := filepath.Join(dir, "garbage.pem")
	require.NoError(t, os.WriteFile(garbage, []byte("not PEM at all\n"), 0o600))
	missing := filepath.Join(dir, "missing.pem")

	f := func(err error, want ...string) {
		t.Helper()
		require.Error(t, err)
		for _, w := range want {
			require.ErrorContains(t, err, w)
		}
	}
	server := func(cert, key, ca string, require bool) error {
		_, err := ServerConfig(cert, key, ca, require)
		return err
	}
	f(server("", keyFile, "", false), "needs both a certificate file and a key file (--tls.cert-file, --tls.key-file)")
	f(server(missing, keyFile, "", false), "certificate file: stat "+missing, "no such file")
	f(server(certFile, missing, "", false), "key file: stat "+missing)
	f(server(garbage, keyFile, "", false), "certificate file "+garbage+" holds no PEM CERTIFICATE block")
	f(server(certFile, certFile, "", false), "key file "+certFile+" holds no PEM PRIVATE KEY block")
	f(server(certFile, otherKey, "", false), "certificate file "+certFile+" with key file "+otherKey, "private key does not match public key")
	f(server(certFile, keyFile, "", true), "set --tls.client-ca-file")
	f(server(certFile, keyFile, missing, true), "reading CA file: open "+missing)
	f(server(certFile, keyFile, garbage, false), "CA file "+garbage+" holds no PEM CERTIFICATE block")
	require.ErrorIs(t, server(missing, keyFile, "", false), os.ErrNotExist)

	_, err := ClientConfig("", certFile, "", "localhost")
	f(err, `a client certificate needs both a certificate file and a key file, got certificate "`+certFile+`" and key ""`)
	_, err = ClientConfig(garbage, "", "", "localhost")
	f(err, "CA file "+garbage)
	_, err = ClientConfig("", garbage, keyFile, "localhost")
	f(err, "certificate file "+garbage)

	cfg, err := ServerConfig(certFile, keyFile, "", false)
	require.NoError(t, err)
	require.Equal(t, uint16(tls.VersionTLS12), cfg.MinVersion)
	require.Equal(t, tls.NoClientCert, cfg.ClientAuth)
	cfg, err = ServerConfig(certFile, keyFile, ca.File, false)
	require.NoError(t, err)
	require.Equal(t, tls.VerifyClientCertIfGiven, cfg.ClientAuth)
	cfg, err = ServerConfig(certFile, keyFile, ca.File, true)
	require.NoError(t, err)
	require.Equal(t, tls.RequireAndVerifyClientCert, cfg.ClientAuth)
}

func TestTLSHTTP(t *testing.T) {
	ca, other := newTestCA(t, "ca"), newTestCA(t, "other-ca")
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, "hopwatch", 7).files(t, dir, "server")
	clientCert, clientKey := ca.issue(t, "node-2", 8).files(t, dir, "client")
	strangerCert, strangerKey := other.issue(t, "stranger", 9).files(t, dir, "stranger")

	client := func(caFile, cert, key string) *tls.Config {
		t.Helper()
		cfg, err := ClientConfig(caFile, cert, key, "localhost")
		require.NoError(t, err)
		return cfg
	}

	t.Run("server certificate", func(t *testing.T) {
		cfg, err := ServerConfig(certFile, keyFile, "", false)
		require.NoError(t, err)
		url := serveTLS(t, cfg, peerHandler)
		serial, body, err := get(t, url, client(ca.File, "", ""))
		require.NoError(t, err)
		require.Equal(t, int64(7), serial)
		require.Equal(t, "no client certificate", body)

		_, _, err = get(t, url, client(other.File, "", ""))
		var unknown x509.UnknownAuthorityError
		require.ErrorAs(t, err, &unknown, "a server signed by a CA the client does not trust")

		old := client(ca.File, "", "")
		old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		_, _, err = get(t, url, old)
		require.ErrorContains(t, err, "protocol version", "TLS 1.1 is refused")
	})

	t.Run("mTLS required", func(t *testing.T) {
		cfg, err := ServerConfig(certFile, keyFile, ca.File, true)
		require.NoError(t, err)
		url := serveTLS(t, cfg, peerHandler)
		_, body, err := get(t, url, client(ca.File, clientCert, clientKey))
		require.NoError(t, err)
		require.Equal(t, "node-2 #8", body)

		_, _, err = get(t, url, client(ca.File, "", ""))
		requireRefusedHandshake(t, err, "certificate required")
		_, _, err = get(t, url, client(ca.File, strangerCert, strangerKey))
		requireRefusedHandshake(t, err, "unknown certificate authority") // a client certificate from another CA
	})

	t.Run("mTLS optional", func(t *testing.T) {
		cfg, err := ServerConfig(certFile, keyFile, ca.File, false)
		require.NoError(t, err)
		url := serveTLS(t, cfg, peerHandler)
		_, body, err := get(t, url, client(ca.File, "", ""))
		require.NoError(t, err)
		require.Equal(t, "no client certificate", body)
		_, body, err = get(t, url, client(ca.File, clientCert, clientKey))
		require.NoError(t, err)
		require.Equal(t, "node-2 #8", body)
		_, _, err = get(t, url, client(ca.File, strangerCert, strangerKey))
		requireRefusedHandshake(t, err, "unknown certificate authority") // a certificate given is verified
	})
}

// TestTLSRotation: new certificate files are served from the next
// handshake, on both sides, without a restart.
func TestTLSRotation(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	base := time.Now().Add(-time.Hour)
	certFile, keyFile := ca.issue(t, "hopwatch", 1).files(t, dir, "server")
	clientCert, clientKey := ca.issue(t, "node-2", 100).files(t, dir, "client")

	cfg, err := ServerConfig(certFile, keyFile, ca.File, true)
	require.NoError(t, err)
	url := serveTLS(t, cfg, peerHandler)
	ccfg, err := ClientConfig(ca.File, clientCert, clientKey, "localhost")
	require.NoError(t, err)

	check := func(wantServer int64, wantClient string) {
		t.Helper()
		serial, body, err := get(t, url, ccfg)
		require.NoError(t, err)
		require.Equal(t, wantServer, serial)
		require.Equal(t, wantClient, body)
	}
	check(1, "node-2 #100")

	for i, serial := range []int64{2, 3} {
		kp := ca.issue(t, "hopwatch", serial)
		mod := base.Add(time.Duration(i+1) * time.Minute)
		writeStamped(t, certFile, kp.cert, mod)
		writeStamped(t, keyFile, kp.key, mod)
		check(serial, "node-2 #100")
	}

	kp := ca.issue(t, "node-2", 101)
	writeStamped(t, clientCert, kp.cert, base)
	writeStamped(t, clientKey, kp.key, base)
	check(3, "node-2 #101")
}

// TestCertReloaderHalfWritten: a rotation seen between the certificate's
// write and the key's keeps the previous pair in service.
func TestCertReloaderHalfWritten(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, "hopwatch", 1).files(t, dir, "server")
	cr, err := NewCertReloader(certFile, keyFile)
	require.NoError(t, err)
	serial := func() int64 {
		t.Helper()
		c, err := cr.GetCertificate(nil)
		require.NoError(t, err)
		require.Same(t, c.Leaf, cr.Leaf())
		return c.Leaf.SerialNumber.Int64()
	}
	require.Equal(t, int64(1), serial())
	require.NoError(t, cr.LastError())

	base := time.Now().Add(-time.Hour)
	kp := ca.issue(t, "hopwatch", 2)
	writeStamped(t, certFile, kp.cert, base)
	require.Equal(t, int64(1), serial(), "the new certificate with the old key: keep the old pair")
	require.ErrorContains(t, cr.LastError(), "certificate file "+certFile+" with key file "+keyFile)
	require.Equal(t, int64(1), serial(), "the broken pair is not retried until the files change")

	writeStamped(t, keyFile, []byte("-----BEGIN PRIVATE KEY-----\ngarbage\n"), base)
	require.Equal(t, int64(1), serial())
	require.ErrorContains(t, cr.LastError(), "key file "+keyFile+" holds no PEM PRIVATE KEY block")

	require.NoError(t, os.Remove(keyFile))
	require.Equal(t, int64(1), serial(), "a file missing for a moment: keep serving")
	require.ErrorIs(t, cr.LastError(), os.ErrNotExist)

	writeStamped(t, keyFile, kp.key, base.Add(time.Second))
	require.Equal(t, int64(2), serial())
	require.NoError(t, cr.LastError())
}

// bearerCreds sends a token with each call, as gRPC clients do with
// per-RPC credentials; like grpc's oauth credentials it needs TLS.
type bearerCreds string

func (b bearerCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearerCreds) RequireTransportSecurity() bool { return true }

func TestTLSGRPC(t *testing.T) {
	ca := newTestCA(t, "ca")
	dir := t.TempDir()
	certFile, keyFile := ca.issue(t, "hopwatch", 1).files(t, dir, "server")
	clientCert, clientKey := ca.issue(t, "node-2", 2).files(t, dir, "client")

	scfg, err := ServerConfig(certFile, keyFile, ca.File, true)
	require.NoError(t, err)
	a, err := New(Options{Enabled: true, Realm: "hopwatch"}, testTokens(), prometheus.NewRegistry(), nil)
	require.NoError(t, err)

	t.Run("mTLS and token", func(t *testing.T) {
		ccfg, err := ClientConfig(ca.File, clientCert, clientKey, "localhost")
		require.NoError(t, err)
		conn := startGRPC(t, a, credentials.NewTLS(scfg), credentials.NewTLS(ccfg))
		out := new(wrapperspb.StringValue)
		require.NoError(t, conn.Invoke(t.Context(), whoamiMethod, wrapperspb.String("hi"), out, grpc.PerRPCCredentials(bearerCreds(tokenA))))
		require.Contains(t, out.GetValue(), `"Tenant":"team-a"`)

		err = conn.Invoke(t.Context(), whoamiMethod, wrapperspb.String("hi"), out)
		require.Equal(t, codes.Unauthenticated, status.Code(err), "TLS does not replace the token")
	})

	t.Run("no client certificate", func(t *testing.T) {
		ccfg, err := ClientConfig(ca.File, "", "", "localhost")
		require.NoError(t, err)
		conn := startGRPC(t, a, credentials.NewTLS(scfg), credentials.NewTLS(ccfg))
		err = conn.Invoke(t.Context(), whoamiMethod, wrapperspb.String("hi"), new(wrapperspb.StringValue), grpc.PerRPCCredentials(bearerCreds(tokenA)))
		require.Equal(t, codes.Unavailable, status.Code(err), "%v", err)
		requireRefusedHandshake(t, err, "certificate required")
	})
}
