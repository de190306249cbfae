// Package auth authenticates requests and secures transports: bearer tokens
// that name a tenant (stored only as SHA-256 hashes), admin tokens, HTTP
// middleware and gRPC interceptors that put the caller's Identity in the
// request context, and TLS configurations that pick up rotated certificates
// without a restart.
//
// With authentication off, the tenant comes from X-Scope-OrgID through
// tenant.Resolver, as behind a trusted gateway (Mimir's model); with it on,
// every request carries Authorization: Bearer <token> and the token alone
// decides the tenant.
package auth
