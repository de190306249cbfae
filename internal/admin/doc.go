// Package admin serves the admin API for tenants, their limits and their API
// tokens over the cluster's replicated metadata, and applies the limits to
// the node's components as they change.
package admin
