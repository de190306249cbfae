package auth

import (
	"errors"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Reason is why a request was refused: a fixed id, the reason label of
// hopwatch_auth_refused_total.
type Reason uint8

// Reasons. A new one goes at the end, with its entry in reasonInfo.
const (
	// ReasonMissing: authentication is on and the request has no
	// Authorization header.
	ReasonMissing Reason = iota
	// ReasonMalformed: the Authorization header is not Bearer <token>.
	ReasonMalformed
	// ReasonInvalid: the token is unknown (mistyped, revoked, or another
	// cluster's).
	ReasonInvalid
	// ReasonTenantMismatch: X-Scope-OrgID names another tenant than the
	// token's.
	ReasonTenantMismatch
	// ReasonNoTenant: an admin token on an endpoint that serves a tenant's
	// data.
	ReasonNoTenant
	// ReasonNotAdmin: a tenant's token on an admin endpoint.
	ReasonNotAdmin
	// ReasonMissingTenant: authentication is off, multi-tenancy on, and the
	// request has no X-Scope-OrgID.
	ReasonMissingTenant
	// ReasonInvalidTenant: authentication is off and X-Scope-OrgID is not a
	// valid tenant ID.
	ReasonInvalidTenant

	numReasons
)

// class sorts refusals into what the caller must change.
type class uint8

const (
	classUnauthenticated class = iota // no usable credential: 401, Unauthenticated
	classForbidden                    // a valid credential that does not grant this: 403, PermissionDenied
	classBadRequest                   // a malformed tenant ID: 400, InvalidArgument
)

var reasonInfo = [numReasons]struct {
	id    string
	class class
}{
	ReasonMissing:        {"missing", classUnauthenticated},
	ReasonMalformed:      {"malformed", classUnauthenticated},
	ReasonInvalid:        {"invalid", classUnauthenticated},
	ReasonTenantMismatch: {"tenant_mismatch", classForbidden},
	ReasonNoTenant:       {"no_tenant", classForbidden},
	ReasonNotAdmin:       {"not_admin", classForbidden},
	ReasonMissingTenant:  {"missing_tenant", classUnauthenticated},
	ReasonInvalidTenant:  {"invalid_tenant", classBadRequest},
}

// String returns the reason's fixed id.
func (r Reason) String() string {
	if r >= numReasons {
		return "unknown"
	}
	return reasonInfo[r].id
}

// Errors that every refusal matches with errors.Is, by what the caller must
// change.
var (
	// ErrUnauthenticated: no credential, or one hopwatch does not know
	// (HTTP 401, gRPC Unauthenticated).
	ErrUnauthenticated = errors.New("hopwatch/auth: unauthenticated")
	// ErrPermissionDenied: a valid credential that does not grant the
	// request (HTTP 403, gRPC PermissionDenied).
	ErrPermissionDenied = errors.New("hopwatch/auth: permission denied")
	// ErrInvalidTenant: X-Scope-OrgID is not a valid tenant ID, with
	// authentication off (HTTP 400, gRPC InvalidArgument).
	ErrInvalidTenant = errors.New("hopwatch/auth: invalid tenant ID")
)

// Error is a refused request. Read it with errors.As; it matches one of
// ErrUnauthenticated, ErrPermissionDenied and ErrInvalidTenant with
// errors.Is, and gRPC turns it into its status (GRPCStatus).
type Error struct {
	Reason Reason
	msg    string
	err    error // the tenant.Resolver error, with authentication off
}

func (e *Error) Error() string { return "hopwatch/auth: " + e.msg }

// Unwrap returns the tenant resolver's error behind a refusal with
// authentication off, else nil.
func (e *Error) Unwrap() error { return e.err }

// Is matches the sentinel of the refusal's class.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnauthenticated:
		return e.class() == classUnauthenticated
	case ErrPermissionDenied:
		return e.class() == classForbidden
	case ErrInvalidTenant:
		return e.class() == classBadRequest
	}
	return false
}

func (e *Error) class() class {
	if e.Reason >= numReasons {
		return classUnauthenticated
	}
	return reasonInfo[e.Reason].class
}

// Message is the refusal as told to the caller.
func (e *Error) Message() string { return e.msg }

// HTTPStatus is the refusal's HTTP status code.
func (e *Error) HTTPStatus() int {
	switch e.class() {
	case classForbidden:
		return http.StatusForbidden
	case classBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusUnauthorized
}

// Code is the refusal's gRPC status code.
func (e *Error) Code() codes.Code {
	switch e.class() {
	case classForbidden:
		return codes.PermissionDenied
	case classBadRequest:
		return codes.InvalidArgument
	}
	return codes.Unauthenticated
}

// GRPCStatus lets gRPC send the refusal with its code when a handler or
// interceptor returns it.
func (e *Error) GRPCStatus() *status.Status {
	return status.New(e.Code(), e.msg)
}
