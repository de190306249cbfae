package ratelimit

// Member is one node of the ring over which tenants are owned.
type Member struct {
	// ID is the node's member ID (--cluster.node-id).
	ID string
	// GRPCAddr is the host:port of the node's internal gRPC listener
	// (9802), where RateLimitService is served.
	GRPCAddr string
	// Down marks a member that is in the ring but unreachable: it keeps
	// its place, and its tenants are owned by the others until it is back
	// (so that only its tenants move, both ways).
	Down bool
}

// Membership is the ring as this node sees it. Every node must list the
// same members in the same order (the cluster package lists them by ID
// from its replicated state) for the nodes to agree on each tenant's
// owner. *cluster.Node, through a small adapter, is the Membership of a
// server.
type Membership interface {
	// Self returns this node's member ID.
	Self() string
	// Members returns the ring. A member added at the end moves about 1/n
	// of the tenants to itself; a member marked Down moves only its own.
	Members() []Member
}

// StaticMembers is a fixed Membership: a single node's (List empty or just
// itself), or a test's.
type StaticMembers struct {
	SelfID string
	List   []Member
}

// Self implements Membership.
func (s StaticMembers) Self() string { return s.SelfID }

// Members implements Membership. An empty list is this node alone.
func (s StaticMembers) Members() []Member {
	if len(s.List) == 0 {
		return []Member{{ID: s.SelfID}}
	}
	return s.List
}

var _ Membership = StaticMembers{}

// JumpHash returns the bucket in [0, buckets) of key by Lamping and
// Veach's jump consistent hash ("A Fast, Minimal Memory, Consistent Hash
// Algorithm", 2014): going from n to n+1 buckets moves exactly the keys
// that land in the new bucket, 1/(n+1) of them, and no other. It returns
// -1 when buckets <= 0.
func JumpHash(key uint64, buckets int) int {
	b, j := int64(-1), int64(0)
	for j < int64(buckets) {
		b = j
		key = key*2862933555777941757 + 1
		j = int64(float64(b+1) * (float64(int64(1)<<31) / float64((key>>33)+1)))
	}
	return int(b)
}

// TenantKey is the key a tenant ID is placed on the ring with: 64-bit
// FNV-1a of the ID, then a 64-bit finaliser (splitmix64's) so that IDs
// differing in their last byte spread over the high bits the jump hash
// reads. Every node must compute the same key: it is part of the protocol,
// not an implementation detail.
func TenantKey(tenant string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(tenant); i++ {
		h ^= uint64(tenant[i])
		h *= 1099511628211
	}
	return mix64(h)
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// Owner returns the index in members of the tenant's owner: the jump hash
// of its key over all members; where that member is Down, the jump hash
// of a derived key, until a live member comes up, so that a member going
// down moves only its own tenants, spread evenly over the others. It
// returns -1 when no member is live.
func Owner(tenant string, members []Member) int {
	return ownerOf(TenantKey(tenant), members)
}

func ownerOf(key uint64, members []Member) int {
	live := 0
	for _, m := range members {
		if !m.Down {
			live++
		}
	}
	if live == 0 {
		return -1
	}
	for {
		b := JumpHash(key, len(members))
		if !members[b].Down {
			return b
		}
		key = mix64(key + 0x9e3779b97f4a7c15)
	}
}

// liveCount returns the number of members not Down, at least 1: the n of
// the even split limit/n.
func liveCount(members []Member) int {
	n := 0
	for _, m := range members {
		if !m.Down {
			n++
		}
	}
	return max(n, 1)
}
