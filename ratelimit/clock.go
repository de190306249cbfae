package ratelimit

import "time"

// Clock reads a monotonic clock. Decisions and the exchange measure every
// duration with it, never with the wall clock: a wall-clock step (NTP, an
// operator, a VM resuming) must neither refill nor drain a bucket.
type Clock interface {
	// Now returns nanoseconds since a fixed origin. It never decreases.
	Now() int64
}

// MonotonicClock returns the process's monotonic clock: nanoseconds since
// the process started, read through time.Since, which uses only the
// monotonic reading of the time.Time it was given. Every call returns the
// same clock (equal values), so limiters and an exchange made apart read
// one time: a bucket rebuilt by the exchange at a time from another clock
// would be dated in the past and refill by the difference.
func MonotonicClock() Clock { return monoClock{start: processStart} }

var processStart = time.Now()

type monoClock struct{ start time.Time }

func (c monoClock) Now() int64 { return int64(time.Since(c.start)) }
