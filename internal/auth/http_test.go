package auth

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// Tokens of the tests: two tenants and an admin.
var (
	tokenA     = "hw_" + strings.Repeat("A", 43)
	tokenB     = "hw_" + strings.Repeat("B", 43)
	tokenAdmin = "hw_" + strings.Repeat("Z", 43)
)

func testTokens() TokenMap {
	return TokenMap{HashToken(tokenA): "team-a", HashToken(tokenB): "team-b"}
}

func newTestAuth(t *testing.T, opts Options) (*Authenticator, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	if opts.Realm == "" {
		opts.Realm = DefaultOptions().Realm
	}
	var tokens Tokens
	if opts.Enabled {
		tokens = testTokens()
		opts.AdminTokens = [][32]byte{HashToken(tokenAdmin)}
	}
	a, err := New(opts, tokens, reg, nil)
	require.NoError(t, err)
	return a, reg
}

// seen is what a handler behind the middleware saw of a request.
type seen struct {
	Identity      Identity
	HasIdentity   bool
	Tenant        string // tenant.From
	OrgID         string // X-Scope-OrgID
	Authorization string
}

// httpFixture serves /tenant behind RequireTenant and /admin behind
// RequireAdmin on a loopback server; calls counts the handler's runs.
type httpFixture struct {
	srv   *httptest.Server
	calls atomic.Int64
}

func newHTTPFixture(t *testing.T, a *Authenticator) *httpFixture {
	t.Helper()
	f := &httpFixture{}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		var s seen
		s.Identity, s.HasIdentity = IdentityFrom(r.Context())
		s.Tenant, _ = tenant.From(r.Context())
		s.OrgID = r.Header.Get(tenant.Header)
		s.Authorization = r.Header.Get("Authorization")
		_ = json.NewEncoder(w).Encode(s)
	})
	mux := http.NewServeMux()
	mux.Handle("/tenant", a.RequireTenant(echo))
	mux.Handle("/admin", a.RequireAdmin(echo))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

type httpAnswer struct {
	code      int
	challenge string
	seen      seen
	errType   string
	errMsg    string
}

func (f *httpFixture) do(t *testing.T, path string, header ...string) httpAnswer {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.srv.URL+path, nil)
	require.NoError(t, err)
	for i := 0; i < len(header); i += 2 {
		req.Header.Add(header[i], header[i+1])
	}
	resp, err := f.srv.Client().Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	ans := httpAnswer{code: resp.StatusCode, challenge: resp.Header.Get("WWW-Authenticate")}
	if resp.StatusCode == http.StatusOK {
		require.NoError(t, json.Unmarshal(body, &ans.seen))
		return ans
	}
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var env struct {
		Status, ErrorType, Error string
	}
	require.NoError(t, json.Unmarshal(body, &env), string(body))
	require.Equal(t, "error", env.Status)
	ans.errType, ans.errMsg = env.ErrorType, env.Error
	return ans
}

func refused(t *testing.T, reg prometheus.Gatherer, reason Reason) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		if mf.GetName() != "hopwatch_auth_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == reason.String() {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no hopwatch_auth_refused_total{reason=%q}", reason)
	return 0
}

