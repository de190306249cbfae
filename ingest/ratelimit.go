package ingest

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/hopwatch/hopwatch/ratelimit"
)

// RateLimiter decides on a tenant's batches against one cluster-wide
// limit; *ratelimit.Limiter implements it.
type RateLimiter interface {
	AllowN(tenant string, n int64) ratelimit.Decision
	ReturnN(tenant string, n int64)
}

var _ RateLimiter = (*ratelimit.Limiter)(nil)

// RateLimits are the limits every request (OTLP) or batch (streaming) is
// decided on, once it is decoded enough to know its spans and bytes and
// before anything of it is written.
type RateLimits struct {
	// Spans limits spans (records, for streams) per second; nil: none.
	Spans RateLimiter
	// Bytes limits request bytes per second, after decompression; nil:
	// none.
	Bytes RateLimiter
	// Interval is the limiters' exchange interval: a batch larger than
	// this node's part of the burst fits after the next exchange raises
	// it, so it is told to retry after at least that.
	Interval time.Duration
}

// SetRateLimits makes the receiver decide on every request with l. Call it
// before the receiver serves.
func (r *Receiver) SetRateLimits(l RateLimits) { r.limits = l }

// refusedRateLimited is Mimir's reason id for spans refused by a tenant's
// ingestion rate limit, in hopwatch_discarded_samples_total.
const refusedRateLimited = "rate_limited"

// errRateLimited is a request or batch refused by a rate limit as a whole.
type errRateLimited struct {
	tenant string
	limit  string // the limiter's name: "spans" or "bytes"
	n      int64
	d      ratelimit.Decision
	// tooLarge: n is over the tenant's cluster-wide burst, so the request
	// never fits; retrying it cannot help.
	tooLarge bool
	// retryAfter is when to send it again (0 with tooLarge).
	retryAfter time.Duration
}

// rateFlags names, per limiter, the flags that change its limit.
var rateFlags = map[string]struct{ rate, burst string }{
	"spans": {"--limits.ingestion-rate-spans", "--limits.ingestion-burst-spans"},
	"bytes": {"--limits.ingestion-rate-bytes", "one second of --limits.ingestion-rate-bytes"},
}

// Error names the cluster-wide limit and the setting that changes it,
// never this node's share of it, which the client can do nothing about.
func (e *errRateLimited) Error() string {
	f := rateFlags[e.limit]
	if e.tooLarge {
		return fmt.Sprintf("hopwatch/ingest: %s: request of %d %s is larger than tenant %q's burst of %d %s (%s, or the tenant's override through the admin API), so it can never be admitted: send smaller batches",
			refusedTooLarge, e.n, e.limit, e.tenant, e.d.Global().Burst, e.limit, f.burst)
	}
	return fmt.Sprintf("hopwatch/ingest: %s: tenant %q is over its ingestion rate limit of %g %s/s with a burst of %d across the cluster (%s and %s, or the tenant's override through the admin API); request of %d %s refused, retry after %s",
		refusedRateLimited, e.tenant, e.d.Global().Rate, e.limit, e.d.Global().Burst, f.rate, f.burst, e.n, e.limit, e.retryAfter)
}

// allow decides on a request of spans and bytes for tenantID: nil when
// admitted by every limit. When the bytes limit refuses a request the
// spans limit admitted, the spans are given back.
func (r *Receiver) allow(tenantID string, spans, bytes int64) *errRateLimited {
	l := r.limits
	if l.Spans != nil {
		if d := l.Spans.AllowN(tenantID, spans); !d.Allowed {
			return r.refusal(tenantID, "spans", spans, d)
		}
	}
	if l.Bytes != nil {
		if d := l.Bytes.AllowN(tenantID, bytes); !d.Allowed {
			if l.Spans != nil {
				l.Spans.ReturnN(tenantID, spans)
			}
			return r.refusal(tenantID, "bytes", bytes, d)
		}
	}
	return nil
}

func (r *Receiver) refusal(tenantID, limit string, n int64, d ratelimit.Decision) *errRateLimited {
	e := &errRateLimited{tenant: tenantID, limit: limit, n: n, d: d, retryAfter: d.RetryAfter}
	switch {
	case !d.Global().Unlimited() && n > d.Global().Burst:
		e.tooLarge, e.retryAfter = true, 0
	case n > d.Local().Burst:
		// Larger than this node's part of the burst: it fits once the
		// next exchange sizes this node's bucket for it.
		e.retryAfter = max(e.retryAfter, r.limits.Interval)
	}
	return e
}

// countRateLimited counts a request or batch of spans refused by a rate
// limit.
func (r *Receiver) countRateLimited(protocol, tenantID string, spans int, e *errRateLimited) {
	reason := refusedRateLimited
	if e.tooLarge {
		reason = refusedTooLarge
	}
	r.metrics.requestsRefused.WithLabelValues(protocol, reason).Inc()
	r.metrics.spansRefused.WithLabelValues(protocol, refusedRateLimited).Add(float64(spans))
	r.metrics.discarded.WithLabelValues(tenantID, refusedRateLimited).Add(float64(spans))
}

// rpcStatus is the gRPC status of the refusal: RESOURCE_EXHAUSTED, with a
// RetryInfo detail unless the request never fits. OTLP exporters retry
// RESOURCE_EXHAUSTED only with RetryInfo, after its delay.
func (e *errRateLimited) rpcStatus() *status.Status {
	st := status.New(codes.ResourceExhausted, e.Error())
	if e.tooLarge {
		return st
	}
	if withInfo, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(e.retryAfter)}); err == nil {
		st = withInfo
	}
	return st
}

// httpStatus is the OTLP/HTTP status of the refusal: 429, which OTLP
// exporters retry after Retry-After, or 413 for a request that never fits.
func (e *errRateLimited) httpStatus() int {
	if e.tooLarge {
		return http.StatusRequestEntityTooLarge
	}
	return http.StatusTooManyRequests
}

// retryAfterSeconds is the Retry-After header's value: whole seconds,
// rounded up, so that a client honouring it never comes back early.
func retryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64(math.Ceil(d.Seconds()))), 10)
}
