package query

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Refusal reasons, the values of hopwatch_query_refused_total's reason.
const (
	reasonConcurrency = "max_concurrency"
	reasonLength      = "max_length"
	reasonSeries      = "max_series"
	reasonSamples     = "max_samples"
	reasonTimeout     = "timeout"
)

// limitError is a query refused by a limit: the Prometheus error type and
// status it answers with, and the setting that changes it.
type limitError struct {
	status int
	typ    string
	reason string
	msg    string
}

func (e *limitError) Error() string { return e.msg }

// limiter holds the server-wide query limits.
type limiter struct {
	slots      chan struct{}
	maxLength  time.Duration
	maxSeries  int
	maxSamples int
	// maxExpressionBytes and maxSubquerySteps: see Options.
	maxExpressionBytes int
	maxSubquerySteps   int
	refused            *prometheus.CounterVec
}

func newLimiter(opts Options, refused *prometheus.CounterVec) *limiter {
	return &limiter{
		slots:              make(chan struct{}, opts.MaxConcurrent),
		maxLength:          opts.MaxLength,
		maxSeries:          opts.MaxSeries,
		maxSamples:         opts.MaxSamples,
		maxExpressionBytes: opts.MaxExpressionBytes,
		maxSubquerySteps:   opts.MaxSubquerySteps,
		refused:            refused,
	}
}

// acquire waits for a query slot until ctx ends. Queries beyond
// --query.max-concurrency queue, as in Prometheus; one that cannot get a
// slot before its request ends is refused.
func (l *limiter) acquire(ctx context.Context) (func(), error) {
	select {
	case l.slots <- struct{}{}:
		return func() { <-l.slots }, nil
	default:
	}
	select {
	case l.slots <- struct{}{}:
		return func() { <-l.slots }, nil
	case <-ctx.Done():
		return nil, l.refuse(&limitError{http.StatusServiceUnavailable, "unavailable", reasonConcurrency,
			fmt.Sprintf("too many concurrent queries: %d are running (limit --query.max-concurrency) and this request ended while waiting", cap(l.slots))})
	}
}

// checkRange refuses a range query longer than --query.max-length.
func (l *limiter) checkRange(g evalGrid) error {
	length := time.Duration(g.end-g.start) * time.Millisecond
	if l.maxLength > 0 && length > l.maxLength {
		return l.refuse(&limitError{http.StatusBadRequest, "bad_data", reasonLength,
			fmt.Sprintf("the query time range exceeds the limit (query length: %s, limit: %s); narrow start..end or raise --query.max-length", length, l.maxLength)})
	}
	return nil
}

func (l *limiter) refuse(err *limitError) error {
	l.refused.WithLabelValues(err.reason).Inc()
	return err
}

// forQuery starts the per-query counts.
func (l *limiter) forQuery() *queryLimits { return &queryLimits{l: l} }

// queryLimits counts what one query has touched.
type queryLimits struct {
	l       *limiter
	series  atomic.Int64
	samples atomic.Int64
}

// addSeries counts series a query selects and refuses past --query.max-series.
func (q *queryLimits) addSeries(n int) error {
	if q == nil {
		return nil
	}
	total := q.series.Add(int64(n))
	if q.l.maxSeries > 0 && total > int64(q.l.maxSeries) {
		return q.l.refuse(&limitError{http.StatusUnprocessableEntity, "execution", reasonSeries,
			fmt.Sprintf("the query hit the max number of series limit (limit: %d series); select fewer series or raise --query.max-series", q.l.maxSeries)})
	}
	return nil
}

// addSamples counts precomputed samples against --query.max-samples.
func (q *queryLimits) addSamples(n int) error {
	if q == nil {
		return nil
	}
	total := q.samples.Add(int64(n))
	if q.l.maxSamples > 0 && total > int64(q.l.maxSamples) {
		return q.l.refuse(&limitError{http.StatusUnprocessableEntity, "execution", reasonSamples,
			fmt.Sprintf("query processing would load too many samples into memory in query execution (limit --query.max-samples=%d)", q.l.maxSamples)})
	}
	return nil
}

type queryLimitsKey struct{}

func withQueryLimits(ctx context.Context, q *queryLimits) context.Context {
	return context.WithValue(ctx, queryLimitsKey{}, q)
}

func queryLimitsFrom(ctx context.Context) *queryLimits {
	q, _ := ctx.Value(queryLimitsKey{}).(*queryLimits)
	return q
}

// writeLimitError answers a refused or failed query in Prometheus's
// error envelope.
func (a *API) writeLimitError(w http.ResponseWriter, err error) {
	var le *limitError
	var fe *errFastPath
	switch {
	case errors.As(err, &le):
		writeError(w, le.status, le.typ, le.msg)
	case errors.As(err, &fe):
		if fe.typ == "timeout" {
			a.limits.refused.WithLabelValues(reasonTimeout).Inc()
		} else if fe.typ == "execution" {
			a.limits.refused.WithLabelValues(reasonSamples).Inc()
		}
		writeError(w, fe.status, fe.typ, fe.Error())
	default:
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}
