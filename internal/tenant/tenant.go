package tenant

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"google.golang.org/grpc/metadata"
)

// Header carries the tenant ID, in HTTP and as gRPC metadata (lower case there).
const Header = "X-Scope-OrgID"

// Anonymous is the tenant of every request when multi-tenancy is off.
const Anonymous = "anonymous"

// MaxLength is the longest tenant ID accepted (Mimir's limit).
const MaxLength = 150

// ErrMissing is returned when multi-tenancy is on and a request names no tenant.
var ErrMissing = errors.New("hopwatch/tenant: no tenant ID: set the " + Header + " header, or run with --auth.multitenancy-enabled=false")

// Validate reports why id cannot be a tenant ID, or nil. The rules keep an
// ID safe as a directory name and a label value.
func Validate(id string) error {
	switch {
	case id == "":
		return ErrMissing
	case len(id) > MaxLength:
		return fmt.Errorf("hopwatch/tenant: tenant ID is %d bytes, longer than the limit of %d", len(id), MaxLength)
	case id == "." || id == "..":
		return fmt.Errorf("hopwatch/tenant: tenant ID %q is not allowed", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		switch c {
		case '!', '-', '_', '.', '*', '\'', '(', ')':
			continue
		}
		return fmt.Errorf("hopwatch/tenant: tenant ID %q has character %q at offset %d; allowed are letters, digits and !-_.*'()", id, c, i)
	}
	return nil
}

// Resolver picks the tenant of a request.
type Resolver struct {
	// Enabled takes the tenant from the request; off, every request is Anonymous.
	Enabled bool
}

// FromHTTP returns the tenant of an HTTP request.
func (r Resolver) FromHTTP(req *http.Request) (string, error) {
	if !r.Enabled {
		return Anonymous, nil
	}
	id := req.Header.Get(Header)
	return id, Validate(id)
}

// FromGRPC returns the tenant of a gRPC call from its incoming metadata.
func (r Resolver) FromGRPC(ctx context.Context) (string, error) {
	if !r.Enabled {
		return Anonymous, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(Header) // metadata keys are matched case-insensitively
	if len(vals) == 0 {
		return "", ErrMissing
	}
	if len(vals) > 1 {
		return "", fmt.Errorf("hopwatch/tenant: %d %s values; send exactly one", len(vals), Header)
	}
	return vals[0], Validate(vals[0])
}

type ctxKey struct{}

// With returns a context carrying the tenant.
func With(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, ctxKey{}, id)
}

// From returns the tenant carried by ctx, or false.
func From(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(ctxKey{}).(string)
	return id, ok
}
