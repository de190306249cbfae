package alerting

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/rulefmt"
	"gopkg.in/yaml.v3"
)

// ErrUnavailable: the replicated store cannot take a change now (no
// leader, or the node is stopping); the client should retry.
var ErrUnavailable = errors.New("hopwatch/alerting: rule store unavailable")

// Replica keeps the rule groups set through the API in the cluster's
// replicated metadata, so that every node holds and evaluates the same
// groups. The ruler writes each node's rule files from it: the store's
// directory becomes a cache of the replica (plus the generated anomaly
// namespace, which every node derives alike and keeps locally).
type Replica interface {
	// PutGroup adds or replaces one group (the YAML of one rule group)
	// and returns once this node has applied the change.
	PutGroup(ctx context.Context, tenant, namespace, name, yaml string) error
	// DeleteGroup removes one group, or the whole namespace when name is
	// "", and returns once this node has applied the change; ErrNotFound
	// when there is nothing to remove.
	DeleteGroup(ctx context.Context, tenant, namespace, name string) error
	// Groups lists every tenant's groups.
	Groups() []ReplicaGroup
	// Watch signals changes of Groups (coalesced) until stopped.
	Watch() (<-chan struct{}, func())
}

// ReplicaGroup is one replicated rule group.
type ReplicaGroup struct {
	Tenant, Namespace, Name, YAML string
}

// putReplicated validates nothing more than set does and stores g in the
// replica, then brings the local files up to date.
func (s *store) putReplicated(ctx context.Context, tenant, namespace string, g rulefmt.RuleGroup) error {
	if !validName.MatchString(namespace) {
		return fmt.Errorf("%w: namespace %q: use letters, digits, '.', '_' and '-' (at most 128)", ErrInvalid, namespace)
	}
	if namespace == AnomalyNamespace {
		return fmt.Errorf("%w: namespace %q holds the generated anomaly rules; choose another name", ErrInvalid, namespace)
	}
	b, err := yaml.Marshal(g)
	if err != nil {
		return err
	}
	if err := s.replica.PutGroup(ctx, tenant, namespace, g.Name, string(b)); err != nil {
		return err
	}
	_, err = s.materialize()
	return err
}

// deleteReplicated removes a group (or namespace) from the replica, then
// brings the local files up to date.
func (s *store) deleteReplicated(ctx context.Context, tenant, namespace, group string) error {
	if !validName.MatchString(namespace) || namespace == AnomalyNamespace {
		return ErrNotFound
	}
	if err := s.replica.DeleteGroup(ctx, tenant, namespace, group); err != nil {
		return err
	}
	_, err := s.materialize()
	return err
}

// materialize writes the replica's groups as this node's rule files, one
// per tenant and namespace, and removes the files of namespaces the
// replica no longer has (the anomaly namespace excepted). It reports
// whether a file changed.
func (s *store) materialize() (bool, error) {
	groups := s.replica.Groups()
	slices.SortFunc(groups, func(a, b ReplicaGroup) int {
		return cmp.Or(cmp.Compare(a.Tenant, b.Tenant), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	want := map[string]*rulefmt.RuleGroups{}
	for _, g := range groups {
		if !validName.MatchString(g.Namespace) || g.Namespace == AnomalyNamespace {
			s.logger.Warn("replicated rule group skipped: namespace not usable as a file name", "tenant", g.Tenant, "namespace", g.Namespace, "group", g.Name)
			continue
		}
		var rg rulefmt.RuleGroup
		if err := yaml.Unmarshal([]byte(g.YAML), &rg); err != nil {
			s.logger.Warn("replicated rule group skipped: not a rule group", "tenant", g.Tenant, "namespace", g.Namespace, "group", g.Name, "err", err)
			continue
		}
		p := s.path(g.Tenant, g.Namespace)
		if want[p] == nil {
			want[p] = &rulefmt.RuleGroups{}
		}
		want[p].Groups = append(want[p].Groups, rg)
	}

	s.mtx.Lock()
	defer s.mtx.Unlock()
	changed := false
	for p, rgs := range want {
		b, err := yaml.Marshal(rgs)
		if err != nil {
			return changed, err
		}
		if cur, err := os.ReadFile(p); err == nil && bytes.Equal(cur, b) {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return changed, err
		}
		if err := os.WriteFile(p+".tmp", b, 0o644); err != nil {
			return changed, err
		}
		if err := os.Rename(p+".tmp", p); err != nil {
			return changed, err
		}
		changed = true
	}
	files, err := filepath.Glob(filepath.Join(s.dir, "*", "*.yaml"))
	if err != nil {
		return changed, err
	}
	for _, f := range files {
		if _, ok := want[f]; ok || strings.TrimSuffix(filepath.Base(f), ".yaml") == AnomalyNamespace {
			continue
		}
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return changed, err
		}
		changed = true
	}
	return changed, nil
}

// followReplica rewrites the rule files and reloads the rules whenever the
// replica changes, until stop is closed.
func (r *Ruler) followReplica(stop <-chan struct{}) {
	ch, unwatch := r.store.replica.Watch()
	defer unwatch()
	// Groups set through the API before the node kept them in the
	// cluster are imported once, before the files become the replica's.
	for {
		err := r.store.importLocal(stop)
		if err == nil {
			break
		}
		r.logger.Warn("importing the node's rule groups into the cluster failed; retrying", "err", err)
		select {
		case <-stop:
			return
		case <-time.After(time.Second):
		}
	}
	for {
		changed, err := r.store.materialize()
		if err != nil {
			r.own.syncErrs.Inc()
			r.logger.Error("writing the replicated rule groups failed", "err", err)
		}
		if changed {
			if err := r.Sync(); err != nil {
				r.logger.Error("reloading rules failed", "err", err)
			}
		}
		select {
		case <-stop:
			return
		case <-ch:
		}
	}
}

// importedMarker, in the store's directory, records that the local rule
// files were imported into the replica.
const importedMarker = ".replicated"

// importLocal puts the groups of the local rule files (the anomaly
// namespace excepted) into the replica, once per data directory.
func (s *store) importLocal(stop <-chan struct{}) error {
	marker := filepath.Join(s.dir, importedMarker)
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	files, err := filepath.Glob(filepath.Join(s.dir, "*", "*.yaml"))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for _, f := range files {
		tenant, ns := filepath.Base(filepath.Dir(f)), strings.TrimSuffix(filepath.Base(f), ".yaml")
		if ns == AnomalyNamespace || !validName.MatchString(ns) {
			continue
		}
		rgs, err := s.readNamespace(tenant, ns)
		if err != nil {
			return err
		}
		for _, g := range rgs.Groups {
			b, err := yaml.Marshal(g)
			if err != nil {
				return err
			}
			if err := s.replica.PutGroup(ctx, tenant, ns, g.Name, string(b)); err != nil {
				return fmt.Errorf("rule group %q of %s: %w", g.Name, f, err)
			}
			s.logger.Info("rule group imported into the cluster", "tenant", tenant, "namespace", ns, "group", g.Name)
		}
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(marker, nil, 0o644)
}
