package cluster

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
)

// DefaultRaftPort is the raft transport's port.
const DefaultRaftPort = "9801"

// Config configures a Node. Zero fields take the values of DefaultConfig.
type Config struct {
	// NodeID names the node in the cluster, for good: raft knows it by this
	// ID. 1 to 128 of A-Z, a-z, 0-9, '.', '-', '_'.
	NodeID string
	// Dir holds the raft log (raft-wal, in Dir/wal) and the snapshots
	// (Dir/snapshots). Created if missing.
	Dir string
	// RaftBind is the raft transport's listen address (":9801").
	RaftBind string
	// RaftAdvertise is the address other nodes dial for raft; empty uses
	// the listener's address, which must then be a specific IP.
	RaftAdvertise string
	// GRPCAdvertise is where other nodes reach this node's cluster gRPC
	// service (the server RegisterGRPC was given). It may be empty on a
	// cluster of one.
	GRPCAdvertise string
	// Bootstrap makes a node without raft state a cluster of one. Set it
	// on the first node only, and never together with Join.
	Bootstrap bool
	// Join lists cluster gRPC addresses of existing members. A node
	// without raft state asks them in turn, with backoff, to add it.
	Join []string
	// TLS, when set, secures the raft transport (both ways: it serves as
	// the listener's and the dialer's configuration) and the gRPC client
	// this node uses to call other nodes.
	TLS *tls.Config
	// DefaultLimits, when set, are this node's default limits (its
	// --limits.* flags). A joining node sends them, and the member asked
	// refuses the join if the cluster's differ.
	DefaultLimits *Limits
	// Secret, when set, is the cluster's shared secret: raft connections
	// prove it both ways, this node's gRPC calls carry it, and
	// GRPCServerOptions refuse calls without it. Every node must hold the
	// same one.
	Secret *Secret

	// ApplyTimeout bounds a write, a membership change and a linearizable
	// read, including the wait for a leader during an election.
	ApplyTimeout time.Duration
	// HeartbeatTimeout, ElectionTimeout and LeaderLeaseTimeout are raft's.
	// A follower that has not heard from the leader for between one and
	// two HeartbeatTimeouts starts an election; a leader that has not
	// reached a quorum for LeaderLeaseTimeout steps down.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// SnapshotInterval is how often raft checks whether SnapshotThreshold
	// entries were appended since the last snapshot, and snapshots if so;
	// TrailingLogs entries stay in the log after a snapshot, so that a
	// follower that lags by less catches up without a snapshot.
	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	TrailingLogs      uint64
	// UnreachableAfter is how long the leader fails to reach a member
	// before marking it unreachable (out of LiveMembers).
	UnreachableAfter time.Duration

	// transport replaces the TCP transport in tests (raft's in-memory
	// one); RaftBind, RaftAdvertise and TLS are then unused.
	transport raft.Transport
	// walSegmentSize replaces walSegmentSize in tests.
	walSegmentSize int
}

// walSegmentSize is the size of raft-wal's segment files, preallocated on
// disk. raft-wal's default of 64 MiB suits logs of large entries; metadata
// changes are a few hundred bytes, so a segment holds tens of thousands.
// Compaction after a snapshot frees whole segments only.
const walSegmentSize = 8 << 20

// DefaultConfig returns the defaults. The timeouts elect a new leader
// within about 1-2.5 s of losing the old one on a LAN: a follower notices
// after one to two heartbeat timeouts, and pre-vote and vote take a round
// trip each.
func DefaultConfig() Config {
	return Config{
		RaftBind:           ":" + DefaultRaftPort,
		ApplyTimeout:       5 * time.Second,
		HeartbeatTimeout:   time.Second,
		ElectionTimeout:    time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		// Metadata changes are rare and small: a snapshot every 4096
		// changes keeps the log to a few MiB, and 4096 trailing entries let
		// a node that was down for a while catch up from the log.
		SnapshotInterval:  time.Minute,
		SnapshotThreshold: 4096,
		TrailingLogs:      4096,
		UnreachableAfter:  3 * time.Second,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	set := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	if c.RaftBind == "" {
		c.RaftBind = d.RaftBind
	}
	set(&c.ApplyTimeout, d.ApplyTimeout)
	set(&c.HeartbeatTimeout, d.HeartbeatTimeout)
	set(&c.ElectionTimeout, d.ElectionTimeout)
	set(&c.LeaderLeaseTimeout, d.LeaderLeaseTimeout)
	set(&c.SnapshotInterval, d.SnapshotInterval)
	set(&c.UnreachableAfter, d.UnreachableAfter)
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = d.SnapshotThreshold
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = d.TrailingLogs
	}
	return c
}

