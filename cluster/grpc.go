package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"
	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// reachedHeader is sent by every cluster service handler before it does
// anything: a failed call without it never reached a handler, so it can be
// sent again without risk of applying a change twice.
const reachedHeader = "x-hopwatch-cluster-node"

// errUnreached marks a call that failed before reaching the cluster service
// of the node it was sent to.
var errUnreached = errors.New("hopwatch/cluster: leader not reached")

// errLeaderUnknown marks a request that was not sent for want of a leader.
var errLeaderUnknown = fmt.Errorf("%w: no leader known", ErrNoLeader)

type (
	clusterClient = hopwatchv1.ClusterServiceClient
	removeRequest = hopwatchv1.RemoveRequest
)

// RegisterGRPC registers the cluster service (forwarded writes, joins,
// removals, read index) on the node's gRPC server, the one other nodes reach
// at cfg.GRPCAdvertise. Register it before that server serves.
func (n *Node) RegisterGRPC(s grpc.ServiceRegistrar) {
	hopwatchv1.RegisterClusterServiceServer(s, &service{n: n})
}

// service serves ClusterService.
type service struct {
	hopwatchv1.UnimplementedClusterServiceServer
	n *Node
}

func (s *service) reached(ctx context.Context) {
	_ = grpc.SendHeader(ctx, metadata.Pairs(reachedHeader, s.n.id))
}

func (s *service) leader() error {
	if s.n.ctx.Err() != nil {
		return ErrShutdown
	}
	if s.n.raft.State() != raft.Leader {
		return errNotLeader
	}
	return nil
}

func (s *service) Apply(ctx context.Context, req *hopwatchv1.ApplyRequest) (*hopwatchv1.ApplyResponse, error) {
	s.reached(ctx)
	if err := s.leader(); err != nil {
		return nil, toStatus(err)
	}
	c, err := decodeCommand(req.GetCommand())
	if err != nil {
		return nil, toStatus(err)
	}
	index, err := s.n.applyLocal(ctx, c, req.GetCommand(), req.GetOrigin())
	if err != nil {
		return nil, toStatus(err)
	}
	return &hopwatchv1.ApplyResponse{Index: index}, nil
}

func (s *service) Join(ctx context.Context, req *hopwatchv1.JoinRequest) (*hopwatchv1.JoinResponse, error) {
	s.reached(ctx)
	if err := checkDefaultLimits(ctx, s.n.State()); err != nil {
		return nil, toStatus(err)
	}
	if req.GetForwarded() {
		if err := s.leader(); err != nil {
			return nil, toStatus(err)
		}
	}
	index, err := s.n.join(ctx, req.GetId(), req.GetRaftAddress(), req.GetGrpcAddress())
	if err != nil {
		return nil, toStatus(err)
	}
	return &hopwatchv1.JoinResponse{Index: index}, nil
}

func (s *service) Remove(ctx context.Context, req *hopwatchv1.RemoveRequest) (*hopwatchv1.RemoveResponse, error) {
	s.reached(ctx)
	if req.GetForwarded() {
		if err := s.leader(); err != nil {
			return nil, toStatus(err)
		}
	}
	index, err := s.n.remove(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &hopwatchv1.RemoveResponse{Index: index}, nil
}

func (s *service) ReadIndex(ctx context.Context, _ *hopwatchv1.ReadIndexRequest) (*hopwatchv1.ReadIndexResponse, error) {
	s.reached(ctx)
	if err := s.leader(); err != nil {
		return nil, toStatus(err)
	}
	index, err := s.n.readIndexLocal(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &hopwatchv1.ReadIndexResponse{Index: index, Term: s.n.raft.CurrentTerm(), LeaderId: s.n.id}, nil
}

// clientPool holds one gRPC client connection per node address.
type clientPool struct {
	opts  []grpc.DialOption
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newClientPool(tlsConf *tls.Config, secret *Secret) *clientPool {
	opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(classify)}
	if tlsConf != nil {
		opts[0] = grpc.WithTransportCredentials(credentials.NewTLS(tlsConf))
	}
	if secret != nil {
		opts = append(opts, grpc.WithPerRPCCredentials(secret.PerRPCCredentials()))
	}
	return &clientPool{opts: opts, conns: map[string]*grpc.ClientConn{}}
}

// call runs fn against the cluster service at addr. Its errors are this
// package's kinds; errUnreached when the call provably did not reach the
// service.
func (p *clientPool) call(ctx context.Context, addr string, fn func(context.Context, clusterClient) error) error {
	conn, err := p.conn(addr)
	if err != nil {
		return err
	}
	return fn(ctx, hopwatchv1.NewClusterServiceClient(conn))
}

func (p *clientPool) conn(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return nil, ErrShutdown
	}
	if c := p.conns[addr]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(addr, p.opts...)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: gRPC client for %s: %w", addr, err)
	}
	p.conns[addr] = c
	return c, nil
}

func (p *clientPool) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, c := range p.conns {
		errs = append(errs, c.Close())
	}
	p.conns = nil
	return errors.Join(errs...)
}

// classify turns a failed call's status into this package's errors, telling
// a call that never reached the service (safe to resend) from one whose
// outcome the service decided or left unknown.
func classify(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var header metadata.MD
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Header(&header))...)
	if err == nil {
		return nil
	}
	reached := len(header.Get(reachedHeader)) > 0
	code := status.Code(err)
	switch {
	case !reached && code == codes.Unavailable:
		return fmt.Errorf("%w: %s: %v", errUnreached, cc.Target(), status.Convert(err).Message())
	case code == codes.DeadlineExceeded || code == codes.Canceled:
		if reached {
			return fmt.Errorf("%w: %s did not answer in time; the change's outcome is unknown, read the state before retrying", ErrNoLeader, cc.Target())
		}
		return fmt.Errorf("%w: %s not reached in time", ErrNoLeader, cc.Target())
	}
	return fromStatus(err)
}

func joinRequest(id, raftAddr, grpcAddr string, forwarded bool) *hopwatchv1.JoinRequest {
	return &hopwatchv1.JoinRequest{Id: id, RaftAddress: raftAddr, GrpcAddress: grpcAddr, Forwarded: forwarded}
}

func applyRequest(b []byte, origin string) *hopwatchv1.ApplyRequest {
	return &hopwatchv1.ApplyRequest{Command: b, Origin: origin}
}

func readIndexRequest() *hopwatchv1.ReadIndexRequest { return &hopwatchv1.ReadIndexRequest{} }
