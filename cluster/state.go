package cluster

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/hashicorp/raft"
)

// State is the replicated metadata as applied on this node up to Index. A
// State never changes: every applied change makes a new one that shares
// what it did not touch. Everything a State returns is shared too and must
// not be modified.
type State struct {
	index   uint64
	tenants map[string]*Tenant
	tokens  map[TokenHash]string // token hash -> tenant ID
	groups  map[string]map[groupKey]*RuleGroup
	excl    map[string]map[string]*Exclusion
	// servers is raft's configuration as of index; infos is what the
	// cluster knows about nodes beyond it (their gRPC address, liveness),
	// including a node that is about to be added.
	servers []raft.Server
	infos   map[string]*Member
	// defaults are the cluster's default limits; nil until set.
	defaults *Limits
}

type groupKey struct{ namespace, name string }

func emptyState() *State {
	return &State{
		tenants: map[string]*Tenant{},
		tokens:  map[TokenHash]string{},
		groups:  map[string]map[groupKey]*RuleGroup{},
		excl:    map[string]map[string]*Exclusion{},
		infos:   map[string]*Member{},
	}
}

// DefaultLimits returns the cluster's default limits, those of every
// tenant without an override, and whether they are set: the first node
// of a cluster sets them from its --limits.* flags.
func (s *State) DefaultLimits() (Limits, bool) {
	if s.defaults == nil {
		return Limits{}, false
	}
	return *s.defaults, true
}

// Index is the raft log index of the last change in this State.
func (s *State) Index() uint64 { return s.index }

// Tenant returns a tenant's metadata.
func (s *State) Tenant(id string) (Tenant, bool) {
	t, ok := s.tenants[id]
	if !ok {
		return Tenant{}, false
	}
	return *t, true
}

