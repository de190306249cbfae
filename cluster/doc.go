// Package cluster replicates hopwatch's metadata (tenants with their limits,
// settings and token hashes, rule groups, writer exclusions, and the
// members themselves) across the nodes with hashicorp/raft, and forwards
// writes made on any node to the leader. Spans never go through it.
//
// A single node is a cluster of one, on the same code path. See
// docs/cluster.md for the command format, reads and writes, membership and
// failure behaviour.
package cluster
