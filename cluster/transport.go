package cluster

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/hashicorp/raft"
)

// streamLayer is raft's network transport over TCP, with TLS when
// configured: one listener, and dials to the other members' raft addresses.
type streamLayer struct {
	net.Listener
	advertise net.Addr
	tls       *tls.Config
}

var _ raft.StreamLayer = (*streamLayer)(nil)

// newStreamLayer listens on bind and advertises advertise, or the listener's
// own address when advertise is empty.
func newStreamLayer(bind, advertise string, tlsConf *tls.Config) (*streamLayer, error) {
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
	return &streamLayer{Listener: ln, advertise: adv, tls: tlsConf}, nil
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.tls != nil {
		return tls.DialWithDialer(d, "tcp", string(addr), s.tls)
	}
	return d.Dial("tcp", string(addr))
}

func (s *streamLayer) Addr() net.Addr { return s.advertise }