// Tenants returns every tenant, ordered by ID.
func (s *State) Tenants() []Tenant {
	out := make([]Tenant, 0, len(s.tenants))
	for _, t := range s.tenants {
		out = append(out, *t)
	}
	slices.SortFunc(out, func(a, b Tenant) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// TenantByToken returns the tenant that holds an API token.
func (s *State) TenantByToken(token string) (Tenant, bool) {
	id, ok := s.tokens[HashToken(token)]
	if !ok {
		return Tenant{}, false
	}
	return s.Tenant(id)
}

// RuleGroup returns one rule group.
func (s *State) RuleGroup(tenant, namespace, name string) (RuleGroup, bool) {
	g, ok := s.groups[tenant][groupKey{namespace, name}]
	if !ok {
		return RuleGroup{}, false
	}
	return *g, true
}

// RuleGroups returns a tenant's rule groups, ordered by namespace and name.
func (s *State) RuleGroups(tenant string) []RuleGroup {
	out := make([]RuleGroup, 0, len(s.groups[tenant]))
	for _, g := range s.groups[tenant] {
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b RuleGroup) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// RuleTenants returns the tenants that have rule groups, ordered.
func (s *State) RuleTenants() []string {
	return slices.Sorted(maps.Keys(s.groups))
}

// WriterExcluded reports whether a writer is out of its tenant's watermark.
func (s *State) WriterExcluded(tenant, writer string) bool {
	_, ok := s.excl[tenant][writer]
	return ok
}

// ExclusionTenants returns the tenants with excluded writers, ordered.
func (s *State) ExclusionTenants() []string {
	return slices.Sorted(maps.Keys(s.excl))
}

// Exclusions returns a tenant's excluded writers, ordered by writer.
func (s *State) Exclusions(tenant string) []Exclusion {
	out := make([]Exclusion, 0, len(s.excl[tenant]))
	for _, e := range s.excl[tenant] {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(a, b Exclusion) int { return cmp.Compare(a.Writer, b.Writer) })
	return out
}

// Members returns the nodes in raft's configuration, ordered by ID.
func (s *State) Members() []Member {
	out := make([]Member, 0, len(s.servers))
	for _, srv := range s.servers {
		out = append(out, s.member(srv))
	}
	slices.SortFunc(out, func(a, b Member) int { return cmp.Compare(a.ID, b.ID) })
	return out
}

// Member returns one node of raft's configuration.
func (s *State) Member(id string) (Member, bool) {
	for _, srv := range s.servers {
		if string(srv.ID) == id {
			return s.member(srv), true
		}
	}
	return Member{}, false
}

func (s *State) member(srv raft.Server) Member {
	m := Member{ID: string(srv.ID), State: MemberLive}
	if info := s.infos[m.ID]; info != nil {
		m = *info
	}
	m.RaftAddr = string(srv.Address)
	m.Voter = srv.Suffrage == raft.Voter
	return m
}

// clone copies the top level; apply then copies whatever it changes below.
func (s *State) clone(index uint64) *State {
	c := *s
	c.index = index
	return &c
}

// apply returns the state after c, applied at index with the leader's
// clock at, or the reason c does not apply (the state is then unchanged,
// apart from its index). It is deterministic: every node computes the same
// result from the same state and command.
func (s *State) apply(c *command, index uint64, at time.Time) (*State, error) {
	n := s.clone(index)
	switch c.Op {
	case OpPutTenant:
		return n, n.putTenant(*c.Tenant, index, at)
	case OpDeleteTenant:
		return n, n.deleteTenant(c.Tenant.ID)
	case OpPutRuleGroup:
		g := *c.RuleGroup
		g.Version, g.Updated = index, at
		n.groups = maps.Clone(n.groups)
		m := maps.Clone(n.groups[g.Tenant])
		if m == nil {
			m = map[groupKey]*RuleGroup{}
		}
		m[groupKey{g.Namespace, g.Name}] = &g
		n.groups[g.Tenant] = m
		return n, nil
	case OpDeleteRuleGroup:
		g := c.RuleGroup
		k := groupKey{g.Namespace, g.Name}
		if _, ok := n.groups[g.Tenant][k]; !ok {
			return n, fmt.Errorf("%w: tenant %q has no rule group %q in namespace %q", ErrNotFound, g.Tenant, g.Name, g.Namespace)
		}
		n.groups = maps.Clone(n.groups)
		m := maps.Clone(n.groups[g.Tenant])
		delete(m, k)
		if len(m) == 0 {
			delete(n.groups, g.Tenant)
		} else {
			n.groups[g.Tenant] = m
		}
		return n, nil
	case OpDeleteNamespace:
		g := c.RuleGroup
		m := maps.Clone(n.groups[g.Tenant])
		deleted := 0
		for k := range m {
			if k.namespace == g.Namespace {
				delete(m, k)
				deleted++
			}
		}
		if deleted == 0 {
			return n, fmt.Errorf("%w: tenant %q has no rule groups in namespace %q", ErrNotFound, g.Tenant, g.Namespace)
		}
		n.groups = maps.Clone(n.groups)
		if len(m) == 0 {
			delete(n.groups, g.Tenant)
		} else {
			n.groups[g.Tenant] = m
		}
		return n, nil
	case OpExcludeWriter:
		e := *c.Exclusion
		e.Since = at
		if old := n.excl[e.Tenant][e.Writer]; old != nil {
			e.Since = old.Since // excluding again keeps the start, updates the reason
		}
		n.excl = maps.Clone(n.excl)
		m := maps.Clone(n.excl[e.Tenant])
		if m == nil {
			m = map[string]*Exclusion{}
		}
		m[e.Writer] = &e
		n.excl[e.Tenant] = m
		return n, nil
	case OpIncludeWriter:
		e := c.Exclusion
		if _, ok := n.excl[e.Tenant][e.Writer]; !ok {
			return n, fmt.Errorf("%w: writer %q of tenant %q is not excluded", ErrNotFound, e.Writer, e.Tenant)
		}
		n.excl = maps.Clone(n.excl)
		m := maps.Clone(n.excl[e.Tenant])
		delete(m, e.Writer)
		if len(m) == 0 {
			delete(n.excl, e.Tenant)
		} else {
			n.excl[e.Tenant] = m
		}
		return n, nil
	case OpPutMember:
		info := n.info(c.Member.ID, at)
		info.GRPCAddr = c.Member.GRPCAddr
		n.setInfo(info)
		return n, nil
	case OpSetDefaultLimits:
		if c.Defaults.IfUnset && n.defaults != nil {
			return n, nil
		}
		l := c.Defaults.Limits
		n.defaults = &l
		return n, nil
	case OpSetMemberState:
		info := n.info(c.Member.ID, at)
		if info.State != c.Member.State {
			info.State, info.Since = c.Member.State, at
		}
		n.setInfo(info)
		return n, nil
	}
	return n, fmt.Errorf("%w: unknown op %q", ErrInvalid, c.Op)
}

func (s *State) putTenant(t Tenant, index uint64, at time.Time) error {
	old := s.tenants[t.ID]
	if t.Version != 0 {
		switch {
		case old == nil:
			return fmt.Errorf("%w: tenant %q does not exist, the change expected version %d; send version 0 to create it", ErrConflict, t.ID, t.Version)
		case old.Version != t.Version:
			return fmt.Errorf("%w: tenant %q is at version %d, the change expected version %d; read it again and reapply", ErrConflict, t.ID, old.Version, t.Version)
		}
	}
	for _, h := range t.TokenHashes {
		if owner, ok := s.tokens[h]; ok && owner != t.ID {
			return fmt.Errorf("%w: token hash %s already belongs to tenant %q; make a new token", ErrConflict, h, owner)
		}
	}
	t.Version, t.Created, t.Updated = index, at, at
	if old != nil {
		t.Created = old.Created
	}
	s.tenants = maps.Clone(s.tenants)
	s.tenants[t.ID] = &t
	s.tokens = maps.Clone(s.tokens)
	if old != nil {
		for _, h := range old.TokenHashes {
			delete(s.tokens, h)
		}
	}
	for _, h := range t.TokenHashes {
		s.tokens[h] = t.ID
	}
	return nil
}

// deleteTenant removes a tenant with everything it owns: its rule groups
// and writer exclusions go with it.
func (s *State) deleteTenant(id string) error {
	old := s.tenants[id]
	if old == nil {
		return fmt.Errorf("%w: tenant %q does not exist", ErrNotFound, id)
	}
	s.tenants = maps.Clone(s.tenants)
	delete(s.tenants, id)
	s.tokens = maps.Clone(s.tokens)
	for _, h := range old.TokenHashes {
		delete(s.tokens, h)
	}
	if _, ok := s.groups[id]; ok {
		s.groups = maps.Clone(s.groups)
		delete(s.groups, id)
	}
	if _, ok := s.excl[id]; ok {
		s.excl = maps.Clone(s.excl)
		delete(s.excl, id)
	}
	return nil
}

// info returns a copy of a node's info, new ones live.
func (s *State) info(id string, at time.Time) Member {
	if m := s.infos[id]; m != nil {
		return *m
	}
	return Member{ID: id, State: MemberLive, Since: at}
}

func (s *State) setInfo(m Member) {
	s.infos = maps.Clone(s.infos)
	s.infos[m.ID] = &m
}

// withConfiguration returns the state after raft committed a configuration
// change at index. A node that left the configuration takes its info along;
// a node not yet in it keeps its info for when it is added.
func (s *State) withConfiguration(index uint64, servers []raft.Server) *State {
	n := s.clone(index)
	n.servers = slices.Clone(servers)
	in := make(map[raft.ServerID]bool, len(servers))
	for _, srv := range servers {
		in[srv.ID] = true
	}
	for _, old := range s.servers {
		if !in[old.ID] {
			if _, ok := n.infos[string(old.ID)]; ok {
				n.infos = maps.Clone(n.infos)
				delete(n.infos, string(old.ID))
			}
		}
	}
	return n
}
