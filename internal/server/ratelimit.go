package server

import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/ingest"
	"github.com/hopwatch/hopwatch/ratelimit"
)

// newRateLimiters builds the spans and bytes limiters from the flags and
// hands them to ingest, which decides on every request with them.
func (s *Server) newRateLimiters() error {
	c := s.cfg.RateLimits
	var err error
	s.spansLimiter, err = ratelimit.New(ratelimit.Options{Name: "spans",
		Default: ratelimit.Limit{Rate: c.IngestionRateSpans, Burst: c.IngestionBurstSpans}}, s.reg, s.logger.With("component", "ratelimit"))
	if err != nil {
		return err
	}
	s.bytesLimiter, err = ratelimit.New(ratelimit.Options{Name: "bytes",
		Default: ratelimit.Limit{Rate: c.IngestionRateBytes}}, s.reg, s.logger.With("component", "ratelimit"))
	if err != nil {
		return err
	}
	s.recv.SetRateLimits(ingest.RateLimits{Spans: s.spansLimiter, Bytes: s.bytesLimiter, Interval: c.ExchangeInterval})
	return nil
}

// newExchange builds the limiters' exchange over the cluster's members and
// registers its service on the internal gRPC server; the node must be
// open and the server not serving yet.
func (s *Server) newExchange() error {
	var dial []grpc.DialOption
	if s.clusterTLS != nil {
		// The same mutual TLS as the cluster's own connections.
		dial = []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(s.clusterTLS.Clone()))}
	}
	if s.clusterSecret != nil {
		if dial == nil {
			dial = []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		}
		dial = append(dial, grpc.WithPerRPCCredentials(s.clusterSecret.PerRPCCredentials()))
	}
	e, err := ratelimit.NewExchange(ratelimit.ExchangeOptions{
		Membership:  clusterMembers{s.node},
		Limiters:    []*ratelimit.Limiter{s.spansLimiter, s.bytesLimiter},
		Interval:    s.cfg.RateLimits.ExchangeInterval,
		DialOptions: dial,
	}, s.reg, s.logger)
	if err != nil {
		return err
	}
	e.RegisterGRPC(s.clusterGRPC)
	s.exchange = e
	return nil
}

// clusterMembers is the exchange's ring: every member of the cluster in
// the replicated state's order (by ID), the same on every node at the same
// index. An unreachable member stays in the ring, marked down, so that only
// its own tenants move to other owners.
type clusterMembers struct{ n *cluster.Node }

var _ ratelimit.Watcher = clusterMembers{}

func (m clusterMembers) Self() string { return m.n.ID() }

// Watch signals every applied change; the exchange looks for ring changes
// among them.
func (m clusterMembers) Watch() (<-chan struct{}, func()) { return m.n.Watch() }

func (m clusterMembers) Members() []ratelimit.Member {
	ms := m.n.State().Members()
	out := make([]ratelimit.Member, len(ms))
	for i, member := range ms {
		out[i] = ratelimit.Member{ID: member.ID, GRPCAddr: member.GRPCAddr, Down: member.State != cluster.MemberLive}
	}
	return out
}
