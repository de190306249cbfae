package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/prometheus/tsdb/fileutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/internal/admin"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/ratelimit"
)

// nodeIDFile, in the cluster directory, keeps the node's ID from its first
// start: raft knows a node by its ID for good, and the default, the host
// name, can change (a container's does at every start).
const nodeIDFile = "node-id"

// clusterLockFile, in the cluster directory, is held while the node runs,
// so that a second process on the same data directory is refused at once
// rather than waiting on the raft log's lock.
const clusterLockFile = "lock"

// newClusterTLS returns the configuration of the cluster's connections,
// or nil with cluster TLS off. One configuration serves both ends, as the
// raft transport wants: the node's certificate to serve and to present,
// and the CA for verifying peers, required of both.
func newClusterTLS(c ClusterTLSConfig) (*tls.Config, error) {
	if !c.Enabled() {
		return nil, nil
	}
	srv, err := auth.ServerConfig(c.CertFile, c.KeyFile, c.CAFile, true)
	if err != nil {
		return nil, err
	}
	cli, err := auth.ClientConfig(c.CAFile, c.CertFile, c.KeyFile, "")
	if err != nil {
		return nil, err
	}
	srv.RootCAs = cli.RootCAs
	srv.GetClientCertificate = cli.GetClientCertificate
	return srv, nil
}

// resolveNodeID returns the node's ID: the configured one, else the one
// stored in dir at the first start, else the host name; and stores it.
// A configured ID other than the stored one is refused.
func resolveNodeID(dir, configured string) (string, error) {
	path := filepath.Join(dir, nodeIDFile)
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("cluster.node-id: reading the stored ID: %w", err)
	}
	stored := strings.TrimSpace(string(b))
	id := configured
	switch {
	case stored != "" && configured != "" && stored != configured:
		return "", fmt.Errorf("cluster.node-id: is %q, but the cluster state in %s belongs to node %q. Raft knows a node by its ID for good: "+
			"start it with --cluster.node-id=%s; or, to give it a new identity, remove %s from the cluster (hopwatch cluster remove %s), empty %s and join again",
			configured, dir, stored, stored, stored, stored, dir)
	case stored != "":
		id = stored
	case id == "":
		host, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("cluster.node-id: not set, and the host name is unknown (%v); set it", err)
		}
		if err := validNodeID(host); err != nil {
			return "", fmt.Errorf("cluster.node-id: not set, and the host name %w; set it", err)
		}
		id = host
	}
	if stored == "" {
		if err := os.WriteFile(path+".tmp", []byte(id+"\n"), 0o640); err != nil {
			return "", fmt.Errorf("cluster.node-id: storing the ID: %w", err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			return "", fmt.Errorf("cluster.node-id: storing the ID: %w", err)
		}
	}
	return id, nil
}

// advertiseHost returns the host other nodes dial for a listener on all
// addresses: this host's first private IPv4 address (RFC 1918), as Consul
// picks its advertise address, else its first global unicast address,
// else 127.0.0.1 (ok says so), which serves a cluster of one only.
func advertiseHost() (host string, ok bool) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "127.0.0.1", false
	}
	var global net.IP
	for _, ifc := range ifaces {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			ipn, isNet := a.(*net.IPNet)
			if !isNet {
				continue
			}
			ip := ipn.IP
			if ip.To4() != nil && ip.IsPrivate() {
				return ip.String(), true
			}
			if global == nil && ip.IsGlobalUnicast() {
				global = ip
			}
		}
	}
	if global != nil {
		return global.String(), true
	}
	return "127.0.0.1", false
}

// advertise returns the address other nodes dial for a listener: the
// configured one, else the listener's when it names a host, else this
// host's advertise host with the listener's port.
func (s *Server) advertise(flag, configured, bound string) string {
	if configured != "" {
		return configured
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil || (host != "" && !isUnspecified(host)) {
		return bound
	}
	h, ok := advertiseHost()
	if !ok {
		s.logger.Warn("no address of this host to advertise to other nodes: advertising the loopback address, which serves a cluster of one only; set "+flag+" before other nodes join",
			"listen_address", bound, "advertised", net.JoinHostPort(h, port))
	}
	return net.JoinHostPort(h, port)
}

// reservePort returns addr with port 0 replaced by a free port, so that the
// raft address is known before the transport listens (raft records it in
// the cluster's configuration). Port 0 serves tests; a port taken between
// here and the transport's listen fails the start with the listen error.
func reservePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port != "0" {
		return addr, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", err
	}
	defer ln.Close()
	_, port, err = net.SplitHostPort(ln.Addr().String())
	return net.JoinHostPort(host, port), err
}

