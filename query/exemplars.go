package query

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"

	rawenc "github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// rawExemplars serves /api/v1/query_exemplars for MetricRaw: the trace ids
// each encoded chunk kept (its slowest samples and a random few), with the
// sample's duration and start.
type rawExemplars struct {
	db    RawQueryable
	label string // the trace id label, as on the aggregate tier's exemplars
	// lim counts the exemplars held against --query.max-samples; ctx
	// (the request's, with --query.timeout) ends the decoding.
	lim *queryLimits
	ctx context.Context
}

func (q rawExemplars) Select(start, end int64, matchers ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	mint, maxt := msToNs(start, false), msToNs(end, true)
	seen := map[string]bool{}
	var out []exemplar.QueryResult
	var d rawenc.Decoder
	var buf rawenc.Samples
	for _, ms := range matchers {
		ok, rest := rawMatchers(ms)
		if !ok {
			continue
		}
		sel, release := q.db.SelectPinned(mint, maxt, rest...)
		defer release()
		for _, sr := range sel {
			k := sr.Labels.String()
			if seen[k] {
				continue
			}
			seen[k] = true
			res := exemplar.QueryResult{SeriesLabels: withRawName(sr.Labels)}
			for _, c := range sr.Chunks {
				if err := q.ctx.Err(); err != nil {
					return nil, err
				}
				if _, err := d.DecodeChunk(c, q.db.Bounds(), &buf); err != nil {
					return nil, fmt.Errorf("hopwatch/query: raw series %s: %w", sr.Labels, err)
				}
				if err := q.lim.addSamples(len(buf.Exemplars)); err != nil {
					return nil, err
				}
				for _, e := range buf.Exemplars {
					t := buf.T[e.Index]
					if t < mint || t > maxt {
						continue
					}
					res.Exemplars = append(res.Exemplars, exemplar.Exemplar{
						Labels: labels.FromStrings(q.label, hex.EncodeToString(e.TraceID[:])),
						Value:  float64(buf.Latency[e.Index]) / 1e9,
						Ts:     floorMs(t),
						HasTs:  true,
					})
				}
			}
			if len(res.Exemplars) > 0 {
				out = append(out, res)
			}
		}
	}
	return out, nil
}

// mergedExemplars answers from several exemplar queriers.
type mergedExemplars []storage.ExemplarQuerier

func (m mergedExemplars) Select(start, end int64, matchers ...[]*labels.Matcher) ([]exemplar.QueryResult, error) {
	var out []exemplar.QueryResult
	for _, q := range m {
		res, err := q.Select(start, end, matchers...)
		if err != nil {
			return nil, err
		}
		out = append(out, res...)
	}
	return out, nil
}

var _ storage.ExemplarQuerier = mergedExemplars(nil)

func (q tenantQueryable) exemplarQuerier(ctx context.Context, id string) (storage.ExemplarQuerier, error) {
	var qs mergedExemplars
	if db := q.src.Tenant(id); db != nil {
		eq, err := db.ExemplarQuerier(ctx)
		if err != nil {
			return nil, err
		}
		qs = append(qs, eq)
	}
	if q.raw != nil {
		if rdb := q.raw.RawTenant(id); rdb != nil {
			qs = append(qs, rawExemplars{db: rdb, label: q.exemplarLabel, lim: queryLimitsFrom(ctx), ctx: ctx})
		}
	}
	return qs, nil
}
