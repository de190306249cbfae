package auth

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
)

// ServerConfig returns the TLS configuration of a listener: the
// certificate and key from certFile and keyFile, read again when either
// file changes (see CertReloader), TLS 1.2 at least. With clientCAFile,
// client certificates signed by its CAs are verified; requireClientCert
// refuses clients without one (mTLS, between nodes).
func ServerConfig(certFile, keyFile, clientCAFile string, requireClientCert bool) (*tls.Config, error) {
	if requireClientCert && clientCAFile == "" {
		return nil, errors.New("hopwatch/auth: requiring client certificates needs the CAs that sign them: set --tls.client-ca-file")
	}
	cr, err := NewCertReloader(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: cr.GetCertificate,
	}
	if clientCAFile != "" {
		if cfg.ClientCAs, err = loadCAs(clientCAFile); err != nil {
			return nil, err
		}
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
		if requireClientCert {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return cfg, nil
}

// ClientConfig returns the TLS configuration of a client of serverName:
// servers verified against the CAs of caFile (empty: the system's), and,
// with certFile and keyFile, a client certificate for mTLS, read again when
// the files change. TLS 1.2 at least.
func ClientConfig(caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		var err error
		if cfg.RootCAs, err = loadCAs(caFile); err != nil {
			return nil, err
		}
	}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		return nil, fmt.Errorf("hopwatch/auth: a client certificate needs both a certificate file and a key file, got certificate %q and key %q", certFile, keyFile)
	default:
		cr, err := NewCertReloader(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.GetClientCertificate = cr.GetClientCertificate
	}
	return cfg, nil
}

// loadCAs reads a PEM bundle of CA certificates.
func loadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/auth: reading CA file: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("hopwatch/auth: CA file %s: certificate %d: %w", path, n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("hopwatch/auth: CA file %s holds no PEM CERTIFICATE block", path)
	}
	return pool, nil
}

// CertReloader serves a certificate and key from files, read again at the
// first handshake after either file's modification time or size changed,
// so that a rotated certificate is served without a restart. A rotation
// caught half-written (a new certificate with the old key) keeps the
// previous pair in service, and is tried again when the files change
// next. It is safe for concurrent use.
type CertReloader struct {
	certFile, keyFile string

	cur atomic.Pointer[loadedCert]
	mu  sync.Mutex // serializes reloads
	// failed is the file state that last failed to load, so that a broken
	// pair is not parsed again at every handshake; under mu.
	failed fileStamps
	// lastErr is the error of the last reload, nil once one succeeds.
	lastErr atomic.Pointer[error]
}

// loadedCert is a certificate with the state of the files it came from.
type loadedCert struct {
	cert   *tls.Certificate
	stamps fileStamps
}

// fileStamps identifies a version of the certificate and key files.
type fileStamps struct {
	certMod, keyMod   int64 // modification time, ns
	certSize, keySize int64
}

// NewCertReloader loads certFile and keyFile; an error names the file and
// what is wrong with it.
func NewCertReloader(certFile, keyFile string) (*CertReloader, error) {
	if certFile == "" || keyFile == "" {
		return nil, fmt.Errorf("hopwatch/auth: TLS needs both a certificate file and a key file (--tls.cert-file, --tls.key-file), got certificate %q and key %q", certFile, keyFile)
	}
	cr := &CertReloader{certFile: certFile, keyFile: keyFile}
	st, err := cr.stamps()
	if err != nil {
		return nil, err
	}
	c, err := loadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	cr.cur.Store(&loadedCert{cert: c, stamps: st})
	return cr, nil
}

func (cr *CertReloader) stamps() (fileStamps, error) {
	ci, err := os.Stat(cr.certFile)
	if err != nil {
		return fileStamps{}, fmt.Errorf("hopwatch/auth: certificate file: %w", err)
	}
	ki, err := os.Stat(cr.keyFile)
	if err != nil {
		return fileStamps{}, fmt.Errorf("hopwatch/auth: key file: %w", err)
	}
	return fileStamps{certMod: ci.ModTime().UnixNano(), keyMod: ki.ModTime().UnixNano(), certSize: ci.Size(), keySize: ki.Size()}, nil
}

// current returns the certificate to serve, reloading it first if the
// files changed. Two stats per handshake cost microseconds, against the
// milliseconds of the handshake's own cryptography.
func (cr *CertReloader) current() *tls.Certificate {
	cur := cr.cur.Load()
	st, err := cr.stamps()
	if err != nil {
		// A file missing for a moment during a rotation: keep serving.
		cr.lastErr.Store(&err)
		return cur.cert
	}
	if st == cur.stamps {
		return cur.cert
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	if cur = cr.cur.Load(); st == cur.stamps || st == cr.failed {
		return cur.cert
	}
	c, err := loadKeyPair(cr.certFile, cr.keyFile)
	if err != nil {
		cr.failed = st
		cr.lastErr.Store(&err)
		return cur.cert
	}
	cr.cur.Store(&loadedCert{cert: c, stamps: st})
	cr.failed = fileStamps{}
	cr.lastErr.Store(nil)
	return c
}

// GetCertificate serves as tls.Config.GetCertificate.
func (cr *CertReloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return cr.current(), nil
}

// GetClientCertificate serves as tls.Config.GetClientCertificate.
func (cr *CertReloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return cr.current(), nil
}

// Leaf returns the certificate in service (its NotAfter is the expiry to
// watch).
func (cr *CertReloader) Leaf() *x509.Certificate { return cr.cur.Load().cert.Leaf }

// LastError returns why the files on disk are not the pair in service, or
// nil when they are.
func (cr *CertReloader) LastError() error {
	if p := cr.lastErr.Load(); p != nil {
		return *p
	}
	return nil
}

// loadKeyPair reads a certificate chain and its private key, saying which
// file is wrong when one is.
func loadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/auth: reading certificate file: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/auth: reading key file: %w", err)
	}
	if !hasPEMBlock(certPEM, func(t string) bool { return t == "CERTIFICATE" }) {
		return nil, fmt.Errorf("hopwatch/auth: certificate file %s holds no PEM CERTIFICATE block", certFile)
	}
	if !hasPEMBlock(keyPEM, func(t string) bool { return t == "PRIVATE KEY" || strings.HasSuffix(t, " PRIVATE KEY") }) {
		return nil, fmt.Errorf("hopwatch/auth: key file %s holds no PEM PRIVATE KEY block", keyFile)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/auth: certificate file %s with key file %s: %w", certFile, keyFile, err)
	}
	return &c, nil
}

func hasPEMBlock(b []byte, typeOK func(string) bool) bool {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return false
		}
		if typeOK(block.Type) {
			return true
		}
	}
}