// openCluster opens the node's raft state and joins its cluster's
// transport: it locks the cluster directory, settles the node's ID and the
// addresses it advertises, and builds the node on the internal gRPC
// server. Start bootstraps or joins it afterwards.
func (s *Server) openCluster() (err error) {
	cc := s.cfg.Cluster
	dir := s.cfg.ClusterDir()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	lock, _, err := fileutil.Flock(filepath.Join(dir, clusterLockFile))
	if err != nil {
		return fmt.Errorf("cluster: %s is in use by another hopwatch process (%w); give each node its own storage.path", dir, err)
	}
	defer func() {
		if err != nil {
			_ = lock.Release()
		}
	}()
	id, err := resolveNodeID(dir, cc.NodeID)
	if err != nil {
		return err
	}

	bind, err := reservePort(cc.RaftAddress)
	if err != nil {
		return fmt.Errorf("cluster.raft-address: %w", err)
	}
	s.raftAddr = s.advertise("cluster.raft-advertise-address", cc.RaftAdvertiseAddress, bind)
	s.clusterGRPCAddr = s.advertise("cluster.grpc-advertise-address", cc.GRPCAdvertiseAddress, s.clusterLn.Addr().String())
	ncfg := cluster.Config{
		NodeID:             id,
		Dir:                dir,
		RaftBind:           bind,
		RaftAdvertise:      s.raftAddr,
		GRPCAdvertise:      s.clusterGRPCAddr,
		Bootstrap:          cc.Bootstrap,
		Join:               cc.Join,
		TLS:                s.clusterTLS,
		Secret:             s.clusterSecret,
		DefaultLimits:      ptr(s.cfg.defaultLimits()),
		ApplyTimeout:       cc.ApplyTimeout,
		HeartbeatTimeout:   cc.HeartbeatTimeout,
		ElectionTimeout:    cc.ElectionTimeout,
		LeaderLeaseTimeout: cc.LeaderLeaseTimeout,
		UnreachableAfter:   cc.UnreachableAfter,
	}
	node, err := cluster.New(ncfg, s.reg, s.logger)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	var opts []grpc.ServerOption
	if s.clusterTLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.clusterTLS.Clone())))
	}
	s.clusterGRPC = grpc.NewServer(append(opts, node.GRPCServerOptions()...)...)
	s.logger.Info("cluster listeners", "raft_listen", bind, "grpc_listen", s.clusterLn.Addr().String(),
		"reachable_from", clusterReach(bind, s.clusterLn.Addr().String()), "authentication", clusterAuthName(s.clusterTLS != nil, s.clusterSecret != nil))
	node.RegisterGRPC(s.clusterGRPC)
	s.node, s.clusterLock = node, lock
	s.clusterCtx, s.clusterStop = context.WithCancel(context.Background())
	s.tokens.node.Store(node)
	return nil
}

// startCluster bootstraps the node or joins its cluster in the background
// (a join waits for the members listed to answer), follows the replicated
// writer exclusions and rate limit overrides, and runs the rate limits'
// exchange. A join that is refused ends the server.
func (s *Server) startCluster() {
	ctx := s.clusterCtx
	s.clusterWG.Add(5)
	go func() {
		defer s.clusterWG.Done()
		s.exchange.Run(ctx)
	}()
	go func() {
		defer s.clusterWG.Done()
		s.followDefaultLimits(ctx)
	}()
	go func() {
		defer s.clusterWG.Done()
		admin.ApplyRateLimits(ctx, s.node, s.spansLimiter, s.bytesLimiter, s.logger)
	}()
	go func() {
		defer s.clusterWG.Done()
		if err := s.node.Start(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, cluster.ErrShutdown) {
			s.errc <- fmt.Errorf("cluster: %w", err)
		}
	}()
	go func() {
		defer s.clusterWG.Done()
		s.recv.UseExclusionReplica(ctx, exclusionReplica{s.node})
	}()
}

