package cluster

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// MinSecretBytes is the shortest cluster secret accepted: 128 bits.
const MinSecretBytes = 16

// Secret is the cluster's shared secret: every node holds the same one,
// and a node proves it holds it before the others take anything from it.
//
// On the raft transport a connection starts with a challenge-response
// handshake (HMAC-SHA256 over both sides' nonces), so the secret never
// crosses the network and a recorded handshake cannot be replayed. On the
// internal gRPC server every call carries a token derived from the secret
// (a per-RPC credential); without cluster TLS anyone who can read the
// traffic can replay that token, so on a network others can watch, use
// cluster TLS as well.
type Secret struct {
	key []byte
	// token is the gRPC per-RPC token: HMAC(key, "grpc"), so that the
	// secret itself is not what crosses the network.
	token string
}

// NewSecret returns the secret of the bytes b, which must hold at least
// MinSecretBytes once surrounding white space is trimmed.
func NewSecret(b []byte) (*Secret, error) {
	b = bytes.TrimSpace(b)
	if len(b) < MinSecretBytes {
		return nil, fmt.Errorf("hopwatch/cluster: the cluster secret has %d bytes, fewer than %d; make one with: openssl rand -hex 32", len(b), MinSecretBytes)
	}
	s := &Secret{key: bytes.Clone(b)}
	s.token = hex.EncodeToString(s.mac([]byte("hopwatch cluster grpc v1")))
	return s, nil
}

// MaxSecretBytes bounds the secret file: a path given by mistake (a
// large file, /dev/zero) is refused, not read into memory.
const MaxSecretBytes = 4096

// LoadSecret reads the secret from a file.
func LoadSecret(path string) (*Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: reading the cluster secret: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: reading the cluster secret: %w", err)
	}
	if len(b) > MaxSecretBytes {
		return nil, fmt.Errorf("hopwatch/cluster: the cluster secret file %s has more than %d bytes; make one with: openssl rand -hex 32", path, MaxSecretBytes)
	}
	s, err := NewSecret(b)
	if err != nil {
		return nil, fmt.Errorf("%w (in %s)", err, path)
	}
	return s, nil
}

func (s *Secret) mac(parts ...[]byte) []byte {
	h := hmac.New(sha256.New, s.key)
	for _, p := range parts {
		h.Write(p)
	}
	return h.Sum(nil)
}

// secretMetadataKey carries the per-RPC token of the internal gRPC calls.
const secretMetadataKey = "x-hopwatch-cluster-auth"

// PerRPCCredentials returns the credential every internal gRPC call of
// this node carries (grpc.WithPerRPCCredentials).
func (s *Secret) PerRPCCredentials() credentials.PerRPCCredentials { return secretCreds{s.token} }

type secretCreds struct{ token string }

func (c secretCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{secretMetadataKey: c.token}, nil
}

// RequireTransportSecurity is false: the secret is what authenticates a
// cluster without TLS.
func (secretCreds) RequireTransportSecurity() bool { return false }

// errBadSecret is the refusal of a call without this cluster's token.
var errBadSecret = status.Error(codes.Unauthenticated,
	"hopwatch/cluster: the calling node did not present this cluster's secret: its --cluster.secret-file is missing or holds another secret")

// check verifies the token of an incoming call.
func (s *Secret) check(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get(secretMetadataKey) {
		if subtle.ConstantTimeCompare([]byte(v), []byte(s.token)) == 1 {
			return nil
		}
	}
	return errBadSecret
}

// serverOptions are the interceptors that refuse, with Unauthenticated,
// every call without this cluster's token; refused counts them.
func (s *Secret) serverOptions(refused func()) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
			if err := s.check(ctx); err != nil {
				refused()
				return nil, err
			}
			return h(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
			if err := s.check(ss.Context()); err != nil {
				refused()
				return err
			}
			return h(srv, ss)
		}),
	}
}

// The raft handshake. The dialer sends raftMagic and its nonce; the
// listener answers with its nonce and its proof, HMAC(key, "listener",
// nonces); the dialer checks it and sends its own proof, HMAC(key,
// "dialer", nonces), which the listener checks. Either side closes the
// connection on a wrong proof. The magic also tells a node without the
// secret (which reads it as an unknown raft message) from one with it.
const (
	raftMagic          = "hopwatch-raft-auth-v1\n"
	nonceBytes         = 32
	proofBytes         = sha256.Size
	raftHandshakeLimit = 10 * time.Second
)

