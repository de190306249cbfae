package main

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/server"
)

func TestConfigFile(t *testing.T) {
	var stderr bytes.Buffer
	cfg, _, err := setup("serve", []string{"--config.file=testdata/full.good.yml", "--flush.interval=3s"}, server.DefaultConfig(), &stderr)
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, "/tmp/hopwatch-test", cfg.Storage.Dir)
	require.Equal(t, 48*time.Hour, cfg.Storage.Retention)
	require.Equal(t, "127.0.0.1:9900", cfg.WebListenAddress)
	require.Equal(t, 3*time.Second, cfg.FlushInterval, "a flag on the command line wins over the file")
	require.True(t, cfg.MultitenancyEnabled)
	require.Equal(t, []string{"http.method", "deployment.environment"}, cfg.Ingest.Dimensions)
	require.Equal(t, []float64{0.001, 0.01, 0.1, 1}, cfg.Storage.ClassicBuckets)
	require.Equal(t, int32(3), cfg.Storage.NativeSchema)
	require.Contains(t, cfg.ConfigYAML, "flush.interval: 3s\n")
	require.Equal(t, "3s", cfg.Flags["flush.interval"])
}

func TestDefaultsNeedNoConfig(t *testing.T) {
	cfg, _, err := setup("serve", nil, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, "./data", cfg.Storage.Dir)
	require.Equal(t, ":9800", cfg.WebListenAddress)
	require.Equal(t, ":4317", cfg.OTLPGRPCListenAddress)
	require.Equal(t, ":4318", cfg.OTLPHTTPListenAddress)
	require.Equal(t, 5*time.Second, cfg.FlushInterval)
}

// TestBadConfigIsRefused checks that each *.bad.yml is refused at start
// with every problem named.
func TestBadConfigIsRefused(t *testing.T) {
	f := func(file string, want ...string) {
		t.Helper()
		var stderr bytes.Buffer
		code := run([]string{"serve", "--config.file=" + filepath.Join("testdata", file), "--storage.path=" + t.TempDir()}, &bytes.Buffer{}, &stderr)
		require.Equal(t, 1, code)
		for _, w := range want {
			require.Contains(t, stderr.String(), w, file)
		}
	}
	f("unknown-key.bad.yml", "unknown-key.bad.yml:2", `unknown setting "flush.intervall"`)
	f("bad-duration.bad.yml", "bad-duration.bad.yml:2", "storage.tsdb.retention.time", "fifteen days")
	f("bad-values.bad.yml",
		"flush.interval: 100ms is shorter than the minimum of 1s",
		"NativeSchema 12 outside [-4, 8]",
		`web.listen-address: "nohostport" is not host:port`,
		"ClassicBuckets[1] = 0.05: bounds must increase")
	f("auth.bad.yml",
		"auth.enabled: there is no store of tenants' tokens",
		"tls.cert-file: needed with tls.key-file",
		"tls.require-client-cert: needs tls.client-ca-file")
	f("admin-without-auth.bad.yml",
		"auth.admin-token-file: set without auth.enabled",
		"tls.client-ca-file: set without tls.cert-file and tls.key-file")
}

func TestAuthAndTLSFlags(t *testing.T) {
	cfg, _, err := setup("serve", []string{
		"--auth.enabled", "--auth.admin-token-file=/etc/hopwatch/admin-tokens",
		"--tls.cert-file=/etc/hopwatch/tls.crt", "--tls.key-file=/etc/hopwatch/tls.key",
		"--tls.client-ca-file=/etc/hopwatch/ca.pem", "--tls.require-client-cert",
	}, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, server.AuthConfig{Enabled: true, AdminTokenFile: "/etc/hopwatch/admin-tokens"}, cfg.Auth)
	require.Equal(t, server.TLSConfig{CertFile: "/etc/hopwatch/tls.crt", KeyFile: "/etc/hopwatch/tls.key",
		ClientCAFile: "/etc/hopwatch/ca.pem", RequireClientCert: true}, cfg.TLS)
	require.Nil(t, cfg.Tokens, "tokens are not a setting")
	require.Contains(t, cfg.ConfigYAML, "auth.enabled: \"true\"\n")

	cfg, _, err = setup("serve", nil, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, server.AuthConfig{}, cfg.Auth, "authentication is off by default")
	require.Equal(t, server.TLSConfig{}, cfg.TLS, "TLS is off by default")
}

func TestBadFlagsAreRefused(t *testing.T) {
	var stderr bytes.Buffer
	require.Equal(t, 1, run([]string{"serve", "--log.level=loud"}, &bytes.Buffer{}, &stderr))
	require.Contains(t, stderr.String(), `log.level: "loud" is not one of`)
	stderr.Reset()
	require.Equal(t, 1, run([]string{"serve", "--no-such-flag"}, &bytes.Buffer{}, &stderr))
	require.Contains(t, stderr.String(), "flag provided but not defined: -no-such-flag")
}

func TestVersion(t *testing.T) {
	var stdout bytes.Buffer
	require.Equal(t, 0, run([]string{"--version"}, &stdout, &bytes.Buffer{}))
	require.Contains(t, stdout.String(), "hopwatch version ")
}