func ptr[T any](v T) *T { return &v }

// defaultLimits are the node's --limits.* flags as the cluster's default
// limits.
func (c Config) defaultLimits() cluster.Limits {
	return cluster.Limits{
		IngestionRateSpans:  c.RateLimits.IngestionRateSpans,
		IngestionBurstSpans: c.RateLimits.IngestionBurstSpans,
		IngestionRateBytes:  c.RateLimits.IngestionRateBytes,
		MaxSeriesPerTenant:  int64(c.Storage.MaxSeriesPerTenant),
	}
}

// followDefaultLimits keeps the limiters' default limits equal to the
// cluster's, from the replicated state, until ctx ends. Once the node has
// caught up with its cluster, a cluster without defaults gets this node's
// flags (the first node to get there seeds them; the others change
// nothing). Where the cluster's defaults differ from this node's flags,
// the cluster's apply, with a warning naming the flags and both values.
func (s *Server) followDefaultLimits(ctx context.Context) {
	mine := s.cfg.defaultLimits()
	changed, stop := s.node.Watch()
	defer stop()
	var applied *cluster.Limits
	seeded := false
	backoff := 100 * time.Millisecond
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		st := s.node.State()
		l, set := st.DefaultLimits()
		switch {
		case set && (applied == nil || *applied != l):
			if d := mine.Diff(l); d != "" {
				s.logger.Warn("the cluster's default limits differ from this node's flags; the cluster's apply, on every node: "+
					"set the same flags on every node, or change the cluster's with PUT /api/v1/admin/cluster/limits", "differences", d, "index", st.Index())
			}
			if err := s.spansLimiter.SetDefault(ratelimit.Limit{Rate: l.IngestionRateSpans, Burst: l.IngestionBurstSpans}); err != nil {
				s.logger.Error("the cluster's default span rate limit is refused by the limiter", "err", err)
			}
			if err := s.bytesLimiter.SetDefault(ratelimit.Limit{Rate: l.IngestionRateBytes}); err != nil {
				s.logger.Error("the cluster's default byte rate limit is refused by the limiter", "err", err)
			}
			applied = &l
		case !set && !seeded && s.node.Ready():
			if _, err := s.node.SetDefaultLimits(ctx, mine, true); err != nil {
				if ctx.Err() != nil {
					return
				}
				s.logger.Warn("could not store this node's limits as the cluster's defaults yet; retrying", "err", err, "retry_in", backoff)
				retry.Reset(backoff)
				backoff = min(2*backoff, 5*time.Second)
			} else {
				seeded = true
				s.logger.Info("the cluster's default limits are this node's flags", "limits", mine)
			}
		case !set && !seeded:
			// Not caught up yet: look again soon.
			retry.Reset(backoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-retry.C:
		}
	}
}

// closeCluster stops the cluster's work: the join, the internal gRPC
// server (forwarded requests in flight finish within ctx), and the node,
// which stays a member for the others (it does not leave).
func (s *Server) closeCluster(ctx context.Context) error {
	if s.node == nil {
		return nil
	}
	if s.clusterStop != nil {
		s.clusterStop()
		s.clusterWG.Wait()
	}
	stopped := make(chan struct{})
	go func() { s.clusterGRPC.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-ctx.Done():
		s.clusterGRPC.Stop()
		<-stopped
	}
	var errs []error
	if err := s.node.Shutdown(); err != nil {
		errs = append(errs, fmt.Errorf("cluster shutdown: %w", err))
	}
	if err := s.clusterLock.Release(); err != nil {
		errs = append(errs, fmt.Errorf("cluster: releasing the lock: %w", err))
	}
	return errors.Join(errs...)
}

// clusterTokens finds the tenant of a token in the tenants of the cluster's
// replicated metadata. It indexes the token hashes of a State once, at the
// first look-up after the State changed: a look-up is then one map read.
type clusterTokens struct {
	node  atomic.Pointer[cluster.Node]
	index atomic.Pointer[tokenIndex]
	mu    sync.Mutex // serializes rebuilding the index
}

