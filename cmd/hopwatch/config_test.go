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
		"tls.cert-file: needed with tls.key-file",
		"tls.require-client-cert: needs tls.client-ca-file")
	f("cluster.bad.yml",
		`cluster.node-id: "node one": use only A-Z, a-z, 0-9`,
		`cluster.raft-address: "9801" is not host:port`,
		`cluster.raft-advertise-address: "0.0.0.0:9801" names no host that other nodes can dial`,
		`cluster.join: "node2" is not host:port`,
		"cluster.bootstrap: set together with cluster.join",
		"cluster.tls.key-file: needed", "cluster.tls.ca-file: needed")
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

func TestClusterFlags(t *testing.T) {
	cfg, _, err := setup("serve", nil, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.Equal(t, server.ClusterConfig{RaftAddress: "127.0.0.1:9801", GRPCAddress: "127.0.0.1:9802", Bootstrap: true}, cfg.Cluster,
		"alone, a node bootstraps a cluster of one on the standard ports, on loopback")
	require.NoError(t, cfg.Validate())

	cfg, _, err = setup("serve", []string{"--config.file=testdata/cluster.good.yml"}, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.NoError(t, cfg.Validate())
	require.Equal(t, server.ClusterConfig{
		NodeID: "hopwatch-2", RaftAddress: "10.0.0.2:9801", GRPCAddress: "10.0.0.2:9802",
		Join:      []string{"10.0.0.1:9802", "10.0.0.3:9802"},
		Bootstrap: false,
		TLS:       server.ClusterTLSConfig{CertFile: "/etc/hopwatch/node.pem", KeyFile: "/etc/hopwatch/node-key.pem", CAFile: "/etc/hopwatch/cluster-ca.pem"},
	}, cfg.Cluster, "a node told where to join does not bootstrap")
	require.Contains(t, cfg.ConfigYAML, "cluster.bootstrap: \"false\"\n")
	require.Equal(t, "/var/lib/hopwatch/cluster", cfg.ClusterDir())

	cfg, _, err = setup("serve", []string{"--cluster.join=10.0.0.1:9802", "--cluster.join=10.0.0.3:9802",
		"--cluster.raft-advertise-address=10.0.0.2:9801", "--cluster.grpc-advertise-address=hopwatch-2.internal:9802"}, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	err = cfg.Validate()
	require.ErrorContains(t, err, `cluster.raft-address: "127.0.0.1:9801" is on loopback, but cluster.raft-advertise-address "10.0.0.2:9801" expects other hosts to reach it`)
	require.ErrorContains(t, err, `cluster.grpc-address: "127.0.0.1:9802" is on loopback, but cluster.grpc-advertise-address`)
	require.Equal(t, []string{"10.0.0.1:9802", "10.0.0.3:9802"}, cfg.Cluster.Join)
	require.False(t, cfg.Cluster.Bootstrap)
	require.Equal(t, "10.0.0.2:9801", cfg.Cluster.RaftAdvertiseAddress)
	require.Equal(t, "hopwatch-2.internal:9802", cfg.Cluster.GRPCAdvertiseAddress)

	// A node that waits to be added through the admin API.
	cfg, _, err = setup("serve", []string{"--cluster.bootstrap=false"}, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.False(t, cfg.Cluster.Bootstrap)
	require.Empty(t, cfg.Cluster.Join)

	// Both, given, contradict each other.
	cfg, _, err = setup("serve", []string{"--cluster.bootstrap", "--cluster.join=10.0.0.1:9802"}, server.DefaultConfig(), &bytes.Buffer{})
	require.NoError(t, err)
	require.ErrorContains(t, cfg.Validate(), "cluster.bootstrap: set together with cluster.join")
}