// Validate reports every problem with the configuration, naming the field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("hopwatch/cluster: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	var v validator
	v.memberID("NodeID", c.NodeID)
	errs = append(errs, v.errs...)
	if c.Dir == "" {
		bad("Dir", "is empty; set the directory for the raft log and snapshots")
	}
	if c.Bootstrap && len(c.Join) > 0 {
		bad("Bootstrap", "is set together with Join; bootstrap the first node only, and let the others join it")
	}
	if c.GRPCAdvertise != "" {
		var v validator
		v.hostPort("GRPCAdvertise", c.GRPCAdvertise)
		errs = append(errs, v.errs...)
	}
	if len(c.Join) > 0 && c.GRPCAdvertise == "" {
		bad("GRPCAdvertise", "is empty; a node that joins must say where the others reach its cluster gRPC service")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ApplyTimeout", c.ApplyTimeout}, {"HeartbeatTimeout", c.HeartbeatTimeout},
		{"ElectionTimeout", c.ElectionTimeout}, {"LeaderLeaseTimeout", c.LeaderLeaseTimeout},
		{"SnapshotInterval", c.SnapshotInterval}, {"UnreachableAfter", c.UnreachableAfter},
	} {
		if d.v < 5*time.Millisecond {
			bad(d.name, "is %s; at least 5ms", d.v)
		}
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		bad("LeaderLeaseTimeout", "(%s) is longer than HeartbeatTimeout (%s)", c.LeaderLeaseTimeout, c.HeartbeatTimeout)
	}
	if c.ElectionTimeout < c.HeartbeatTimeout {
		bad("ElectionTimeout", "(%s) is shorter than HeartbeatTimeout (%s)", c.ElectionTimeout, c.HeartbeatTimeout)
	}
	return errors.Join(errs...)
}

// Node is one member of the cluster: a raft node with the metadata state
// machine, the forwarding of writes to the leader, and membership.
//
// Reads (State) are local and may be stale by the replication lag; writes
// go through the leader and return once the change is committed and
// applied on the leader. A Node's methods are safe for concurrent use.
type Node struct {
	cfg      Config
	id       string
	logger   *slog.Logger
	metrics  *metrics
	fsm      *fsm
	raft     *raft.Raft
	trans    raft.Transport
	wal      *raftwal.WAL
	meta     *metadb.BoltMetaDB
	hadState bool
	clients  *clientPool

	observer *raft.Observer
	obsCh    chan raft.Observation

	ctx    context.Context // cancelled by Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// leaderCh is closed and replaced on every leader change.
	leaderCh chan struct{}
	// leaderSince is when this node last became leader; failing holds, on
	// the leader, the last contact of each member whose heartbeats fail.
	leaderSince time.Time
	failing     map[string]time.Time

	ready   atomic.Bool
	started atomic.Bool
	// registerFailed: the last registration of this node's gRPC address
	// failed (logged at warning level once). Only maintain touches it.
	registerFailed bool
	shutdownOnce   sync.Once
	shutdownErr    error
}

