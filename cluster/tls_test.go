package cluster

import (
	"crypto/tls"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/testcerts"
)

// TestTLS runs a 2-node cluster with mutual TLS on the raft transport and
// the cluster gRPC service.
func TestTLS(t *testing.T) {
	conf := testTLSConfig(t)
	nodes := startCluster(t, 2, func(c *Config) { c.TLS = conf })
	ctx := ctxT(t)
	l := leader(t, nodes...)
	f := running(nodes, l)[0]
	idx, err := f.PutTenant(ctx, Tenant{ID: "secure"})
	require.NoError(t, err)
	s := waitSameState(t, idx, nodes...)
	_, ok := s.Tenant("secure")
	require.True(t, ok)

	// A client without a certificate is refused by the raft transport.
	c, err := tls.Dial("tcp", string(l.trans.LocalAddr()), &tls.Config{RootCAs: conf.RootCAs})
	if err == nil {
		// TLS 1.3 reports a refused client certificate on the first read.
		require.NoError(t, c.SetReadDeadline(time.Now().Add(waitFor)))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	require.Error(t, err)
	require.False(t, errors.Is(err, os.ErrDeadlineExceeded), "the server did not refuse the client")
}

// testTLSConfig returns one configuration for server and client sides: a
// certificate for 127.0.0.1 signed by a fresh CA, required of both ends.
func testTLSConfig(t *testing.T) *tls.Config {
	t.Helper()
	ca := testcerts.NewCA(t, "hopwatch test CA")
	return &tls.Config{
		Certificates: []tls.Certificate{ca.Issue(t, "hopwatch node", 2).TLS(t)},
		RootCAs:      ca.Pool,
		ClientCAs:    ca.Pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}
