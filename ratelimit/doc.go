// Package ratelimit owns hopwatch's per-tenant ingestion limits: the local
// limiter that admits or refuses each batch on this node without touching
// the network, and the exchange through which the nodes of a cluster split
// each tenant's global limit in proportion to their demand.
//
// A Limiter limits one quantity (spans or bytes). Its decisions read the
// monotonic clock and one atomic word per tenant; they never wait on a lock,
// a goroutine or the network. An Exchange maintains the limiters: once per
// interval it reports each tenant's demand to the tenant's owner (jump
// consistent hash of the tenant over the live members), applies the share
// the owner answers, and evicts idle tenants. See docs/ratelimit.md.
package ratelimit
