package query

import (
	"context"
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// Queryable is the aggregate tier of one tenant (a *tsdb.DB satisfies it).
type Queryable interface {
	storage.Queryable
	storage.ChunkQueryable
	storage.ExemplarQueryable
}

// Storage gives the aggregate tier of a tenant.
type Storage interface {
	// Tenant returns the tenant's data, or nil when the tenant has none.
	Tenant(id string) Queryable
}

// StorageFunc adapts a function to Storage.
type StorageFunc func(id string) Queryable

// Tenant calls f.
func (f StorageFunc) Tenant(id string) Queryable { return f(id) }

// errNoTenant means a query reached storage without a tenant: a bug in the
// wiring, never a user error.
var errNoTenant = errors.New("hopwatch/query: no tenant in request context")

// tenantQueryable routes every query to the storage of the tenant carried
// by its context, so one Prometheus API serves all tenants and a request of
// tenant A can only ever open tenant A's TSDB.
type tenantQueryable struct {
	src        Storage
	raw        RawStorage // nil: no raw tier
	maxSamples int
	refused    *prometheus.CounterVec
	// exemplarLabel names the trace id of raw-tier exemplars.
	exemplarLabel string
}

var (
	_ storage.SampleAndChunkQueryable = tenantQueryable{}
	_ storage.ExemplarQueryable       = tenantQueryable{}
)

// Querier merges the tenant's aggregate tier with its raw tier, which
// PromQL sees as MetricRaw.
func (q tenantQueryable) Querier(mint, maxt int64) (storage.Querier, error) {
	return &tenantQuerier{lazyQuerier[storage.Querier]{
		open: func(id string) (storage.Querier, error) {
			var qs []storage.Querier
			if db := q.src.Tenant(id); db != nil {
				aq, err := db.Querier(mint, maxt)
				if err != nil {
					return nil, err
				}
				qs = append(qs, aq)
			}
			if q.raw != nil {
				if rdb := q.raw.RawTenant(id); rdb != nil {
					qs = append(qs, &rawQuerier{db: rdb, mint: msToNs(mint, false), maxt: msToNs(maxt, true), maxSamples: q.maxSamples, refused: q.refused})
				}
			}
			switch len(qs) {
			case 0:
				return storage.NoopQuerier(), nil
			case 1:
				return qs[0], nil
			}
			return storage.NewMergeQuerier(qs, nil, storage.ChainedSeriesMerge), nil
		},
	}}, nil
}

// ChunkQuerier serves the aggregate tier only (remote read's streamed
// chunks).
func (q tenantQueryable) ChunkQuerier(mint, maxt int64) (storage.ChunkQuerier, error) {
	return &tenantChunkQuerier{lazyQuerier[storage.ChunkQuerier]{
		open: func(id string) (storage.ChunkQuerier, error) {
			if db := q.src.Tenant(id); db != nil {
				return db.ChunkQuerier(mint, maxt)
			}
			return storage.NoopChunkedQuerier(), nil
		},
	}}, nil
}

func (q tenantQueryable) ExemplarQuerier(ctx context.Context) (storage.ExemplarQuerier, error) {
	id, ok := tenant.From(ctx)
	if !ok {
		return nil, errNoTenant
	}
	return q.exemplarQuerier(ctx, id)
}

// lazyQuerier opens the tenant's querier on first use, when the context
// (and with it the tenant) is known.
type lazyQuerier[Q storage.LabelQuerier] struct {
	open   func(tenant string) (Q, error)
	mtx    sync.Mutex
	q      Q
	opened bool
}

func (lq *lazyQuerier[Q]) get(ctx context.Context) (Q, error) {
	lq.mtx.Lock()
	defer lq.mtx.Unlock()
	if lq.opened {
		return lq.q, nil
	}
	id, ok := tenant.From(ctx)
	if !ok {
		return lq.q, errNoTenant
	}
	q, err := lq.open(id)
	if err != nil {
		return q, err
	}
	lq.q = q
	lq.opened = true
	return lq.q, nil
}

func (lq *lazyQuerier[Q]) LabelValues(ctx context.Context, name string, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	q, err := lq.get(ctx)
	if err != nil {
		return nil, nil, err
	}
	return q.LabelValues(ctx, name, hints, ms...)
}

func (lq *lazyQuerier[Q]) LabelNames(ctx context.Context, hints *storage.LabelHints, ms ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	q, err := lq.get(ctx)
	if err != nil {
		return nil, nil, err
	}
	return q.LabelNames(ctx, hints, ms...)
}

func (lq *lazyQuerier[Q]) Close() error {
	lq.mtx.Lock()
	defer lq.mtx.Unlock()
	if !lq.opened {
		return nil
	}
	return lq.q.Close()
}

type tenantQuerier struct{ lazyQuerier[storage.Querier] }

func (tq *tenantQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	if ss, ok := precomputedSelect(ctx, ms); ok {
		return ss
	}
	q, err := tq.get(ctx)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	ss := q.Select(ctx, sortSeries, hints, ms...)
	if lim := queryLimitsFrom(ctx); lim != nil {
		return &countingSeriesSet{SeriesSet: ss, lim: lim}
	}
	return ss
}

// countingSeriesSet counts a query's series against --query.max-series.
type countingSeriesSet struct {
	storage.SeriesSet
	lim *queryLimits
	err error
}

func (s *countingSeriesSet) Next() bool {
	if s.err != nil || !s.SeriesSet.Next() {
		return false
	}
	if s.err = s.lim.addSeries(1); s.err != nil {
		return false
	}
	return true
}

func (s *countingSeriesSet) Err() error {
	if s.err != nil {
		return s.err
	}
	return s.SeriesSet.Err()
}

type tenantChunkQuerier struct {
	lazyQuerier[storage.ChunkQuerier]
}

func (tq *tenantChunkQuerier) Select(ctx context.Context, sortSeries bool, hints *storage.SelectHints, ms ...*labels.Matcher) storage.ChunkSeriesSet {
	q, err := tq.get(ctx)
	if err != nil {
		return storage.ErrChunkSeriesSet(err)
	}
	return q.Select(ctx, sortSeries, hints, ms...)
}