// New opens the node's raft log and snapshots in cfg.Dir and starts raft:
// a node with state rejoins its cluster at once. Start bootstraps or joins a
// node without state. A nil registerer registers nothing; a nil logger
// discards.
func New(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (_ *Node, err error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("node_id", cfg.NodeID)
	n := &Node{
		cfg:      cfg,
		id:       cfg.NodeID,
		logger:   logger.With("component", "cluster"),
		metrics:  newMetrics(reg),
		clients:  newClientPool(cfg.TLS, cfg.Secret),
		leaderCh: make(chan struct{}),
		failing:  map[string]time.Time{},
	}
	n.fsm = newFSM(n.metrics, n.logger)
	var closers []io.Closer
	defer func() {
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i].Close()
			}
		}
	}()

	walDir := filepath.Join(cfg.Dir, "wal")
	if err := os.MkdirAll(walDir, 0o750); err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: %w", err)
	}
	// raft-wal's Close leaves its meta database open (and locked): the
	// node owns it and closes it after the WAL.
	n.meta = &metadb.BoltMetaDB{}
	closers = append(closers, n.meta)
	segSize := cmp.Or(cfg.walSegmentSize, walSegmentSize)
	n.wal, err = raftwal.Open(walDir, raftwal.WithLogger(newHCLog(logger, "raft-wal")), raftwal.WithMetaStore(n.meta), raftwal.WithSegmentSize(segSize))
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: open raft log in %s: %w", walDir, err)
	}
	closers = append(closers, n.wal)
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, newHCLog(logger, "raft"))
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: open snapshots in %s: %w", cfg.Dir, err)
	}
	n.trans = cfg.transport
	if n.trans == nil {
		sl, err := newStreamLayer(cfg.RaftBind, cfg.RaftAdvertise, cfg.TLS, cfg.Secret, func(err error) {
			n.metrics.authRefused.WithLabelValues("raft").Inc()
			n.logger.Warn("refused a raft connection", "err", err)
		})
		if err != nil {
			return nil, err
		}
		n.trans = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream:  sl,
			MaxPool: 3,
			Timeout: 10 * time.Second,
			Logger:  newHCLog(logger, "raft-net"),
		})
	}
	if c, ok := n.trans.(io.Closer); ok {
		closers = append(closers, c)
	}
	n.hadState, err = raft.HasExistingState(n.wal, n.wal, snaps)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: read raft state: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	rc.Logger = newHCLog(logger, "raft")
	rc.NoLegacyTelemetry = true
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: %w", err)
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, n.wal, n.wal, snaps, n.trans)
	if err != nil {
		return nil, fmt.Errorf("hopwatch/cluster: start raft: %w", err)
	}

	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.obsCh = make(chan raft.Observation, 64)
	n.observer = raft.NewObserver(n.obsCh, false, func(o *raft.Observation) bool {
		switch o.Data.(type) {
		case raft.LeaderObservation, raft.FailedHeartbeatObservation, raft.ResumedHeartbeatObservation:
			return true
		}
		return false
	})
	n.raft.RegisterObserver(n.observer)
	n.wg.Add(1)
	go n.observe()
	registerRaftGauges(reg, n.raft, n.fsm, walDir, n.Ready)
	return n, nil
}

// GRPCServerOptions are the options the node needs on the gRPC server
// RegisterGRPC is given: with a Secret, interceptors that refuse every call
// without it (codes.Unauthenticated), counted and logged.
func (n *Node) GRPCServerOptions() []grpc.ServerOption {
	if n.cfg.Secret == nil {
		return nil
	}
	return n.cfg.Secret.serverOptions(func() {
		n.metrics.authRefused.WithLabelValues("grpc").Inc()
		n.logger.Warn("refused an internal gRPC call without the cluster secret")
	})
}

// Start makes a node without raft state part of a cluster: with Bootstrap
// it becomes a cluster of one; with Join it asks the listed members to add
// it and returns once one has, or when ctx ends. A node with state is part
// of its cluster already. Start then keeps the node's registration (its
// gRPC address) and, on the leader, every member's liveness up to date.
func (n *Node) Start(ctx context.Context) error {
	if !n.started.CompareAndSwap(false, true) {
		return errors.New("hopwatch/cluster: Start called twice")
	}
	switch {
	case n.hadState:
		n.logger.Info("raft state found; rejoining the cluster", "dir", n.cfg.Dir)
	case n.cfg.Bootstrap:
		f := n.raft.BootstrapCluster(raft.Configuration{Servers: []raft.Server{
			{ID: raft.ServerID(n.id), Address: n.trans.LocalAddr(), Suffrage: raft.Voter},
		}})
		if err := f.Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			return fmt.Errorf("hopwatch/cluster: bootstrap: %w", err)
		}
		n.logger.Info("bootstrapped a cluster of one", "raft_addr", n.trans.LocalAddr())
	case len(n.cfg.Join) > 0:
		if err := n.joinCluster(ctx); err != nil {
			return err
		}
	default:
		n.logger.Info("no raft state, nothing to bootstrap or join: waiting to be added by a member")
	}
	n.wg.Add(1)
	go n.maintain()
	return nil
}

