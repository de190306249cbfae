package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/hopwatch/hopwatch/alerting"
	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/ingest"
)

// ruleReplica keeps the ruler's API rule groups in the cluster's metadata.
type ruleReplica struct{ node *cluster.Node }

var _ alerting.Replica = ruleReplica{}

func (r ruleReplica) PutGroup(ctx context.Context, tenant, namespace, name, yaml string) error {
	i, err := r.node.PutRuleGroup(ctx, tenant, namespace, name, yaml)
	return r.applied(ctx, i, err)
}

func (r ruleReplica) DeleteGroup(ctx context.Context, tenant, namespace, name string) error {
	var (
		i   uint64
		err error
	)
	if name == "" {
		i, err = r.node.DeleteNamespace(ctx, tenant, namespace)
	} else {
		i, err = r.node.DeleteRuleGroup(ctx, tenant, namespace, name)
	}
	return r.applied(ctx, i, err)
}

// applied waits for a committed change to be applied here and maps the
// cluster's errors to the ruler's.
func (r ruleReplica) applied(ctx context.Context, index uint64, err error) error {
	if err == nil {
		err = r.node.WaitApplied(ctx, index)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, cluster.ErrNotFound):
		return fmt.Errorf("%w: %v", alerting.ErrNotFound, err)
	case errors.Is(err, cluster.ErrInvalid):
		return fmt.Errorf("%w: %v", alerting.ErrInvalid, err)
	}
	return fmt.Errorf("%w: %v", alerting.ErrUnavailable, err)
}

func (r ruleReplica) Groups() []alerting.ReplicaGroup {
	st := r.node.State()
	var out []alerting.ReplicaGroup
	for _, t := range st.RuleTenants() {
		for _, g := range st.RuleGroups(t) {
			out = append(out, alerting.ReplicaGroup{Tenant: g.Tenant, Namespace: g.Namespace, Name: g.Name, YAML: g.YAML})
		}
	}
	return out
}

func (r ruleReplica) Watch() (<-chan struct{}, func()) { return r.node.Watch() }

// exclusionReplica keeps writer exclusions in the cluster's metadata.
type exclusionReplica struct{ node *cluster.Node }

var _ ingest.ExclusionReplica = exclusionReplica{}

func (e exclusionReplica) Exclude(ctx context.Context, tenant, writer string) error {
	i, err := e.node.ExcludeWriter(ctx, tenant, writer, "")
	if err == nil {
		err = e.node.WaitApplied(ctx, i)
	}
	return err
}

func (e exclusionReplica) Include(ctx context.Context, tenant, writer string) error {
	i, err := e.node.IncludeWriter(ctx, tenant, writer)
	if errors.Is(err, cluster.ErrNotFound) {
		return nil // not excluded: nothing to end
	}
	if err == nil {
		err = e.node.WaitApplied(ctx, i)
	}
	return err
}

func (e exclusionReplica) Excluded() map[string][]string {
	st := e.node.State()
	out := map[string][]string{}
	for _, t := range st.ExclusionTenants() {
		for _, x := range st.Exclusions(t) {
			out[t] = append(out[t], x.Writer)
		}
	}
	return out
}

func (e exclusionReplica) Watch() (<-chan struct{}, func()) { return e.node.Watch() }
