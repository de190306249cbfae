package auth

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc/metadata"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// Options configures an Authenticator.
type Options struct {
	// Enabled requires a bearer token on every request and takes the tenant
	// from it (--auth.enabled). Off, the tenant comes from Resolver and
	// admin endpoints are open: hopwatch then sits behind a gateway that
	// authenticates and sets X-Scope-OrgID.
	Enabled bool
	// Resolver resolves the tenant with Enabled off
	// (--auth.multitenancy-enabled).
	Resolver tenant.Resolver
	// AdminTokens are the hashes of the admin tokens
	// (--auth.admin-token-file, read with LoadAdminTokens). None: no
	// request is admin while Enabled.
	AdminTokens [][32]byte
	// Realm names the protection space in WWW-Authenticate challenges.
	Realm string
}

// DefaultOptions returns authentication off, every request tenant
// "anonymous".
func DefaultOptions() Options {
	return Options{Realm: "hopwatch"}
}

// Validate reports every problem with the options.
func (o Options) Validate() error {
	var errs []error
	if o.Realm == "" || strings.ContainsAny(o.Realm, "\"\\\r\n") {
		errs = append(errs, fmt.Errorf("invalid Realm %q: must be non-empty, without quotes, backslashes or line breaks", o.Realm))
	}
	return errors.Join(errs...)
}

// Identity is who a request comes from.
type Identity struct {
	// Tenant is the tenant whose data the request reads or writes; empty
	// for an admin token, which belongs to no tenant.
	Tenant string
	// Admin is set for an admin token.
	Admin bool
}

type identityKey struct{}

// WithIdentity returns a context carrying id, and id's tenant as
// tenant.From reads it.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	ctx = context.WithValue(ctx, identityKey{}, id)
	if id.Tenant != "" {
		ctx = tenant.With(ctx, id.Tenant)
	}
	return ctx
}

// IdentityFrom returns the identity the middleware or an interceptor put in
// ctx.
func IdentityFrom(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}

// Authenticator decides who a request comes from. It is safe for
// concurrent use.
type Authenticator struct {
	opts    Options
	tokens  Tokens
	admin   atomic.Pointer[[][32]byte]
	metrics *authMetrics
	logger  *slog.Logger
}

type authMetrics struct {
	refused *prometheus.CounterVec // reason
}

func newAuthMetrics(reg prometheus.Registerer) *authMetrics {
	m := &authMetrics{
		refused: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_auth_refused_total",
			Help: "Requests refused before reaching a handler, by reason (missing, malformed, invalid, tenant_mismatch, no_tenant, not_admin, missing_tenant, invalid_tenant). Nothing of a refused request is written.",
		}, []string{"reason"}),
	}
	// Every reason is exported from the start, so that rate() over a first
	// refusal sees an increase from 0.
	for r := range numReasons {
		m.refused.WithLabelValues(r.String())
	}
	return m
}

// New returns an Authenticator. tokens finds the tenant of a token; it may
// be nil only with authentication off. A nil reg registers nothing; a nil
// logger discards.
func New(opts Options, tokens Tokens, reg prometheus.Registerer, logger *slog.Logger) (*Authenticator, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/auth: invalid options: %w", err)
	}
	if opts.Enabled && tokens == nil {
		return nil, errors.New("hopwatch/auth: authentication is enabled without a token store")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{opts: opts, tokens: tokens, metrics: newAuthMetrics(reg), logger: logger}
	a.SetAdminTokens(opts.AdminTokens)
	return a, nil
}

// Enabled reports whether requests need a token.
func (a *Authenticator) Enabled() bool { return a.opts.Enabled }

// SetAdminTokens replaces the admin token hashes, for a reload of the admin
// token file; requests in flight finish with the old ones.
func (a *Authenticator) SetAdminTokens(hashes [][32]byte) {
	hs := append([][32]byte(nil), hashes...)
	a.admin.Store(&hs)
}

// isAdmin compares h with every admin hash, in time independent of which
// (if any) matches.
func (a *Authenticator) isAdmin(h [32]byte) bool {
	match := 0
	for _, ah := range *a.admin.Load() {
		match |= subtle.ConstantTimeCompare(h[:], ah[:])
	}
	return match == 1
}