type tokenIndex struct {
	state   *cluster.State
	tenants map[[32]byte]string
}

var _ auth.Tokens = (*clusterTokens)(nil)

// Lookup implements auth.Tokens. Before the node is open, no token is
// known.
func (t *clusterTokens) Lookup(hash [32]byte) (string, bool) {
	n := t.node.Load()
	if n == nil {
		return "", false
	}
	st := n.State()
	idx := t.index.Load()
	if idx == nil || idx.state != st {
		idx = t.rebuild(st)
	}
	id, ok := idx.tenants[hash]
	return id, ok
}

func (t *clusterTokens) rebuild(st *cluster.State) *tokenIndex {
	t.mu.Lock()
	defer t.mu.Unlock()
	if idx := t.index.Load(); idx != nil && idx.state == st {
		return idx
	}
	idx := &tokenIndex{state: st, tenants: map[[32]byte]string{}}
	for _, tn := range st.Tenants() {
		for _, h := range tn.TokenHashes {
			idx.tenants[h] = tn.ID
		}
	}
	t.index.Store(idx)
	return idx
}

// ClusterStatus is the answer of GET /api/v1/cluster: the node that
// answers and the members as it sees them.
type ClusterStatus struct {
	// NodeID is the node that answers.
	NodeID string `json:"node_id"`
	// RaftState is its raft state: Leader, Follower, Candidate, Shutdown.
	RaftState string `json:"raft_state"`
	// LeaderID and LeaderRaftAddress name the leader it follows; empty
	// during an election.
	LeaderID          string `json:"leader_id"`
	LeaderRaftAddress string `json:"leader_raft_address"`
	Term              uint64 `json:"term"`
	CommitIndex       uint64 `json:"commit_index"`
	AppliedIndex      uint64 `json:"applied_index"`
	LastLogIndex      uint64 `json:"last_log_index"`
	// LastContact is when a follower last heard from the leader.
	LastContact time.Time `json:"last_contact,omitzero"`
	// Ready: the node has caught up with the leader since it started.
	Ready bool `json:"ready"`
	// Time is the answering node's clock, to read LastContact against.
	Time    time.Time             `json:"time"`
	Members []ClusterMemberStatus `json:"members"`
}

// ClusterMemberStatus is one member in ClusterStatus.
type ClusterMemberStatus struct {
	ID          string `json:"id"`
	RaftAddress string `json:"raft_address"`
	GRPCAddress string `json:"grpc_address"`
	Voter       bool   `json:"voter"`
	// Role is leader, follower or unreachable.
	Role string `json:"role"`
	// State is the replicated liveness, live or unreachable, since Since.
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// LastContact is known for the leader (seen from a follower) and for
	// members the leader fails to reach.
	LastContact time.Time `json:"last_contact,omitzero"`
}

func clusterStatus(st cluster.Status, now time.Time) ClusterStatus {
	out := ClusterStatus{
		NodeID: st.ID, RaftState: st.RaftState, LeaderID: st.LeaderID, LeaderRaftAddress: st.LeaderAddr,
		Term: st.Term, CommitIndex: st.CommitIndex, AppliedIndex: st.AppliedIndex, LastLogIndex: st.LastLogIndex,
		LastContact: st.LastContact, Ready: st.Ready, Time: now, Members: []ClusterMemberStatus{},
	}
	for _, m := range st.Members {
		out.Members = append(out.Members, ClusterMemberStatus{
			ID: m.ID, RaftAddress: m.RaftAddr, GRPCAddress: m.GRPCAddr, Voter: m.Voter,
			Role: string(m.Role), State: string(m.State), Since: m.Since, LastContact: m.LastContact,
		})
	}
	return out
}

// ClusterJoinRequest is the body of POST /api/v1/admin/cluster/members.
type ClusterJoinRequest struct {
	ID          string `json:"id"`
	RaftAddress string `json:"raft_address"`
	GRPCAddress string `json:"grpc_address"`
}

