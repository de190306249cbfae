// Package sampling decides, every interval, at which level the raw tier
// samples: while the node is overloaded (raw appends piling up, or the
// process using nearly all its CPU) it halves the share of traces the raw
// tier keeps, and it doubles the share back once the load has been low for
// a while. The aggregates never sample.
//
// It is hand-written because what it decides is hopwatch's own: admission
// controllers (golang.org/x/time/rate, adaptive concurrency limiters)
// answer whether to take a request, while here every request is taken and
// counted and only the share of its samples kept exactly changes, in
// powers of two so that the weights of kept samples stay integers. The
// policy is a handful of comparisons a second.
package sampling