// FromHTTP returns who r comes from. With authentication on that is the
// identity of its bearer token; an X-Scope-OrgID naming another tenant than
// the token's is refused. Off, it is the tenant of tenant.Resolver. Every
// error is an *Error and has been counted in hopwatch_auth_refused_total.
func (a *Authenticator) FromHTTP(r *http.Request) (Identity, error) {
	if !a.opts.Enabled {
		id, err := a.opts.Resolver.FromHTTP(r)
		if err != nil {
			return Identity{}, a.refuse(tenantError(err))
		}
		return Identity{Tenant: id}, nil
	}
	tok, err := BearerFromHeader(r.Header)
	if err != nil {
		return Identity{}, a.refuse(err.(*Error))
	}
	return a.identify(tok, r.Header.Values(tenant.Header))
}

// FromGRPC returns who a gRPC call comes from, from its incoming metadata
// (authorization, x-scope-orgid), as FromHTTP.
func (a *Authenticator) FromGRPC(ctx context.Context) (Identity, error) {
	if !a.opts.Enabled {
		id, err := a.opts.Resolver.FromGRPC(ctx)
		if err != nil {
			return Identity{}, a.refuse(tenantError(err))
		}
		return Identity{Tenant: id}, nil
	}
	tok, err := bearer(metadata.ValueFromIncomingContext(ctx, authorizationMetadata))
	if err != nil {
		return Identity{}, a.refuse(err.(*Error))
	}
	return a.identify(tok, metadata.ValueFromIncomingContext(ctx, orgIDMetadata))
}

// identify maps a token to its identity. orgIDs are the request's
// X-Scope-OrgID values: allowed with a tenant token when they all name its
// tenant (or are empty), so that clients set up for a gateway keep
// working; ignored with an admin token.
func (a *Authenticator) identify(tok string, orgIDs []string) (Identity, error) {
	h := HashToken(tok)
	if a.isAdmin(h) {
		return Identity{Admin: true}, nil
	}
	id, ok := a.tokens.Lookup(h)
	if !ok {
		msg := "the bearer token is not known to hopwatch: it was mistyped, revoked, or issued by another cluster; ask an administrator for a token of your tenant"
		if !strings.HasPrefix(tok, TokenPrefix) {
			msg += " (hopwatch's tokens start with " + TokenPrefix + ")"
		}
		return Identity{}, a.refuse(&Error{Reason: ReasonInvalid, msg: msg})
	}
	for _, o := range orgIDs {
		if o != "" && o != id {
			return Identity{}, a.refuse(&Error{Reason: ReasonTenantMismatch, msg: fmt.Sprintf(
				"the token belongs to tenant %q but %s names %q: with authentication on the tenant comes from the token; drop the header or use a token of tenant %q",
				id, tenant.Header, o, o)})
		}
	}
	return Identity{Tenant: id}, nil
}

// tenantError turns a tenant.Resolver error into a refusal.
func tenantError(err error) *Error {
	msg := strings.TrimPrefix(err.Error(), "hopwatch/tenant: ")
	if errors.Is(err, tenant.ErrMissing) {
		return &Error{Reason: ReasonMissingTenant, msg: msg, err: err}
	}
	return &Error{Reason: ReasonInvalidTenant, msg: msg, err: err}
}

// refuse counts a refusal and returns it.
func (a *Authenticator) refuse(e *Error) *Error {
	a.metrics.refused.WithLabelValues(e.Reason.String()).Inc()
	return e
}

// requireTenant refuses an identity without a tenant: an admin token on an
// endpoint serving a tenant's data.
func (a *Authenticator) requireTenant(id Identity) error {
	if id.Tenant != "" {
		return nil
	}
	return a.refuse(&Error{Reason: ReasonNoTenant, msg: "an admin token belongs to no tenant and cannot read or write a tenant's data; use a token of the tenant"})
}

// requireAdmin refuses an identity without the admin token.
func (a *Authenticator) requireAdmin(id Identity) error {
	if id.Admin {
		return nil
	}
	return a.refuse(&Error{Reason: ReasonNotAdmin, msg: fmt.Sprintf(
		"this endpoint needs an admin token (one of --auth.admin-token-file); the token sent belongs to tenant %q", id.Tenant)})
}
