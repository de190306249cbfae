package auth

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// The test service hopwatch.authtest.Echo: Whoami and Admin answer what
// the handler saw of the call; Chat is a bidirectional stream answering
// each message the same way, like the streaming ingest API.
const (
	whoamiMethod = "/hopwatch.authtest.Echo/Whoami"
	adminMethod  = "/hopwatch.authtest.Echo/Admin"
	chatMethod   = "/hopwatch.authtest.Echo/Chat"
)

func seenFrom(ctx context.Context) *wrapperspb.StringValue {
	var s seen
	s.Identity, s.HasIdentity = IdentityFrom(ctx)
	s.Tenant, _ = tenant.From(ctx)
	md, _ := metadata.FromIncomingContext(ctx)
	s.OrgID = strings.Join(md.Get(tenant.Header), ",")
	s.Authorization = strings.Join(md.Get("authorization"), ",")
	b, _ := json.Marshal(s)
	return wrapperspb.String(string(b))
}

func unaryEcho(method string) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: method[strings.LastIndexByte(method, '/')+1:],
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			h := func(ctx context.Context, _ any) (any, error) { return seenFrom(ctx), nil }
			if interceptor == nil {
				return h(ctx, in)
			}
			return interceptor(ctx, in, &grpc.UnaryServerInfo{Server: srv, FullMethod: method}, h)
		},
	}
}

var echoDesc = grpc.ServiceDesc{
	ServiceName: "hopwatch.authtest.Echo",
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{unaryEcho(whoamiMethod), unaryEcho(adminMethod)},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Chat",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(_ any, ss grpc.ServerStream) error {
			for {
				in := new(wrapperspb.StringValue)
				if err := ss.RecvMsg(in); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := ss.SendMsg(seenFrom(ss.Context())); err != nil {
					return err
				}
			}
		},
	}},
}

func testAccess(method string) Access {
	if method == adminMethod {
		return AccessAdmin
	}
	return OpenServices(healthpb.Health_ServiceDesc.ServiceName)(method)
}

// countingTokens counts look-ups, to see that a stream is authenticated
// once and not per message.
type countingTokens struct {
	Tokens
	n atomic.Int64
}

func (c *countingTokens) Lookup(h [32]byte) (string, bool) {
	c.n.Add(1)
	return c.Tokens.Lookup(h)
}

// startGRPC serves the health and echo services on 127.0.0.1 behind a's
// interceptors and returns a client connection.
func startGRPC(t *testing.T, a *Authenticator, serverCreds, clientCreds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor(testAccess)),
		grpc.ChainStreamInterceptor(a.StreamServerInterceptor(testAccess)),
	}
	if serverCreds != nil {
		opts = append(opts, grpc.Creds(serverCreds))
	}
	s := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(s, health.NewServer())
	s.RegisterService(&echoDesc, struct{}{})
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Stop()
		require.NoError(t, <-served)
	})
	if clientCreds == nil {
		clientCreds = insecure.NewCredentials()
	}
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(clientCreds))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// withMD returns a context of the test with outgoing metadata kv.
func withMD(t *testing.T, kv ...string) context.Context {
	return metadata.AppendToOutgoingContext(t.Context(), kv...)
}

func invoke(ctx context.Context, conn *grpc.ClientConn, method string) (seen, error) {
	out := new(wrapperspb.StringValue)
	if err := conn.Invoke(ctx, method, wrapperspb.String("hi"), out); err != nil {
		return seen{}, err
	}
	var s seen
	err := json.Unmarshal([]byte(out.GetValue()), &s)
	return s, err
}