// joinCluster asks each address of cfg.Join in turn to add this node,
// backing off between rounds, until one accepts.
func (n *Node) joinCluster(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		var errs []error
		for _, addr := range n.cfg.Join {
			err := n.clients.call(ctx, addr, func(ctx context.Context, c clusterClient) error {
				_, err := c.Join(withDefaultLimits(ctx, n.cfg.DefaultLimits), joinRequest(n.id, string(n.trans.LocalAddr()), n.cfg.GRPCAdvertise, false))
				return err
			})
			if err == nil {
				n.logger.Info("joined the cluster", "via", addr)
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", addr, err))
			if errors.Is(err, ErrInvalid) || errors.Is(err, ErrConflict) || errors.Is(err, ErrUnauthenticated) {
				return fmt.Errorf("hopwatch/cluster: join refused: %w", err)
			}
		}
		n.logger.Warn("could not join the cluster yet; retrying", "err", errors.Join(errs...), "retry_in", backoff)
		select {
		case <-ctx.Done():
			return fmt.Errorf("hopwatch/cluster: join: %w (last errors: %w)", ctx.Err(), errors.Join(errs...))
		case <-n.ctx.Done():
			return ErrShutdown
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// Shutdown stops the node without leaving the cluster: to the others it is
// down until it starts again from the same Dir. It does not hand
// leadership over; call Leave first to leave for good. Shutdown is safe to
// call more than once.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		n.cancel()
		errs := []error{n.raft.Shutdown().Error()}
		n.raft.DeregisterObserver(n.observer)
		n.wg.Wait()
		if c, ok := n.trans.(io.Closer); ok {
			errs = append(errs, c.Close())
		}
		errs = append(errs, n.wal.Close(), n.meta.Close(), n.clients.close())
		n.shutdownErr = errors.Join(errs...)
	})
	return n.shutdownErr
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.id }

// State returns the metadata as applied on this node: possibly behind the
// leader by the replication lag (milliseconds on a LAN), never torn. Call
// Linearizable first for a read that sees every write committed before it.
func (n *Node) State() *State { return n.fsm.state.Load() }

// Watch returns a channel that receives a value after every applied change
// (several changes can coalesce into one value), and a function that stops
// the watch. Read State after a receive.
func (n *Node) Watch() (<-chan struct{}, func()) { return n.fsm.watch() }

// Ready reports whether this node has applied everything the leader had
// committed when the node first asked it after starting. It stays true
// afterwards: a node that loses the leader keeps serving its last state.
func (n *Node) Ready() bool { return n.ready.Load() }

// Linearizable returns once this node's State includes every change
// committed before the call: the leader confirms its leadership and commit
// index with a barrier through the log, and this node waits until it has
// applied up to that index.
func (n *Node) Linearizable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	var index uint64
	err := n.onLeader(ctx, "read_index", func() (err error) {
		index, err = n.readIndexLocal(ctx)
		return err
	}, func(ctx context.Context, c clusterClient) error {
		resp, err := c.ReadIndex(ctx, readIndexRequest())
		if err == nil {
			index = resp.GetIndex()
		}
		return err
	})
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, index)
}

// readIndexLocal, on the leader, returns an index that covers every change
// committed before the call: a barrier commits in the current term (so
// this node is still the leader) and returns once every earlier entry is
// applied here.
func (n *Node) readIndexLocal(ctx context.Context) (uint64, error) {
	if err := fromRaft(n.raft.Barrier(remaining(ctx, n.cfg.ApplyTimeout)).Error()); err != nil {
		return 0, err
	}
	return n.State().Index(), nil
}

// waitApplied waits until the local state has reached index.
// WaitApplied returns once this node has applied the change at index (the
// index a write returned), so that a caller that wrote through a follower
// reads its own write from State.
func (n *Node) WaitApplied(ctx context.Context, index uint64) error { return n.waitApplied(ctx, index) }

func (n *Node) waitApplied(ctx context.Context, index uint64) error {
	for {
		ch := n.fsm.progressCh()
		if n.State().Index() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("hopwatch/cluster: waiting to apply up to index %d (at %d): %w", index, n.State().Index(), ctx.Err())
		case <-n.ctx.Done():
			return ErrShutdown
		}
	}
}

func remaining(ctx context.Context, def time.Duration) time.Duration {
	if d, ok := ctx.Deadline(); ok {
		return max(time.Until(d), time.Millisecond)
	}
	return def
}

// PutTenant creates or replaces a tenant and returns the raft index it was
// applied at (its new Version). A non-zero t.Version makes the change
// conditional: ErrConflict unless the tenant is at that version.
func (n *Node) PutTenant(ctx context.Context, t Tenant) (uint64, error) {
	t.Created, t.Updated = time.Time{}, time.Time{}
	return n.propose(ctx, &command{Op: OpPutTenant, Tenant: &t})
}

