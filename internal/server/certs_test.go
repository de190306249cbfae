package server_test

import (
	"crypto/tls"
	"testing"

	"github.com/hopwatch/hopwatch/internal/testcerts"
)

// testCA signs certificates for the TLS tests.
type testCA struct{ *testcerts.CA }

func newTestCA(t *testing.T) testCA { return testCA{testcerts.NewCA(t, "hopwatch test CA")} }

// issue writes a certificate for localhost and 127.0.0.1, good for servers
// and clients, and its key to files in a temporary directory, and returns
// them loaded too.
func (ca testCA) issue(t *testing.T, cn string) (certFile, keyFile string, pair tls.Certificate) {
	t.Helper()
	p := ca.Issue(t, cn, 0)
	certFile, keyFile = p.Files(t, t.TempDir(), cn)
	return certFile, keyFile, p.TLS(t)
}
