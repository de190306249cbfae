package auth

import (
	"encoding/json"
	"mime"
	"net/http"
	"strconv"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// RequireTenant serves next only requests with a tenant: with
// authentication on, a tenant's token (an admin token is refused); off, the
// tenant tenant.Resolver finds. The request next sees carries the Identity
// (IdentityFrom) and the tenant (tenant.From) in its context; with
// authentication on, its X-Scope-OrgID is set to the token's tenant, so
// that handlers resolving the tenant themselves agree, and its
// Authorization header is removed, so that no handler can log the token.
func (a *Authenticator) RequireTenant(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := a.FromHTTP(r)
		if err == nil {
			err = a.requireTenant(id)
		}
		if err != nil {
			a.refuseHTTP(w, r, err.(*Error))
			return
		}
		next.ServeHTTP(w, a.forward(r, id))
	})
}

// RequireAdmin serves next only requests with an admin token. With
// authentication off every request is admin: the gateway in front decides.
func (a *Authenticator) RequireAdmin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.opts.Enabled {
			next.ServeHTTP(w, r.WithContext(WithIdentity(r.Context(), Identity{Admin: true})))
			return
		}
		id, err := a.FromHTTP(r)
		if err == nil {
			err = a.requireAdmin(id)
		}
		if err != nil {
			a.refuseHTTP(w, r, err.(*Error))
			return
		}
		next.ServeHTTP(w, a.forward(r, id))
	})
}

// forward returns the request a handler sees once id is authenticated.
func (a *Authenticator) forward(r *http.Request, id Identity) *http.Request {
	r = r.WithContext(WithIdentity(r.Context(), id))
	if !a.opts.Enabled {
		return r
	}
	r.Header = r.Header.Clone() // WithContext shares the caller's map
	r.Header.Del(AuthorizationHeader)
	if id.Tenant != "" {
		r.Header.Set(tenant.Header, id.Tenant)
	}
	return r
}

func (a *Authenticator) refuseHTTP(w http.ResponseWriter, r *http.Request, e *Error) {
	a.logger.Debug("request refused", "reason", e.Reason.String(), "method", r.Method, "path", r.URL.Path, "remote_addr", r.RemoteAddr)
	a.WriteError(w, r, e)
}

// WriteError answers r with the refusal e: its status code, a
// WWW-Authenticate challenge on 401 with authentication on, and a body in
// the request's kind: a google.rpc.Status protobuf for a protobuf request
// (as OTLP/HTTP answers), else the Prometheus API's JSON error envelope,
// which OTLP/JSON exporters print as it is.
func (a *Authenticator) WriteError(w http.ResponseWriter, r *http.Request, e *Error) {
	code := e.HTTPStatus()
	h := w.Header()
	if code == http.StatusUnauthorized && a.opts.Enabled {
		h.Set("WWW-Authenticate", a.challenge(e.Reason))
	}
	var body []byte
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/x-protobuf" {
		body, _ = proto.Marshal(&spb.Status{Code: int32(e.Code()), Message: e.msg})
		h.Set("Content-Type", "application/x-protobuf")
	} else {
		errType := "unauthorized"
		switch code {
		case http.StatusForbidden:
			errType = "forbidden"
		case http.StatusBadRequest:
			errType = "bad_data"
		}
		body, _ = json.Marshal(struct {
			Status    string `json:"status"`
			ErrorType string `json:"errorType"`
			Error     string `json:"error"`
		}{"error", errType, e.msg})
		body = append(body, '\n')
		h.Set("Content-Type", "application/json")
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// challenge is the WWW-Authenticate value of a 401 (RFC 6750 section 3):
// no error code when the request had no credential at all.
func (a *Authenticator) challenge(r Reason) string {
	c := `Bearer realm="` + a.opts.Realm + `"`
	switch r {
	case ReasonMalformed:
		c += `, error="invalid_request"`
	case ReasonInvalid:
		c += `, error="invalid_token"`
	}
	return c
}