// errRaftHandshake is a failed raft handshake.
var errRaftHandshake = errors.New("hopwatch/cluster: raft connection refused")

func (s *Secret) proof(role string, dialer, listener []byte) []byte {
	return s.mac([]byte(role), dialer, listener)
}

// dialHandshake runs the dialer's side on c, within deadline.
func (s *Secret) dialHandshake(c net.Conn, deadline time.Time) error {
	_ = c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	nd := make([]byte, nonceBytes)
	if _, err := rand.Read(nd); err != nil {
		return err
	}
	if _, err := c.Write(append([]byte(raftMagic), nd...)); err != nil {
		return fmt.Errorf("%w: %s: sending the handshake: %v", errRaftHandshake, c.RemoteAddr(), err)
	}
	ans := make([]byte, nonceBytes+proofBytes)
	if _, err := io.ReadFull(c, ans); err != nil {
		return fmt.Errorf("%w: %s did not answer the cluster secret's handshake (%v): it has no --cluster.secret-file, or another one", errRaftHandshake, c.RemoteAddr(), err)
	}
	nl := ans[:nonceBytes]
	if !hmac.Equal(ans[nonceBytes:], s.proof("listener", nd, nl)) {
		return fmt.Errorf("%w: %s does not hold this cluster's secret (--cluster.secret-file differs)", errRaftHandshake, c.RemoteAddr())
	}
	if _, err := c.Write(s.proof("dialer", nd, nl)); err != nil {
		return fmt.Errorf("%w: %s: sending the proof: %v", errRaftHandshake, c.RemoteAddr(), err)
	}
	return nil
}

// listenHandshake runs the listener's side on c, within deadline.
func (s *Secret) listenHandshake(c net.Conn, deadline time.Time) error {
	_ = c.SetDeadline(deadline)
	defer c.SetDeadline(time.Time{})
	hello := make([]byte, len(raftMagic)+nonceBytes)
	if _, err := io.ReadFull(c, hello); err != nil {
		return fmt.Errorf("%w: %s sent no handshake (%v)", errRaftHandshake, c.RemoteAddr(), err)
	}
	if string(hello[:len(raftMagic)]) != raftMagic {
		return fmt.Errorf("%w: %s did not start with the cluster secret's handshake: it has no --cluster.secret-file", errRaftHandshake, c.RemoteAddr())
	}
	nd := hello[len(raftMagic):]
	nl := make([]byte, nonceBytes)
	if _, err := rand.Read(nl); err != nil {
		return err
	}
	if _, err := c.Write(append(nl, s.proof("listener", nd, nl)...)); err != nil {
		return fmt.Errorf("%w: %s: answering the handshake: %v", errRaftHandshake, c.RemoteAddr(), err)
	}
	p := make([]byte, proofBytes)
	if _, err := io.ReadFull(c, p); err != nil {
		return fmt.Errorf("%w: %s sent no proof of the cluster secret (%v): its --cluster.secret-file differs", errRaftHandshake, c.RemoteAddr(), err)
	}
	if !hmac.Equal(p, s.proof("dialer", nd, nl)) {
		return fmt.Errorf("%w: %s does not hold this cluster's secret (--cluster.secret-file differs)", errRaftHandshake, c.RemoteAddr())
	}
	return nil
}

// authConn is an accepted raft connection whose listener handshake runs at
// its first read or write, on raft's goroutine for the connection, so that
// a slow or silent peer does not hold up the accept loop (as tls.Conn).
type authConn struct {
	net.Conn
	s       *Secret
	refused func(error)
	once    sync.Once
	err     error
}

func (c *authConn) handshake() error {
	c.once.Do(func() {
		c.err = c.s.listenHandshake(c.Conn, time.Now().Add(raftHandshakeLimit))
		if c.err != nil {
			c.refused(c.err)
			c.Conn.Close()
		}
	})
	return c.err
}

func (c *authConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

func (c *authConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}