func TestGRPCAuthEnabled(t *testing.T) {
	reg := prometheus.NewRegistry()
	tokens := &countingTokens{Tokens: testTokens()}
	a, err := New(Options{Enabled: true, Realm: "hopwatch", AdminTokens: [][32]byte{HashToken(tokenAdmin)}}, tokens, reg, nil)
	require.NoError(t, err)
	conn := startGRPC(t, a, nil, nil)

	t.Run("health is open", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
		require.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
	})

	t.Run("unary", func(t *testing.T) {
		ok := func(method string, want seen, kv ...string) {
			t.Helper()
			got, err := invoke(withMD(t, kv...), conn, method)
			require.NoError(t, err)
			require.Equal(t, want, got)
		}
		a := seen{Identity: Identity{Tenant: "team-a"}, HasIdentity: true, Tenant: "team-a", OrgID: "team-a"}
		ok(whoamiMethod, a, "authorization", "Bearer "+tokenA)
		ok(whoamiMethod, a, "authorization", "Bearer "+tokenA, "x-scope-orgid", "team-a")
		ok(adminMethod, seen{Identity: Identity{Admin: true}, HasIdentity: true}, "authorization", "Bearer "+tokenAdmin)

		no := func(method string, code codes.Code, reason Reason, msg string, kv ...string) {
			t.Helper()
			before := refused(t, reg, reason)
			_, err := invoke(withMD(t, kv...), conn, method)
			st, _ := status.FromError(err)
			require.Equal(t, code, st.Code(), "%v", err)
			require.Contains(t, st.Message(), msg)
			require.Equal(t, before+1, refused(t, reg, reason))
		}
		no(whoamiMethod, codes.Unauthenticated, ReasonMissing, "no bearer token: send the header Authorization: Bearer <token>")
		no(whoamiMethod, codes.Unauthenticated, ReasonMissing, "no bearer token", "x-scope-orgid", "team-a")
		no(whoamiMethod, codes.Unauthenticated, ReasonMalformed, "uses the Basic scheme", "authorization", "Basic eDp5")
		no(whoamiMethod, codes.Unauthenticated, ReasonInvalid, "not known to hopwatch", "authorization", "Bearer hw_unknown")
		no(whoamiMethod, codes.PermissionDenied, ReasonTenantMismatch, `the token belongs to tenant "team-a" but X-Scope-OrgID names "team-b"`,
			"authorization", "Bearer "+tokenA, "x-scope-orgid", "team-b")
		no(whoamiMethod, codes.PermissionDenied, ReasonNoTenant, "an admin token belongs to no tenant", "authorization", "Bearer "+tokenAdmin)
		no(adminMethod, codes.PermissionDenied, ReasonNotAdmin, "needs an admin token", "authorization", "Bearer "+tokenB)
		no(adminMethod, codes.Unauthenticated, ReasonMissing, "no bearer token")
	})

	t.Run("stream authenticated once", func(t *testing.T) {
		ctx, cancel := context.WithCancel(withMD(t, "authorization", "Bearer "+tokenB))
		defer cancel()
		before := tokens.n.Load()
		cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, chatMethod)
		require.NoError(t, err)
		for range 3 {
			require.NoError(t, cs.SendMsg(wrapperspb.String("batch")))
			out := new(wrapperspb.StringValue)
			require.NoError(t, cs.RecvMsg(out))
			var s seen
			require.NoError(t, json.Unmarshal([]byte(out.GetValue()), &s))
			require.Equal(t, seen{Identity: Identity{Tenant: "team-b"}, HasIdentity: true, Tenant: "team-b", OrgID: "team-b"}, s)
		}
		require.NoError(t, cs.CloseSend())
		require.ErrorIs(t, cs.RecvMsg(new(wrapperspb.StringValue)), io.EOF)
		require.Equal(t, before+1, tokens.n.Load(), "one look-up for the stream, none per message")
	})

	t.Run("stream refused", func(t *testing.T) {
		f := func(code codes.Code, reason Reason, kv ...string) {
			t.Helper()
			before := refused(t, reg, reason)
			cs, err := conn.NewStream(withMD(t, kv...), &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, chatMethod)
			require.NoError(t, err)
			_ = cs.SendMsg(wrapperspb.String("batch")) // may already see the end of the stream
			err = cs.RecvMsg(new(wrapperspb.StringValue))
			require.Equal(t, code, status.Code(err), "%v", err)
			require.Equal(t, before+1, refused(t, reg, reason))
		}
		f(codes.Unauthenticated, ReasonMissing)
		f(codes.Unauthenticated, ReasonInvalid, "authorization", "Bearer "+tokenA+"A")
		f(codes.PermissionDenied, ReasonTenantMismatch, "authorization", "Bearer "+tokenA, "x-scope-orgid", "team-b")
	})
}

func TestGRPCAuthDisabled(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, err := New(Options{Realm: "hopwatch", Resolver: tenant.Resolver{Enabled: true}}, nil, reg, nil)
	require.NoError(t, err)
	conn := startGRPC(t, a, nil, nil)

	got, err := invoke(withMD(t, "x-scope-orgid", "team-a", "authorization", "Bearer passed-by-gateway"), conn, whoamiMethod)
	require.NoError(t, err)
	require.Equal(t, seen{Identity: Identity{Tenant: "team-a"}, HasIdentity: true, Tenant: "team-a", OrgID: "team-a", Authorization: "Bearer passed-by-gateway"}, got)

	_, err = invoke(withMD(t), conn, whoamiMethod)
	require.Equal(t, codes.Unauthenticated, status.Code(err))
	require.Contains(t, status.Convert(err).Message(), "no tenant ID: set the X-Scope-OrgID header")
	require.Equal(t, 1.0, refused(t, reg, ReasonMissingTenant))

	_, err = invoke(withMD(t, "x-scope-orgid", "a/b"), conn, whoamiMethod)
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Equal(t, 1.0, refused(t, reg, ReasonInvalidTenant))

	got, err = invoke(withMD(t), conn, adminMethod)
	require.NoError(t, err)
	require.Equal(t, Identity{Admin: true}, got.Identity, "admin methods are the gateway's to protect")

	cs, err := conn.NewStream(withMD(t, "x-scope-orgid", "team-c"), &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, chatMethod)
	require.NoError(t, err)
	require.NoError(t, cs.SendMsg(wrapperspb.String("batch")))
	out := new(wrapperspb.StringValue)
	require.NoError(t, cs.RecvMsg(out))
	require.Contains(t, out.GetValue(), `"Tenant":"team-c"`)
	require.NoError(t, cs.CloseSend())
	require.ErrorIs(t, cs.RecvMsg(out), io.EOF)
}

func TestOpenServices(t *testing.T) {
	access := OpenServices("grpc.health.v1.Health")
	require.Equal(t, AccessOpen, access("/grpc.health.v1.Health/Check"))
	require.Equal(t, AccessOpen, access("/grpc.health.v1.Health/Watch"))
	require.Equal(t, AccessTenant, access("/grpc.health.v1.HealthX/Check"))
	require.Equal(t, AccessTenant, access("/opentelemetry.proto.collector.trace.v1.TraceService/Export"))
	require.Equal(t, AccessTenant, access(""))
}