// maxClusterBody bounds the body of a membership request.
const maxClusterBody = 64 << 10

// clusterHandler serves GET /api/v1/cluster.
func (s *Server) clusterHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET")
			writeAPIError(w, http.StatusMethodNotAllowed, "bad_data", "use GET")
			return
		}
		writeAPIData(w, http.StatusOK, clusterStatus(s.node.Status(), time.Now()))
	})
}

// clusterAdminHandler serves the membership API under
// /api/v1/admin/cluster/.
func (s *Server) clusterAdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /api/v1/admin/cluster/members", func(w http.ResponseWriter, r *http.Request) {
		var req ClusterJoinRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxClusterBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeAPIError(w, http.StatusBadRequest, "bad_data",
				fmt.Sprintf(`the body is not a join request: %v; send {"id": "...", "raft_address": "host:port", "grpc_address": "host:port"}`, err))
			return
		}
		if dec.More() {
			writeAPIError(w, http.StatusBadRequest, "bad_data", "data after the join request")
			return
		}
		if err := s.node.Join(r.Context(), req.ID, req.RaftAddress, req.GRPCAddress); err != nil {
			writeClusterError(w, err)
			return
		}
		s.logger.Info("cluster member joined through the admin API", "member", req.ID, "raft_addr", req.RaftAddress, "grpc_addr", req.GRPCAddress)
		s.writeClusterStatusAfterChange(w, r)
	})
	mux.HandleFunc("DELETE /api/v1/admin/cluster/members/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := s.node.Remove(r.Context(), id); err != nil {
			writeClusterError(w, err)
			return
		}
		s.logger.Info("cluster member removed through the admin API", "member", id)
		s.writeClusterStatusAfterChange(w, r)
	})
	mux.HandleFunc("POST /api/v1/admin/cluster/leave", func(w http.ResponseWriter, r *http.Request) {
		if err := s.node.Leave(r.Context()); err != nil {
			writeClusterError(w, err)
			return
		}
		msg := fmt.Sprintf("node %s left the cluster: stop it, and empty %s before it joins again", s.node.ID(), s.cfg.ClusterDir())
		s.logger.Warn("left the cluster through the admin API; this node no longer takes part in it: stop it", "dir", s.cfg.ClusterDir())
		writeAPIData(w, http.StatusOK, map[string]string{"node_id": s.node.ID(), "message": msg})
	})
	mux.HandleFunc("GET /api/v1/admin/cluster/limits", func(w http.ResponseWriter, r *http.Request) {
		l, _ := s.node.State().DefaultLimits()
		writeAPIData(w, http.StatusOK, l)
	})
	mux.HandleFunc("PUT /api/v1/admin/cluster/limits", func(w http.ResponseWriter, r *http.Request) {
		var l cluster.Limits
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxClusterBody))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			writeAPIError(w, http.StatusBadRequest, "bad_data",
				fmt.Sprintf(`the body is not the default limits: %v; send {"ingestion_rate_spans": 1000, "ingestion_burst_spans": 0, "ingestion_rate_bytes": 0, "max_series_per_tenant": 150000}`, err))
			return
		}
		index, err := s.node.SetDefaultLimits(r.Context(), l, false)
		if err != nil {
			writeClusterError(w, err)
			return
		}
		s.logger.Info("the cluster's default limits changed through the admin API", "limits", l, "index", index)
		if err := s.node.WaitApplied(r.Context(), index); err != nil {
			s.logger.Debug("default limits answered before applied here", "err", err)
		}
		l, _ = s.node.State().DefaultLimits()
		writeAPIData(w, http.StatusOK, l)
	})
	mux.HandleFunc("/api/v1/admin/cluster/", func(w http.ResponseWriter, r *http.Request) {
		writeAPIError(w, http.StatusNotFound, "not_found",
			"the cluster admin API is POST /api/v1/admin/cluster/members, DELETE /api/v1/admin/cluster/members/{id}, POST /api/v1/admin/cluster/leave and GET or PUT /api/v1/admin/cluster/limits")
	})
	return mux
}

