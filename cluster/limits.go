package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"google.golang.org/grpc/metadata"
)

// defaultLimitsHeader carries a joining node's default limits (JSON
// Limits) on its Join call.
const defaultLimitsHeader = "x-hopwatch-default-limits"

// withDefaultLimits adds l, when set, to the outgoing call's metadata.
func withDefaultLimits(ctx context.Context, l *Limits) context.Context {
	if l == nil {
		return ctx
	}
	b, err := json.Marshal(l)
	if err != nil {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, defaultLimitsHeader, string(b))
}

// checkDefaultLimits refuses, with ErrConflict, a join whose node's
// default limits differ from the cluster's in st: the cluster's limits are
// one value, and a node with other flags would make an operator believe
// otherwise. A join without them (a node of an older version, or one added
// through the admin API) and a cluster without defaults yet pass.
func checkDefaultLimits(ctx context.Context, st *State) error {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get(defaultLimitsHeader)
	cl, set := st.DefaultLimits()
	if len(vals) == 0 || !set {
		return nil
	}
	var mine Limits
	if err := json.Unmarshal([]byte(vals[0]), &mine); err != nil {
		return fmt.Errorf("%w: the joining node's default limits: %v", ErrInvalid, err)
	}
	if d := mine.Diff(cl); d != "" {
		return fmt.Errorf("%w: the cluster's default limits differ from the joining node's flags: %s. "+
			"The limits are the cluster's, one value on every node: start the node with the cluster's values "+
			"(the cluster's defaults change with PUT /api/v1/admin/cluster/limits)", ErrConflict, d)
	}
	return nil
}

// Diff describes how l differs from cluster, field by field with the flag
// that sets it: "--limits.ingestion-rate-spans is 500 on this node and 1000
// in the cluster". Empty when they agree.
func (l Limits) Diff(cluster Limits) string {
	var out []string
	f := func(flag string, mine, theirs any) {
		if mine != theirs {
			out = append(out, fmt.Sprintf("--%s is %v on this node and %v in the cluster", flag, mine, theirs))
		}
	}
	f("limits.ingestion-rate-spans", l.IngestionRateSpans, cluster.IngestionRateSpans)
	f("limits.ingestion-burst-spans", l.IngestionBurstSpans, cluster.IngestionBurstSpans)
	f("limits.ingestion-rate-bytes", l.IngestionRateBytes, cluster.IngestionRateBytes)
	f("limits.max-series-per-tenant", l.MaxSeriesPerTenant, cluster.MaxSeriesPerTenant)
	return strings.Join(out, "; ")
}