// DeleteTenant removes a tenant with its rule groups and writer exclusions.
func (n *Node) DeleteTenant(ctx context.Context, id string) (uint64, error) {
	return n.propose(ctx, &command{Op: OpDeleteTenant, Tenant: &Tenant{ID: id}})
}

// PutRuleGroup creates or replaces one rule group of a tenant. The YAML is
// one Prometheus rule group, checked by the caller; the cluster only bounds
// its size.
func (n *Node) PutRuleGroup(ctx context.Context, tenant, namespace, name, yaml string) (uint64, error) {
	return n.propose(ctx, &command{Op: OpPutRuleGroup, RuleGroup: &RuleGroup{Tenant: tenant, Namespace: namespace, Name: name, YAML: yaml}})
}

// DeleteRuleGroup removes one rule group.
func (n *Node) DeleteRuleGroup(ctx context.Context, tenant, namespace, name string) (uint64, error) {
	return n.propose(ctx, &command{Op: OpDeleteRuleGroup, RuleGroup: &RuleGroup{Tenant: tenant, Namespace: namespace, Name: name}})
}

// DeleteNamespace removes every rule group of a tenant's namespace at once.
func (n *Node) DeleteNamespace(ctx context.Context, tenant, namespace string) (uint64, error) {
	return n.propose(ctx, &command{Op: OpDeleteNamespace, RuleGroup: &RuleGroup{Tenant: tenant, Namespace: namespace}})
}

// SetDefaultLimits sets the cluster's default limits; with ifUnset, only
// if none are set yet (the first node seeds them from its flags).
func (n *Node) SetDefaultLimits(ctx context.Context, l Limits, ifUnset bool) (uint64, error) {
	return n.propose(ctx, &command{Op: OpSetDefaultLimits, Defaults: &Defaults{Limits: l, IfUnset: ifUnset}})
}

// ExcludeWriter takes a writer out of its tenant's watermark until
// IncludeWriter. Excluding an excluded writer updates the reason only.
func (n *Node) ExcludeWriter(ctx context.Context, tenant, writer, reason string) (uint64, error) {
	return n.propose(ctx, &command{Op: OpExcludeWriter, Exclusion: &Exclusion{Tenant: tenant, Writer: writer, Reason: reason}})
}

// IncludeWriter ends a writer's exclusion.
func (n *Node) IncludeWriter(ctx context.Context, tenant, writer string) (uint64, error) {
	return n.propose(ctx, &command{Op: OpIncludeWriter, Exclusion: &Exclusion{Tenant: tenant, Writer: writer}})
}

// propose validates and encodes a command and applies it through the
// leader.
func (n *Node) propose(ctx context.Context, c *command) (uint64, error) {
	if err := c.validate(); err != nil {
		return 0, err
	}
	b, err := encodeCommand(nil, c)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
	defer cancel()
	var index uint64
	err = n.onLeader(ctx, "write", func() (err error) {
		index, err = n.applyLocal(ctx, c, b, n.id)
		return err
	}, func(ctx context.Context, cl clusterClient) error {
		resp, err := cl.Apply(ctx, applyRequest(b, n.id))
		if err == nil {
			index = resp.GetIndex()
		}
		return err
	})
	return index, err
}

// applyLocal applies an encoded command on the leader and writes the audit
// line: the leader logs every change once, with the node it entered by.
func (n *Node) applyLocal(ctx context.Context, c *command, b []byte, origin string) (uint64, error) {
	start := time.Now()
	f := n.raft.Apply(b, remaining(ctx, n.cfg.ApplyTimeout))
	if err := fromRaft(f.Error()); err != nil {
		if !errors.Is(err, errNotLeader) {
			n.metrics.changes.WithLabelValues(string(c.Op), resultLabel(err)).Inc()
		}
		return 0, err
	}
	n.metrics.commitDuration.Observe(time.Since(start).Seconds())
	res, _ := f.Response().(applyResult)
	n.metrics.changes.WithLabelValues(string(c.Op), resultLabel(res.err)).Inc()
	attrs := append([]any{"op", c.Op, "index", f.Index(), "origin", origin}, c.subject()...)
	if res.err != nil {
		n.logger.Info("change refused", append(attrs, "err", res.err)...)
	} else {
		n.logger.Info("change applied", attrs...)
	}
	return f.Index(), res.err
}

