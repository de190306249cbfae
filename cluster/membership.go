package cluster

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
)

// Role is a member's part in the cluster as Status reports it.
type Role string

// The roles of a member.
const (
	RoleLeader      Role = "leader"
	RoleFollower    Role = "follower"
	RoleUnreachable Role = "unreachable"
)

// Status describes this node and the members as this node sees them.
type Status struct {
	ID string
	// RaftState is this node's raft state: "Leader", "Follower",
	// "Candidate" or "Shutdown".
	RaftState string
	// LeaderID and LeaderAddr name the leader this node follows, empty
	// during an election.
	LeaderID, LeaderAddr string
	Term                 uint64
	// CommitIndex is the last raft index this node knows committed,
	// AppliedIndex the index of its State, LastLogIndex the last entry of
	// its log.
	CommitIndex, AppliedIndex, LastLogIndex uint64
	// LastContact is when this follower last heard from the leader; zero
	// on the leader.
	LastContact time.Time
	Ready       bool
	Members     []MemberStatus
}

// MemberStatus is one member as seen from the node that reports it.
type MemberStatus struct {
	Member
	Role Role
	// LastContact is known for the leader (on a follower) and for the
	// members the leader fails to reach (on the leader); zero otherwise.
	LastContact time.Time
}

// Status reports this node's raft state and the members. It does not call
// other nodes.
func (n *Node) Status() Status {
	addr, leader := n.raft.LeaderWithID()
	st := Status{
		ID:           n.id,
		RaftState:    n.raft.State().String(),
		LeaderID:     string(leader),
		LeaderAddr:   string(addr),
		Term:         n.raft.CurrentTerm(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.State().Index(),
		LastLogIndex: n.raft.LastIndex(),
		Ready:        n.Ready(),
	}
	isLeader := n.raft.State() == raft.Leader
	if !isLeader {
		st.LastContact = n.raft.LastContact()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, m := range n.State().Members() {
		ms := MemberStatus{Member: m, Role: RoleFollower}
		switch {
		case m.ID == string(leader):
			ms.Role = RoleLeader
			if !isLeader {
				ms.LastContact = st.LastContact
			}
		case m.State == MemberUnreachable:
			ms.Role = RoleUnreachable
		}
		if isLeader {
			ms.LastContact = n.failing[m.ID]
		}
		st.Members = append(st.Members, ms)
	}
	return st
}

// LiveMembers returns the members the leader reaches, ordered by ID: the
// ring over which traces and tenants are owned. Every node computes it from
// the same replicated state, so nodes at the same index agree on it.
func (n *Node) LiveMembers() []Member {
	ms := n.State().Members()
	return slices.DeleteFunc(ms, func(m Member) bool { return m.State != MemberLive })
}

// Join adds a node to the cluster as a voter, through the leader. raftAddr
// is its raft transport address, grpcAddr its cluster gRPC address. Adding
// a member again with the same addresses does nothing; with a new raft
// address it moves the member.
func (n *Node) Join(ctx context.Context, id, raftAddr, grpcAddr string) error {
	_, err := n.join(ctx, id, raftAddr, grpcAddr)
	return err
}

func (n *Node) join(ctx context.Context, id, raftAddr, grpcAddr string) (uint64, error) {
	var v validator
	v.memberID("id", id)
	if n.cfg.transport == nil {
		v.hostPort("raft_address", raftAddr)
	} else if raftAddr == "" {
		v.add("raft_address", "is empty")
	}
	if grpcAddr != "" {
		v.hostPort("grpc_address", grpcAddr)
	}
	if err := v.err(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	var index uint64
	err := n.onLeader(ctx, "join", func() (err error) {
		index, err = n.joinLocal(ctx, id, raftAddr, grpcAddr)
		return err
	}, func(ctx context.Context, c clusterClient) error {
		resp, err := c.Join(ctx, joinRequest(id, raftAddr, grpcAddr, true))
		if err == nil {
			index = resp.GetIndex()
		}
		return err
	})
	return index, err
}

// joinLocal adds a member on the leader: its gRPC address goes into the
// state first, so that it is known by the time the member is.
func (n *Node) joinLocal(ctx context.Context, id, raftAddr, grpcAddr string) (uint64, error) {
	cf := n.raft.GetConfiguration()
	if err := fromRaft(cf.Error()); err != nil {
		return 0, err
	}
	present := false
	for _, srv := range cf.Configuration().Servers {
		if string(srv.Address) == raftAddr && string(srv.ID) != id {
			return 0, fmt.Errorf("%w: raft address %s belongs to member %s; remove it first", ErrConflict, raftAddr, srv.ID)
		}
		if string(srv.ID) == id && string(srv.Address) == raftAddr && srv.Suffrage == raft.Voter {
			present = true
		}
	}
	if info := n.State().infos[id]; grpcAddr != "" && (info == nil || info.GRPCAddr != grpcAddr) {
		c := &command{Op: OpPutMember, Member: &Member{ID: id, GRPCAddr: grpcAddr}}
		b, err := encodeCommand(nil, c)
		if err != nil {
			return 0, err
		}
		if _, err := n.applyLocal(ctx, c, b, n.id); err != nil {
			return 0, err
		}
	}
	if present {
		return cf.Index(), nil
	}
	f := n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(raftAddr), 0, remaining(ctx, n.cfg.ApplyTimeout))
	if err := fromRaft(f.Error()); err != nil {
		return 0, err
	}
	n.logger.Info("member added", "member", id, "raft_addr", raftAddr, "grpc_addr", grpcAddr, "index", f.Index())
	return f.Index(), nil
}

// Remove takes a member out of the cluster, through the leader. The member
// is not told: shut it down, and empty its Dir before it joins again.
func (n *Node) Remove(ctx context.Context, id string) error {
	_, err := n.remove(ctx, id)
	return err
}

func (n *Node) remove(ctx context.Context, id string) (uint64, error) {
	var v validator
	v.memberID("id", id)
	if err := v.err(); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	var index uint64
	err := n.onLeader(ctx, "remove", func() (err error) {
		index, err = n.removeLocal(ctx, id)
		return err
	}, func(ctx context.Context, c clusterClient) error {
		resp, err := c.Remove(ctx, &removeRequest{Id: id, Forwarded: true})
		if err == nil {
			index = resp.GetIndex()
		}
		return err
	})
	return index, err
}

func (n *Node) removeLocal(ctx context.Context, id string) (uint64, error) {
	cf := n.raft.GetConfiguration()
	if err := fromRaft(cf.Error()); err != nil {
		return 0, err
	}
	servers := cf.Configuration().Servers
	i := slices.IndexFunc(servers, func(s raft.Server) bool { return string(s.ID) == id })
	if i < 0 {
		return 0, fmt.Errorf("%w: no member %q; members are %s", ErrNotFound, id, serverIDs(servers))
	}
	voters := 0
	for _, s := range servers {
		if s.Suffrage == raft.Voter {
			voters++
		}
	}
	if servers[i].Suffrage == raft.Voter && voters == 1 {
		return 0, fmt.Errorf("%w: member %q is the last voter; a cluster keeps at least one (shut the node down instead)", ErrInvalid, id)
	}
	f := n.raft.RemoveServer(raft.ServerID(id), 0, remaining(ctx, n.cfg.ApplyTimeout))
	if err := fromRaft(f.Error()); err != nil {
		return 0, err
	}
	n.logger.Info("member removed", "member", id, "index", f.Index())
	return f.Index(), nil
}

func serverIDs(servers []raft.Server) string {
	ids := make([]string, len(servers))
	for i, s := range servers {
		ids[i] = string(s.ID)
	}
	slices.SortFunc(ids, cmp.Compare)
	return strings.Join(ids, ", ")
}

// Leave takes this node out of the cluster for good: a leader first hands
// leadership to another voter, so that writes pause for one election round
// trip rather than an election timeout; then the leader removes this node.
// Shut the node down afterwards.
func (n *Node) Leave(ctx context.Context) error {
	if n.raft.State() == raft.Leader && n.voters() > 1 {
		if err := fromRaft(n.raft.LeadershipTransfer().Error()); err != nil {
			if err == errNotLeader {
				err = fmt.Errorf("%w: could not hand leadership over", ErrNoLeader)
			}
			return fmt.Errorf("hopwatch/cluster: leave: %w", err)
		}
	}
	_, err := n.remove(ctx, n.id)
	return err
}

// voters counts the voters in raft's latest configuration.
func (n *Node) voters() int {
	cf := n.raft.GetConfiguration()
	if cf.Error() != nil {
		return 0
	}
	v := 0
	for _, s := range cf.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}