func TestHTTPAuthEnabled(t *testing.T) {
	a, reg := newTestAuth(t, Options{Enabled: true})
	fx := newHTTPFixture(t, a)
	bearer := func(tok string) string { return "Bearer " + tok }

	ok := func(path string, want seen, header ...string) {
		t.Helper()
		ans := fx.do(t, path, header...)
		require.Equal(t, http.StatusOK, ans.code)
		require.Equal(t, want, ans.seen)
	}
	ok("/tenant", seen{Identity: Identity{Tenant: "team-a"}, HasIdentity: true, Tenant: "team-a", OrgID: "team-a"}, "Authorization", bearer(tokenA))
	ok("/tenant", seen{Identity: Identity{Tenant: "team-b"}, HasIdentity: true, Tenant: "team-b", OrgID: "team-b"}, "Authorization", "bearer "+tokenB)
	// A client set up for a gateway may still send its tenant: equal is fine.
	ok("/tenant", seen{Identity: Identity{Tenant: "team-a"}, HasIdentity: true, Tenant: "team-a", OrgID: "team-a"}, "Authorization", bearer(tokenA), "X-Scope-OrgID", "team-a")
	ok("/admin", seen{Identity: Identity{Admin: true}, HasIdentity: true}, "Authorization", bearer(tokenAdmin))
	// The admin token belongs to no tenant; a tenant it names is left to the handler.
	ok("/admin", seen{Identity: Identity{Admin: true}, HasIdentity: true, OrgID: "team-b"}, "Authorization", bearer(tokenAdmin), "X-Scope-OrgID", "team-b")
	okCalls := fx.calls.Load()

	no := func(path string, code int, reason Reason, challenge, msg string, header ...string) {
		t.Helper()
		before := refused(t, reg, reason)
		ans := fx.do(t, path, header...)
		require.Equal(t, code, ans.code)
		require.Equal(t, challenge, ans.challenge)
		require.Contains(t, ans.errMsg, msg)
		require.Equal(t, map[int]string{401: "unauthorized", 403: "forbidden"}[code], ans.errType)
		require.Equal(t, before+1, refused(t, reg, reason), "refusal counted under %s", reason)
	}
	const realm = `Bearer realm="hopwatch"`
	no("/tenant", 401, ReasonMissing, realm, "no bearer token: send the header Authorization: Bearer <token>")
	no("/tenant", 401, ReasonMissing, realm, "no bearer token", "X-Scope-OrgID", "team-a")
	no("/tenant", 401, ReasonMalformed, realm+`, error="invalid_request"`, "uses the Basic scheme", "Authorization", "Basic dGVhbS1hOnB3")
	no("/tenant", 401, ReasonMalformed, realm+`, error="invalid_request"`, `put "Bearer " before the token`, "Authorization", tokenA)
	no("/tenant", 401, ReasonInvalid, realm+`, error="invalid_token"`, "not known to hopwatch", "Authorization", bearer("hw_"+strings.Repeat("C", 43)))
	no("/tenant", 401, ReasonInvalid, realm+`, error="invalid_token"`, "hopwatch's tokens start with hw_", "Authorization", bearer("glsa_grafana"))
	no("/tenant", 403, ReasonTenantMismatch, "", `the token belongs to tenant "team-a" but X-Scope-OrgID names "team-b"`,
		"Authorization", bearer(tokenA), "X-Scope-OrgID", "team-b")
	no("/tenant", 403, ReasonNoTenant, "", "an admin token belongs to no tenant", "Authorization", bearer(tokenAdmin))
	no("/admin", 401, ReasonMissing, realm, "no bearer token")
	no("/admin", 401, ReasonInvalid, realm+`, error="invalid_token"`, "not known", "Authorization", bearer(tokenA+"x"))
	no("/admin", 403, ReasonNotAdmin, "", `needs an admin token (one of --auth.admin-token-file); the token sent belongs to tenant "team-a"`, "Authorization", bearer(tokenA))
	require.Equal(t, okCalls, fx.calls.Load(), "no refused request reaches the handler")

	// Admin tokens are swapped on reload.
	a.SetAdminTokens([][32]byte{HashToken(tokenB)})
	ok("/admin", seen{Identity: Identity{Admin: true}, HasIdentity: true}, "Authorization", bearer(tokenB))
	no("/admin", 401, ReasonInvalid, realm+`, error="invalid_token"`, "not known", "Authorization", bearer(tokenAdmin))
	a.SetAdminTokens(nil)
	no("/admin", 403, ReasonNotAdmin, "", "needs an admin token", "Authorization", bearer(tokenB))
}

func TestHTTPAuthDisabled(t *testing.T) {
	t.Run("single tenant", func(t *testing.T) {
		a, reg := newTestAuth(t, Options{})
		fx := newHTTPFixture(t, a)
		ans := fx.do(t, "/tenant", "Authorization", "Bearer whatever-the-gateway-passed")
		require.Equal(t, 200, ans.code)
		require.Equal(t, seen{Identity: Identity{Tenant: tenant.Anonymous}, HasIdentity: true, Tenant: tenant.Anonymous,
			Authorization: "Bearer whatever-the-gateway-passed"}, ans.seen, "with auth off, headers pass untouched")
		ans = fx.do(t, "/admin")
		require.Equal(t, 200, ans.code)
		require.Equal(t, Identity{Admin: true}, ans.seen.Identity, "admin endpoints are the gateway's to protect")
		require.Zero(t, testutil.CollectAndCount(reg)-int(numReasons), "every reason exported")
	})
	t.Run("multitenancy", func(t *testing.T) {
		a, reg := newTestAuth(t, Options{Resolver: tenant.Resolver{Enabled: true}})
		fx := newHTTPFixture(t, a)
		ans := fx.do(t, "/tenant", "X-Scope-OrgID", "team-a")
		require.Equal(t, 200, ans.code)
		require.Equal(t, seen{Identity: Identity{Tenant: "team-a"}, HasIdentity: true, Tenant: "team-a", OrgID: "team-a"}, ans.seen)

		ans = fx.do(t, "/tenant")
		require.Equal(t, 401, ans.code)
		require.Empty(t, ans.challenge, "no Bearer challenge: tokens are off")
		require.Contains(t, ans.errMsg, "no tenant ID: set the X-Scope-OrgID header")
		require.Equal(t, 1.0, refused(t, reg, ReasonMissingTenant))

		ans = fx.do(t, "/tenant", "X-Scope-OrgID", "a/b")
		require.Equal(t, 400, ans.code)
		require.Equal(t, "bad_data", ans.errType)
		require.Contains(t, ans.errMsg, `tenant ID "a/b" has character '/'`)
		require.Equal(t, 1.0, refused(t, reg, ReasonInvalidTenant))
		require.Equal(t, int64(1), fx.calls.Load())

		ans = fx.do(t, "/admin")
		require.Equal(t, 200, ans.code)
	})
}