// subject returns the log attributes naming what a command changes. Token
// hashes are counted, never logged.
func (c *command) subject() []any {
	switch {
	case c.Tenant != nil:
		return []any{"tenant", c.Tenant.ID, "version", c.Tenant.Version, "token_hashes", len(c.Tenant.TokenHashes)}
	case c.RuleGroup != nil:
		return []any{"tenant", c.RuleGroup.Tenant, "namespace", c.RuleGroup.Namespace, "group", c.RuleGroup.Name}
	case c.Exclusion != nil:
		return []any{"tenant", c.Exclusion.Tenant, "writer", c.Exclusion.Writer}
	case c.Member != nil:
		return []any{"member", c.Member.ID, "grpc_addr", c.Member.GRPCAddr, "state", c.Member.State}
	case c.Defaults != nil:
		return []any{"default_limits", c.Defaults.Limits, "if_unset", c.Defaults.IfUnset}
	}
	return nil
}

func resultLabel(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrInvalid):
		return "invalid"
	case errors.Is(err, ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrConflict):
		return "conflict"
	case errors.Is(err, errUnreached):
		return "unreached"
	case errors.Is(err, ErrNoLeader), errors.Is(err, errNotLeader):
		return "no_leader"
	case errors.Is(err, ErrShutdown):
		return "shutdown"
	}
	return "error"
}

// onLeader runs local when this node is the leader, or remote against the
// leader's cluster gRPC service, retrying while no leader is known or the
// request provably did not reach one, until ctx ends. A change is never
// sent twice unless the first attempt certainly did not apply it.
//
// kind labels the forwarded requests in the metrics.
func (n *Node) onLeader(ctx context.Context, kind string, local func() error, remote func(context.Context, clusterClient) error) error {
	backoff := 10 * time.Millisecond
	var last error
	for {
		changed := n.leaderChanged()
		var err error
		_, leaderID := n.raft.LeaderWithID()
		switch {
		case n.ctx.Err() != nil:
			return ErrShutdown
		case n.raft.State() == raft.Leader:
			err = local()
		case leaderID == "":
			err = fmt.Errorf("%w: no leader is elected", errLeaderUnknown)
		default:
			m, _ := n.State().Member(string(leaderID))
			if m.GRPCAddr == "" {
				err = fmt.Errorf("%w: the leader %s has not registered its gRPC address yet", errLeaderUnknown, leaderID)
				break
			}
			err = n.clients.call(ctx, m.GRPCAddr, remote)
			n.metrics.forwarded.WithLabelValues(kind, resultLabel(err)).Inc()
		}
		if err == nil || !retryable(err) {
			return err
		}
		last = err
		select {
		case <-ctx.Done():
			if !errors.Is(last, ErrNoLeader) {
				last = fmt.Errorf("%w: %w", ErrNoLeader, last)
			}
			return fmt.Errorf("%w (gave up: %v)", last, ctx.Err())
		case <-n.ctx.Done():
			return ErrShutdown
		case <-changed:
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 250*time.Millisecond)
	}
}

// retryable reports whether a request certainly did not reach a leader, so
// that sending it again cannot apply it twice.
func retryable(err error) bool {
	return errors.Is(err, errNotLeader) || errors.Is(err, errUnreached) || errors.Is(err, errLeaderUnknown)
}

// leaderChanged returns a channel closed at the next leader change.
func (n *Node) leaderChanged() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.leaderCh
}

// observe follows raft's observations: leader changes, and on the leader
// the members whose heartbeats fail.
func (n *Node) observe() {
	defer n.wg.Done()
	var leader raft.ServerID
	for {
		select {
		case <-n.ctx.Done():
			return
		case o := <-n.obsCh:
			switch d := o.Data.(type) {
			case raft.LeaderObservation:
				n.mu.Lock()
				close(n.leaderCh)
				n.leaderCh = make(chan struct{})
				if d.LeaderID == raft.ServerID(n.id) {
					n.leaderSince = time.Now()
					clear(n.failing)
				}
				n.mu.Unlock()
				if d.LeaderID != "" && d.LeaderID != leader {
					n.metrics.leaderChanges.Inc()
					n.logger.Info("new leader", "leader_id", d.LeaderID, "leader_addr", d.LeaderAddr, "term", n.raft.CurrentTerm())
				}
				leader = d.LeaderID
			case raft.FailedHeartbeatObservation:
				n.mu.Lock()
				if _, ok := n.failing[string(d.PeerID)]; !ok {
					last := d.LastContact
					if last.IsZero() {
						last = time.Now()
					}
					n.failing[string(d.PeerID)] = last
				}
				n.mu.Unlock()
			case raft.ResumedHeartbeatObservation:
				n.mu.Lock()
				delete(n.failing, string(d.PeerID))
				n.mu.Unlock()
			}
		}
	}
}

