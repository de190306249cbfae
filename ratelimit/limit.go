package ratelimit

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Errors returned by the package.
var (
	// ErrInvalidLimit: a limit is negative, not a number or infinite.
	ErrInvalidLimit = errors.New("hopwatch/ratelimit: invalid limit")
)

// maxRate is the largest rate a bucket enforces; faster rates admit
// everything. It keeps a bucket's token time within 63 bits for more than
// a hundred days between two re-basings (see bucket.tokensAt).
const maxRate = 1e12

// Limit is a tenant's cluster-wide limit on one quantity.
type Limit struct {
	// Rate is the sustained rate in units (spans, bytes) per second across
	// the cluster. In Options.Default, 0 means no limit; in a tenant
	// override, 0 means the default's rate.
	Rate float64
	// Burst is the bucket size in units across the cluster: how much a
	// tenant that has been quiet may send at once. 0 means the default's
	// burst, and, in Options.Default, one second of Rate.
	Burst int64
}

// Unlimited reports whether l admits everything.
func (l Limit) Unlimited() bool { return l.Rate <= 0 || l.Rate >= maxRate }

func (l Limit) validate(what string) error {
	var errs []error
	if math.IsNaN(l.Rate) || math.IsInf(l.Rate, 0) || l.Rate < 0 {
		errs = append(errs, fmt.Errorf("%w: %s rate %v is not a finite number >= 0", ErrInvalidLimit, what, l.Rate))
	}
	if l.Burst < 0 {
		errs = append(errs, fmt.Errorf("%w: %s burst %d is negative", ErrInvalidLimit, what, l.Burst))
	}
	return errors.Join(errs...)
}

// resolve fills an override's zero fields from the default.
func (l Limit) resolve(def Limit) Limit {
	if l.Rate == 0 {
		l.Rate = def.Rate
	}
	if l.Burst == 0 {
		l.Burst = def.Burst
	}
	if l.Burst == 0 && !l.Unlimited() {
		l.Burst = int64(math.Ceil(l.Rate))
	}
	return l
}

// Decision is the answer to one AllowN. It is three words, so that it
// is passed and returned in registers; the limits are read through it.
type Decision struct {
	// Allowed: the batch is admitted and its units are taken from the
	// tenant's bucket.
	Allowed bool
	// RetryAfter is, for a refused batch, how long until a batch of the
	// same size fits this node's bucket at its current rate (the exchange
	// interval if this node's share is 0); 0 when allowed. A batch larger
	// than Local().Burst does not fit until the next exchange raises this
	// node's burst: see Local.
	RetryAfter time.Duration
	lim        *limits
}

// Global is the tenant's cluster-wide limit, the figure a refusal should
// name (with the setting that changes it), never the share.
func (d Decision) Global() Limit {
	if d.lim == nil {
		return Limit{}
	}
	return d.lim.global
}

// Local is what this node admitted the tenant at when it decided, until
// the next exchange: its share of Global.
func (d Decision) Local() Limit {
	if d.lim == nil {
		return Limit{}
	}
	return d.lim.local
}