func TestFromHTTPErrors(t *testing.T) {
	a, _ := newTestAuth(t, Options{Enabled: true})
	f := func(sentinel error, reason Reason, status int, code codes.Code, header ...string) {
		t.Helper()
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		for i := 0; i < len(header); i += 2 {
			r.Header.Add(header[i], header[i+1])
		}
		_, err := a.FromHTTP(r)
		require.ErrorIs(t, err, sentinel)
		var e *Error
		require.ErrorAs(t, err, &e)
		require.Equal(t, reason, e.Reason)
		require.Equal(t, status, e.HTTPStatus())
		require.Equal(t, code, e.Code())
		require.Equal(t, code, e.GRPCStatus().Code())
		require.True(t, strings.HasPrefix(err.Error(), "hopwatch/auth: "))
	}
	f(ErrUnauthenticated, ReasonMissing, 401, codes.Unauthenticated)
	f(ErrUnauthenticated, ReasonMalformed, 401, codes.Unauthenticated, "Authorization", "Token x")
	f(ErrUnauthenticated, ReasonInvalid, 401, codes.Unauthenticated, "Authorization", "Bearer hw_nope")
	f(ErrPermissionDenied, ReasonTenantMismatch, 403, codes.PermissionDenied, "Authorization", "Bearer "+tokenA, "X-Scope-OrgID", "team-b")
	// Every value of a repeated header must name the token's tenant.
	f(ErrPermissionDenied, ReasonTenantMismatch, 403, codes.PermissionDenied, "Authorization", "Bearer "+tokenA, "X-Scope-OrgID", "team-a", "X-Scope-OrgID", "team-b")

	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Authorization", "Bearer "+tokenA)
	r.Header.Set(tenant.Header, "")
	id, err := a.FromHTTP(r)
	require.NoError(t, err, "an empty X-Scope-OrgID names no tenant")
	require.Equal(t, Identity{Tenant: "team-a"}, id)

	off, _ := newTestAuth(t, Options{Resolver: tenant.Resolver{Enabled: true}})
	_, err = off.FromHTTP(httptest.NewRequest(http.MethodGet, "/", nil))
	require.ErrorIs(t, err, tenant.ErrMissing, "the resolver's error is wrapped")
	require.ErrorIs(t, err, ErrUnauthenticated)
	r = httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set(tenant.Header, "..")
	_, err = off.FromHTTP(r)
	require.ErrorIs(t, err, ErrInvalidTenant)
	require.NotErrorIs(t, err, ErrUnauthenticated)
}

// TestHTTPProtobufRefusal: an OTLP/HTTP protobuf export is refused with a
// google.rpc.Status body, as the OTLP specification asks.
func TestHTTPProtobufRefusal(t *testing.T) {
	a, _ := newTestAuth(t, Options{Enabled: true})
	fx := newHTTPFixture(t, a)
	f := func(tok string, wantHTTP int, wantCode codes.Code) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, fx.srv.URL+"/tenant", strings.NewReader("\x0a\x00"))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/x-protobuf")
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := fx.srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, wantHTTP, resp.StatusCode)
		require.Equal(t, "application/x-protobuf", resp.Header.Get("Content-Type"))
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		var st spb.Status
		require.NoError(t, proto.Unmarshal(body, &st))
		require.Equal(t, int32(wantCode), st.Code)
		require.NotEmpty(t, st.Message)
	}
	f("", 401, codes.Unauthenticated)
	f(tokenAdmin, 403, codes.PermissionDenied)
	require.Zero(t, fx.calls.Load())
}

func TestOptions(t *testing.T) {
	require.NoError(t, DefaultOptions().Validate())
	_, err := New(Options{}, nil, nil, nil)
	require.ErrorContains(t, err, `invalid Realm ""`)
	_, err = New(Options{Realm: `a"b`}, nil, nil, nil)
	require.ErrorContains(t, err, "without quotes")
	_, err = New(Options{Enabled: true, Realm: "hopwatch"}, nil, nil, nil)
	require.ErrorContains(t, err, "without a token store")
	a, err := New(DefaultOptions(), nil, nil, nil)
	require.NoError(t, err)
	require.False(t, a.Enabled())
}
