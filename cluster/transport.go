package cluster

import (
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is raft's network transport over TCP, with TLS when
// configured: one listener, and dials to the other members' raft addresses.
//
// It closes every connection it made or accepted when it closes: raft's
// NetworkTransport.Close closes only the listener, which would leave the
// goroutines serving accepted connections (and the pooled ones) to live
// until the other side hangs up.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	tls       *tls.Config
	// secret, when set, authenticates every connection both ways before
	// raft uses it (Secret); refused hears of each accepted connection
	// that failed.
	secret  *Secret
	refused func(error)

	mu     sync.Mutex
	conns  map[*trackedConn]struct{}
	closed bool
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// newStreamLayer listens on bind and advertises advertise, or the listener's
// own address when advertise is empty. With a secret, connections prove it
// both ways; refused is called on each accepted one that did not.
func newStreamLayer(bind, advertise string, tlsConf *tls.Config, secret *Secret, refused func(error)) (*streamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: raft transport: %w", err)
	}
	var adv net.Addr = ln.Addr()
	if advertise != "" {
		adv, err = net.ResolveTCPAddr("tcp", advertise)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("hopwatch/cluster: RaftAdvertise %q: %w", advertise, err)
		}
	}
	if tcp, ok := adv.(*net.TCPAddr); ok && (tcp.IP == nil || tcp.IP.IsUnspecified()) {
		ln.Close()
		return nil, fmt.Errorf("hopwatch/cluster: raft listens on %s, which other nodes cannot dial; set RaftAdvertise to an address they can dial", adv)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	return &streamLayer{Listener: ln, advertise: adv, tls: tlsConf, secret: secret, refused: refused, conns: map[*trackedConn]struct{}{}}, nil
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	var c net.Conn
	var err error
	if s.tls != nil {
		c, err = tls.DialWithDialer(d, "tcp", string(addr), s.tls)
	} else {
		c, err = d.Dial("tcp", string(addr))
	}
	if err != nil {
		return nil, err
	}
	if s.secret != nil {
		if err := s.secret.dialHandshake(c, time.Now().Add(timeout)); err != nil {
			c.Close()
			return nil, err
		}
	}
	return s.track(c)
}

func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if s.secret != nil {
		c = &authConn{Conn: c, s: s.secret, refused: s.refused}
	}
	return s.track(c)
}

func (s *streamLayer) track(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	tc := &trackedConn{Conn: c, s: s}
	s.conns[tc] = struct{}{}
	return tc, nil
}

// Close closes the listener and every connection.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = map[*trackedConn]struct{}{}
	s.mu.Unlock()
	err := s.Listener.Close()
	for c := range conns {
		c.Conn.Close()
	}
	return err
}

type trackedConn struct {
	net.Conn
	s *streamLayer
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }
