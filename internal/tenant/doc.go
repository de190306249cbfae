// Package tenant resolves and validates the tenant of a request: the
// X-Scope-OrgID header when multi-tenancy is on, "anonymous" otherwise, with
// the ID rules Mimir and Tempo apply so that one ID works across all three.
package tenant