// writeClusterStatusAfterChange answers a membership change with the
// status once this node has applied the change: on a follower, the change
// committed on the leader may not have reached it yet.
func (s *Server) writeClusterStatusAfterChange(w http.ResponseWriter, r *http.Request) {
	if err := s.node.Linearizable(r.Context()); err != nil {
		// The change is made; the status shown may predate it.
		s.logger.Debug("cluster status after a change may be stale", "err", err)
	}
	writeAPIData(w, http.StatusOK, clusterStatus(s.node.Status(), time.Now()))
}

// writeClusterError answers with the status of the cluster's error kind:
// 400 invalid, 404 not found, 409 conflict, 503 no leader or shutting down
// (with Retry-After: an election takes one to two heartbeat timeouts).
func writeClusterError(w http.ResponseWriter, err error) {
	code, typ := http.StatusInternalServerError, "internal"
	switch {
	case errors.Is(err, cluster.ErrInvalid):
		code, typ = http.StatusBadRequest, "bad_data"
	case errors.Is(err, cluster.ErrNotFound):
		code, typ = http.StatusNotFound, "not_found"
	case errors.Is(err, cluster.ErrConflict):
		code, typ = http.StatusConflict, "conflict"
	case errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrShutdown), errors.Is(err, context.DeadlineExceeded):
		code, typ = http.StatusServiceUnavailable, "unavailable"
		w.Header().Set("Retry-After", "2")
	case errors.Is(err, context.Canceled):
		code, typ = statusClientClosed, "canceled"
	}
	writeAPIError(w, code, typ, err.Error())
}

// statusClientClosed answers a request whose client went away (nginx's
// 499, as Prometheus answers a canceled query).
const statusClientClosed = 499

// writeAPIData answers in the Prometheus API's envelope.
func writeAPIData(w http.ResponseWriter, code int, data any) {
	writeEnvelope(w, code, struct {
		Status string `json:"status"`
		Data   any    `json:"data"`
	}{"success", data})
}

// writeAPIError answers an error in the Prometheus API's envelope.
func writeAPIError(w http.ResponseWriter, code int, typ, msg string) {
	writeEnvelope(w, code, struct {
		Status    string `json:"status"`
		ErrorType string `json:"errorType"`
		Error     string `json:"error"`
	}{"error", typ, msg})
}

func writeEnvelope(w http.ResponseWriter, code int, v any) {
	var b bytes.Buffer
	if err := json.NewEncoder(&b).Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(b.Bytes())
}

// clusterAuthName says how the nodes authenticate each other, for the log.
func clusterAuthName(tls, secret bool) string {
	switch {
	case tls && secret:
		return "mutual TLS and cluster secret"
	case tls:
		return "mutual TLS"
	case secret:
		return "cluster secret"
	}
	return "none (loopback only)"
}

// clusterReach says who can reach the cluster listeners, for the log.
func clusterReach(addrs ...string) string {
	for _, a := range addrs {
		if host, _, err := net.SplitHostPort(a); err != nil || !IsLoopbackHost(host) {
			return "other hosts"
		}
	}
	return "this host only"
}

// logClusterSecurity warns about cluster ports that anyone can use to
// change the metadata, and about tenants' tokens that nobody can issue.
func logClusterSecurity(cfg Config, logger *slog.Logger) {
	if cfg.Auth.Enabled && cfg.Tokens == nil && cfg.Auth.AdminTokenFile == "" {
		logger.Warn("authentication is on without admin tokens: tenants' tokens are issued through the admin API (/api/v1/admin/tenants), which needs one, so this node can issue none; " +
			"only tokens already in the cluster's metadata work. Set auth.admin-token-file")
	}
	if cfg.Auth.Enabled && !cfg.Cluster.Authenticated() {
		// Validate refuses such ports beyond loopback: these accept
		// anyone on this host.
		logger.Warn("authentication is on, but the cluster ports (cluster.raft-address, cluster.grpc-address) accept any process on this host, and through them tenants and tokens can be changed: "+
			"set cluster.secret-file, or cluster.tls.cert-file, cluster.tls.key-file and cluster.tls.ca-file",
			"raft_address", cfg.Cluster.RaftAddress, "grpc_address", cfg.Cluster.GRPCAddress)
	}
}
