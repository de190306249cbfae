package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// snapshotVersion is the version of the snapshot format.
const snapshotVersion = 1

// fsm is the raft state machine. hashicorp/raft calls Apply,
// StoreConfiguration, Snapshot and Restore from one goroutine, in log order;
// readers load the current State at any time without a lock.
type fsm struct {
	logger  *slog.Logger
	metrics *metrics

	state atomic.Pointer[State]

	mu sync.Mutex
	// progress is closed and replaced whenever the state's index advances;
	// changed only when its content changes. Waiters take the current
	// channel under mu.
	progress chan struct{}
	watchers map[chan struct{}]struct{}
}

var _ raft.ConfigurationStore = (*fsm)(nil)

// applyResult is what Apply returns for a command, through raft's
// ApplyFuture on the leader.
type applyResult struct {
	op  Op
	err error
}

func newFSM(m *metrics, logger *slog.Logger) *fsm {
	f := &fsm{logger: logger, metrics: m, progress: make(chan struct{}), watchers: map[chan struct{}]struct{}{}}
	f.state.Store(emptyState())
	return f
}

// Apply applies one command entry.
func (f *fsm) Apply(l *raft.Log) any {
	start := time.Now()
	c, err := decodeCommand(l.Data)
	cur := f.state.Load()
	if err != nil {
		// A command this node cannot read was committed by a leader that
		// could: the nodes run different versions. Applying nothing keeps
		// this node going; the error says what to upgrade.
		f.logger.Error("cannot apply a committed change; run the same hopwatch version on every node", "index", l.Index, "err", err)
		f.metrics.applyErrors.Inc()
		f.set(cur.clone(l.Index), false)
		return applyResult{err: err}
	}
	next, err := cur.apply(c, l.Index, l.AppendedAt)
	f.set(next, err == nil)
	f.metrics.applyDuration.Observe(time.Since(start).Seconds())
	return applyResult{op: c.Op, err: err}
}

// StoreConfiguration records raft's configuration as committed at index.
func (f *fsm) StoreConfiguration(index uint64, conf raft.Configuration) {
	f.set(f.state.Load().withConfiguration(index, conf.Servers), true)
}

func (f *fsm) set(s *State, changed bool) {
	f.state.Store(s)
	f.mu.Lock()
	close(f.progress)
	f.progress = make(chan struct{})
	if changed {
		for w := range f.watchers {
			select {
			case w <- struct{}{}:
			default: // a notification is pending already
			}
		}
	}
	f.mu.Unlock()
}

// progressCh returns a channel closed when the state next advances.
func (f *fsm) progressCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.progress
}

func (f *fsm) watch() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	f.watchers[ch] = struct{}{}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		delete(f.watchers, ch)
		f.mu.Unlock()
	}
}

// Snapshot captures the current State; it is immutable, so Persist can
// write it while Apply goes on.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	return &fsmSnapshot{state: f.state.Load(), metrics: f.metrics}, nil
}

// Restore replaces the state with a snapshot's.
func (f *fsm) Restore(r io.ReadCloser) error {
	defer r.Close()
	s, err := decodeSnapshot(r)
	if err != nil {
		return err
	}
	f.set(s, true)
	f.metrics.restores.Inc()
	return nil
}

type fsmSnapshot struct {
	state   *State
	metrics *metrics
}

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	if err := encodeSnapshot(sink, s.state); err != nil {
		return errors.Join(err, sink.Cancel())
	}
	if err := sink.Close(); err != nil {
		return err
	}
	s.metrics.snapshots.Inc()
	s.metrics.snapshotDuration.Observe(time.Since(start).Seconds())
	return nil
}

func (s *fsmSnapshot) Release() {}

// snapshot is the snapshot format: the whole State as JSON.
type snapshot struct {
	V          int         `json:"v"`
	Index      uint64      `json:"index"`
	Tenants    []Tenant    `json:"tenants"`
	RuleGroups []RuleGroup `json:"rule_groups"`
	Exclusions []Exclusion `json:"exclusions"`
	// Servers is raft's configuration, Infos what the cluster knows about
	// nodes beyond it.
	Servers []snapshotServer `json:"servers"`
	Infos   []Member         `json:"infos"`
	// DefaultLimits are the cluster's default limits, absent until set.
	DefaultLimits *Limits `json:"default_limits,omitempty"`
}

type snapshotServer struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Voter   bool   `json:"voter"`
}

func encodeSnapshot(w io.Writer, s *State) error {
	snap := snapshot{V: snapshotVersion, Index: s.index, Tenants: s.Tenants(), DefaultLimits: s.defaults}
	for _, tenant := range s.RuleTenants() {
		snap.RuleGroups = append(snap.RuleGroups, s.RuleGroups(tenant)...)
	}
	for _, tenant := range slices.Sorted(maps.Keys(s.excl)) {
		snap.Exclusions = append(snap.Exclusions, s.Exclusions(tenant)...)
	}
	for _, srv := range s.servers {
		snap.Servers = append(snap.Servers, snapshotServer{ID: string(srv.ID), Address: string(srv.Address), Voter: srv.Suffrage == raft.Voter})
	}
	for _, id := range slices.Sorted(maps.Keys(s.infos)) {
		snap.Infos = append(snap.Infos, *s.infos[id])
	}
	if err := json.NewEncoder(w).Encode(&snap); err != nil {
		return fmt.Errorf("hopwatch/cluster: write snapshot: %w", err)
	}
	return nil
}

func decodeSnapshot(r io.Reader) (*State, error) {
	var snap snapshot
	if err := json.NewDecoder(r).Decode(&snap); err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: read snapshot: %w", err)
	}
	if snap.V != snapshotVersion {
		return nil, fmt.Errorf("hopwatch/cluster: read snapshot: %w %d; this node reads version %d, upgrade it", ErrUnsupportedVersion, snap.V, snapshotVersion)
	}
	s := emptyState()
	s.index = snap.Index
	s.defaults = snap.DefaultLimits
	for _, srv := range snap.Servers {
		suffrage := raft.Nonvoter
		if srv.Voter {
			suffrage = raft.Voter
		}
		s.servers = append(s.servers, raft.Server{ID: raft.ServerID(srv.ID), Address: raft.ServerAddress(srv.Address), Suffrage: suffrage})
	}
	for i := range snap.Tenants {
		t := &snap.Tenants[i]
		s.tenants[t.ID] = t
		for _, h := range t.TokenHashes {
			s.tokens[h] = t.ID
		}
	}
	for i := range snap.RuleGroups {
		g := &snap.RuleGroups[i]
		if s.groups[g.Tenant] == nil {
			s.groups[g.Tenant] = map[groupKey]*RuleGroup{}
		}
		s.groups[g.Tenant][groupKey{g.Namespace, g.Name}] = g
	}
	for i := range snap.Exclusions {
		e := &snap.Exclusions[i]
		if s.excl[e.Tenant] == nil {
			s.excl[e.Tenant] = map[string]*Exclusion{}
		}
		s.excl[e.Tenant][e.Writer] = e
	}
	for i := range snap.Infos {
		m := &snap.Infos[i]
		s.infos[m.ID] = m
	}
	return s, nil
}
