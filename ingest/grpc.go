package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/gzip" // OTLP exporters may compress with gzip
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// rawMessage is a gRPC message kept as its wire bytes. The trace service
// decodes them itself, so that a malformed request is answered with
// InvalidArgument and counted, instead of the Internal status gRPC gives
// to a codec failure.
type rawMessage struct{ b []byte }

// rawCodec passes rawMessage through untouched and every other message to
// the standard protobuf codec.
type rawCodec struct{ proto encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if m, ok := v.(*rawMessage); ok {
		return mem.BufferSlice{mem.SliceBuffer(m.b)}, nil
	}
	return c.proto.Marshal(v)
}

func (c rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if m, ok := v.(*rawMessage); ok {
		m.b = data.Materialize()
		return nil
	}
	return c.proto.Unmarshal(data, v)
}

func (rawCodec) Name() string { return "proto" }

// maxHeaderListSize bounds a gRPC call's headers (metadata), uncompressed.
const maxHeaderListSize = 1 << 20

// GRPCServerOptions returns the options the gRPC server hosting the
// receiver must be created with. Interceptors added after them (with
// grpc.ChainUnaryInterceptor and grpc.ChainStreamInterceptor, which
// append) run inside the per-method metrics, so that calls they refuse,
// such as authentication failures, are still counted per method.
func (r *Receiver) GRPCServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(rawCodec{proto: encoding.GetCodecV2("proto")}),
		grpc.MaxRecvMsgSize(r.opts.MaxRequestBytes),
		grpc.MaxConcurrentStreams(uint32(r.opts.GRPC.MaxConcurrentStreams)),
		grpc.ConnectionTimeout(r.opts.GRPC.ConnectionTimeout),
		// Headers are small; gRPC's default allows 16 MiB of them.
		grpc.MaxHeaderListSize(maxHeaderListSize),
		// Clients may ping every 10 s, even between calls (exporters and
		// streaming clients keep connections warm); more often, the
		// connection is closed with too_many_pings.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		// Connections idle for long are closed, and the server pings a
		// silent client after a minute and drops it if no answer comes in
		// 20 s, so dead peers do not hold streams open.
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: r.opts.GRPC.MaxConnectionIdle, Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.StatsHandler(refusalCounter{r}),
		// Live per-message counters of every method, streams included.
		grpc.ChainUnaryInterceptor(r.grpcMetrics.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(r.grpcMetrics.StreamServerInterceptor()),
	}
}

// refusalCounter counts the Export calls gRPC refuses before the handler
// runs (a message over MaxRecvMsgSize, a decompression failure), which the
// handler cannot see. Calls an authentication interceptor refused
// (Unauthenticated, PermissionDenied) are not the receiver's to count:
// they never reached it, as OTLP/HTTP requests refused by the middleware
// in front of HTTPHandler never do, and the authenticator counts them.
type refusalCounter struct{ r *Receiver }

// rpcTag marks, in the context, that the Export handler ran.
type rpcTag struct{ handled bool }

type rpcTagKey struct{}

func (c refusalCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName != exportMethod {
		return ctx
	}
	return context.WithValue(ctx, rpcTagKey{}, &rpcTag{})
}

func (c refusalCounter) HandleRPC(ctx context.Context, s stats.RPCStats) {
	end, ok := s.(*stats.End)
	if !ok || end.Error == nil {
		return
	}
	tag, ok := ctx.Value(rpcTagKey{}).(*rpcTag)
	if !ok || tag.handled {
		return
	}
	reason := refusedMalformed
	switch status.Code(end.Error) {
	case codes.Unauthenticated, codes.PermissionDenied:
		// Before the handler, only authentication answers these.
		return
	case codes.ResourceExhausted:
		reason = refusedTooLarge
	}
	c.r.metrics.requests.WithLabelValues(protoGRPC).Inc()
	c.r.metrics.requestsRefused.WithLabelValues(protoGRPC, reason).Inc()
}

func (refusalCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (refusalCounter) HandleConn(context.Context, stats.ConnStats)                       {}

const exportMethod = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// RegisterGRPC registers the OTLP TraceService on s, which must have been
// created with GRPCServerOptions.
func (r *Receiver) RegisterGRPC(s *grpc.Server) {
	s.RegisterService(&traceServiceDesc, r)
	r.registerStreamService(s)
	r.registerWriterService(s)
	r.grpcMetrics.InitializeMetrics(s)
}

// traceServiceDesc is opentelemetry.proto.collector.trace.v1.TraceService,
// with the request kept raw (see rawMessage).
var traceServiceDesc = grpc.ServiceDesc{
	ServiceName: "opentelemetry.proto.collector.trace.v1.TraceService",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Export",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(rawMessage)
			if err := dec(in); err != nil {
				return nil, err
			}
			r := srv.(*Receiver)
			if interceptor == nil {
				return r.exportGRPC(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: exportMethod}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return r.exportGRPC(ctx, req.(*rawMessage))
			})
		},
	}},
	Metadata: "opentelemetry/proto/collector/trace/v1/trace_service.proto",
}

func (r *Receiver) exportGRPC(ctx context.Context, in *rawMessage) (*rawMessage, error) {
	if tag, ok := ctx.Value(rpcTagKey{}).(*rpcTag); ok {
		tag.handled = true
	}
	r.metrics.requests.WithLabelValues(protoGRPC).Inc()
	tenantID, err := r.resolver.FromGRPC(ctx)
	if err != nil {
		r.metrics.requestsRefused.WithLabelValues(protoGRPC, refusedTenant).Inc()
		code := codes.InvalidArgument
		if errors.Is(err, tenant.ErrMissing) {
			code = codes.Unauthenticated
		}
		return nil, status.Error(code, err.Error())
	}
	var writer string
	if ids := metadata.ValueFromIncomingContext(ctx, writerMetadata); len(ids) > 0 {
		writer = ids[0]
		if err := writerFromHeader(writer); err != nil {
			r.metrics.requestsRefused.WithLabelValues(protoGRPC, refusedWriter).Inc()
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	res, err := r.export(ctx, protoGRPC, tenantID, writer, len(in.b), decodeProtobuf(in.b))
	var malformed errMalformed
	if errors.As(err, &malformed) {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var limited *errRateLimited
	if errors.As(err, &limited) {
		return nil, limited.rpcStatus().Err()
	}
	if err != nil {
		// UNAVAILABLE is retryable for OTLP clients; nothing of the request was kept.
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := ptraceotlp.NewExportResponse()
	if res.rejected > 0 {
		resp.PartialSuccess().SetRejectedSpans(res.rejected)
		resp.PartialSuccess().SetErrorMessage(res.message)
	}
	b, err := resp.MarshalProto()
	if err != nil {
		return nil, status.Error(codes.Internal, fmt.Sprintf("encode response: %v", err))
	}
	return &rawMessage{b: b}, nil
}