// maintain runs until Shutdown: it makes the node ready, registers its gRPC
// address, and on the leader keeps every member's liveness current.
func (n *Node) maintain() {
	defer n.wg.Done()
	watch, stop := n.Watch()
	defer stop()
	tick := time.NewTicker(min(n.cfg.UnreachableAfter/4, 250*time.Millisecond))
	defer tick.Stop()
	for {
		if !n.ready.Load() {
			n.tryReady()
		} else {
			n.register()
		}
		n.updateLiveness(time.Now())
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		case <-watch:
		}
	}
}

// tryReady asks the leader for its read index, waits to apply up to it and
// registers the node's gRPC address when the state lacks it: a node is
// ready only once the others can reach it.
func (n *Node) tryReady() {
	if _, id := n.raft.LeaderWithID(); id == "" {
		return
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ApplyTimeout)
	defer cancel()
	if err := n.Linearizable(ctx); err != nil {
		n.logger.Debug("not ready yet", "err", err)
		return
	}
	if !n.register() {
		return
	}
	if !n.ready.Swap(true) {
		n.logger.Info("ready: caught up with the leader", "index", n.State().Index())
	}
}

// register records this node's gRPC address in the replicated state when it
// is missing or changed there (first start, a new address after a restart).
// It reports whether this node's applied state holds the address (or there
// is none to hold): on a follower, a change the leader committed is
// applied here a moment later, and the next call sees it.
func (n *Node) register() bool {
	if n.registered() {
		return true
	}
	if _, id := n.raft.LeaderWithID(); id == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ApplyTimeout)
	defer cancel()
	if _, err := n.propose(ctx, &command{Op: OpPutMember, Member: &Member{ID: n.id, GRPCAddr: n.cfg.GRPCAdvertise}}); err != nil {
		// Once at warning level: the node is not ready until this succeeds.
		level := slog.LevelDebug
		if !n.registerFailed {
			level, n.registerFailed = slog.LevelWarn, true
		}
		n.logger.Log(n.ctx, level, "could not register this node's gRPC address; not ready until it is", "grpc_addr", n.cfg.GRPCAdvertise, "err", err)
		return false
	}
	n.registerFailed = false
	return n.registered()
}

// registered reports whether this node's applied state holds its gRPC
// address, or there is none to hold (no address, or not a member).
func (n *Node) registered() bool {
	if n.cfg.GRPCAdvertise == "" {
		return true
	}
	m, ok := n.State().Member(n.id)
	return !ok || m.GRPCAddr == n.cfg.GRPCAdvertise
}

// updateLiveness, on the leader, marks a member unreachable once its
// heartbeats have failed for UnreachableAfter, and live again once they
// succeed. A member counts as reached when its heartbeats have not failed
// during the first UnreachableAfter of this leadership.
func (n *Node) updateLiveness(now time.Time) {
	if n.raft.State() != raft.Leader {
		return
	}
	n.mu.Lock()
	since := n.leaderSince
	failing := make(map[string]time.Time, len(n.failing))
	for id, t := range n.failing {
		failing[id] = t
	}
	n.mu.Unlock()
	for _, m := range n.State().Members() {
		want := m.State
		last, isFailing := failing[m.ID]
		switch {
		case m.ID == n.id:
			want = MemberLive
		case isFailing && now.Sub(last) >= n.cfg.UnreachableAfter:
			want = MemberUnreachable
		case !isFailing && now.Sub(since) >= n.cfg.UnreachableAfter:
			want = MemberLive
		}
		if want == m.State {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.cfg.ApplyTimeout)
		_, err := n.propose(ctx, &command{Op: OpSetMemberState, Member: &Member{ID: m.ID, State: want}})
		cancel()
		if err != nil {
			n.logger.Warn("could not record a member's liveness", "member", m.ID, "state", want, "err", err)
			return
		}
	}
}
