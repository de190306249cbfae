package cluster

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "hopwatch test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	require.NoError(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	require.NoError(t, err)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "hopwatch node"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	require.NoError(t, err)

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}
}
