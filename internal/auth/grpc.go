package auth

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// Access is what a gRPC method requires of its caller.
type Access uint8

const (
	// AccessTenant requires a tenant's token (authentication on) or a
	// tenant from X-Scope-OrgID (off). The zero value, so that a method
	// nobody thought of is not open.
	AccessTenant Access = iota
	// AccessAdmin requires an admin token; open with authentication off.
	AccessAdmin
	// AccessOpen requires nothing: health checks.
	AccessOpen
)

// MethodAccess tells what a method requires, by its full name
// ("/package.Service/Method"). A nil MethodAccess requires AccessTenant of
// every method.
type MethodAccess func(fullMethod string) Access

// OpenServices returns a MethodAccess that opens every method of the named
// services (e.g. "grpc.health.v1.Health") and requires a tenant of the
// others.
func OpenServices(services ...string) MethodAccess {
	open := make(map[string]bool, len(services))
	for _, s := range services {
		open[s] = true
	}
	return func(fullMethod string) Access {
		svc, _, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
		if open[svc] {
			return AccessOpen
		}
		return AccessTenant
	}
}

// UnaryServerInterceptor authenticates each unary call as access requires
// and passes the handler a context carrying the Identity and tenant; with
// authentication on, its incoming metadata has x-scope-orgid set to the
// token's tenant and no authorization, as RequireTenant does for HTTP. A
// refused call ends with Unauthenticated, PermissionDenied or
// InvalidArgument before the handler runs.
func (a *Authenticator) UnaryServerInterceptor(access MethodAccess) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.authorize(ctx, access, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor authenticates each stream once, when it opens, as
// UnaryServerInterceptor does each call: a refused stream ends before the
// handler receives a message; an accepted one keeps its identity for its
// whole life.
func (a *Authenticator) StreamServerInterceptor(access MethodAccess) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.authorize(ss.Context(), access, info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &identityStream{ServerStream: ss, ctx: ctx})
	}
}

// identityStream is a server stream whose context carries the identity.
type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// authorize authenticates a call to method and returns the context its
// handler runs with.
func (a *Authenticator) authorize(ctx context.Context, access MethodAccess, method string) (context.Context, error) {
	want := AccessTenant
	if access != nil {
		want = access(method)
	}
	switch {
	case want == AccessOpen:
		return ctx, nil
	case want == AccessAdmin && !a.opts.Enabled:
		return WithIdentity(ctx, Identity{Admin: true}), nil
	}
	id, err := a.FromGRPC(ctx)
	if err == nil {
		if want == AccessAdmin {
			err = a.requireAdmin(id)
		} else {
			err = a.requireTenant(id)
		}
	}
	if err != nil {
		e := err.(*Error)
		var remote string
		if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
			remote = p.Addr.String()
		}
		a.logger.Debug("call refused", "reason", e.Reason.String(), "method", method, "remote_addr", remote)
		return nil, e
	}
	ctx = WithIdentity(ctx, id)
	if a.opts.Enabled {
		md, _ := metadata.FromIncomingContext(ctx) // a copy
		delete(md, authorizationMetadata)
		if id.Tenant != "" {
			md[orgIDMetadata] = []string{id.Tenant}
		}
		ctx = metadata.NewIncomingContext(ctx, md)
	}
	return ctx, nil
}
