package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hopwatch/hopwatch/ingest/watermark"
)

// ErrExclusionsUnavailable: the replicated store of writer exclusions
// cannot take a change now (no leader, or the node is stopping); retry.
var ErrExclusionsUnavailable = errors.New("hopwatch/ingest: writer exclusions unavailable")

// ExclusionReplica keeps writer exclusions in the cluster's replicated
// metadata, so that every node holds an excluded writer out of its
// tenant's watermark alike, whichever node the writer sends to.
type ExclusionReplica interface {
	// Exclude and Include change one writer and return once this node
	// has applied the change.
	Exclude(ctx context.Context, tenant, writer string) error
	Include(ctx context.Context, tenant, writer string) error
	// Excluded returns the excluded writers by tenant.
	Excluded() map[string][]string
	// Watch signals changes (coalesced) until stopped.
	Watch() (<-chan struct{}, func())
}

type exclusionsRef struct{ rep ExclusionReplica }

// UseExclusionReplica routes the writer API's exclusions through rep and
// applies rep's exclusions to the watermarks until ctx ends. It blocks;
// run it in its own goroutine.
func (r *Receiver) UseExclusionReplica(ctx context.Context, rep ExclusionReplica) {
	ch, unwatch := rep.Watch()
	defer unwatch()
	r.exclusions.Store(&exclusionsRef{rep})
	defer r.exclusions.Store(nil)
	for {
		r.marks.SetExclusions(rep.Excluded(), time.Now().UnixNano())
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// setReplicated excludes or includes a writer through the replica. The
// writer must be known here (it wrote to this node), or, to include it,
// be excluded already.
func (r *Receiver) setReplicated(ctx context.Context, rep ExclusionReplica, tenantID, writer string, exclude bool) (watermark.Writer, error) {
	now := time.Now().UnixNano()
	if _, ok := r.marks.Writer(tenantID, writer, now); !ok {
		pinned := false
		for _, w := range rep.Excluded()[tenantID] {
			pinned = pinned || w == writer
		}
		if exclude || !pinned {
			return watermark.Writer{}, unknownWriter(tenantID, writer)
		}
	}
	change := rep.Include
	if exclude {
		change = rep.Exclude
	}
	if err := change(ctx, tenantID, writer); err != nil {
		return watermark.Writer{}, err
	}
	now = time.Now().UnixNano()
	r.marks.SetExclusions(rep.Excluded(), now)
	w, ok := r.marks.Writer(tenantID, writer, now)
	if !ok {
		// Included before it ever wrote here.
		w = watermark.Writer{ID: writer, State: watermark.Idle}
	}
	return w, nil
}

func unknownWriter(tenantID, writer string) error {
	return fmt.Errorf("%w %q for tenant %q on this node (list the tenant's writers here to see their ids)", watermark.ErrUnknownWriter, writer, tenantID)
}
