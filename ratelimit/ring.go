package ratelimit

import (
	"slices"
	"sync"
)

// Watcher is a Membership that signals changes: an exchange over one runs
// a round as soon as the ring it lists changes (a member joined, left, went
// down or came back), rather than at its next tick, so that limiters learn
// the member count and new owners hear every report within milliseconds
// of the change. A cluster node's Watch fits it.
type Watcher interface {
	Membership
	// Watch returns a channel that receives after changes (it may receive
	// when the ring did not change; the exchange compares) and a function
	// that stops it.
	Watch() (<-chan struct{}, func())
}

// Ring is a ring that its owner replaces with Set, shared by the nodes
// that see it through View: for nodes whose membership comes from outside
// a cluster (a static list, a test, the benchmarks). Safe for concurrent
// use.
type Ring struct {
	mu   sync.Mutex
	list []Member
	subs map[chan struct{}]struct{}
}

// NewRing returns a ring listing members (copied).
func NewRing(members []Member) *Ring {
	return &Ring{list: slices.Clone(members), subs: map[chan struct{}]struct{}{}}
}

// Members returns a copy of the ring.
func (r *Ring) Members() []Member {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.list)
}

// Set replaces the ring with members (copied) and signals every watcher.
func (r *Ring) Set(members []Member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.list = slices.Clone(members)
	for c := range r.subs {
		select {
		case c <- struct{}{}:
		default: // a signal is pending already
		}
	}
}

// Watch implements Watcher.
func (r *Ring) Watch() (<-chan struct{}, func()) {
	c := make(chan struct{}, 1)
	r.mu.Lock()
	r.subs[c] = struct{}{}
	r.mu.Unlock()
	return c, func() {
		r.mu.Lock()
		delete(r.subs, c)
		r.mu.Unlock()
	}
}

// View returns the ring as the member self sees it.
func (r *Ring) View(self string) Watcher { return ringView{r: r, self: self} }

type ringView struct {
	r    *Ring
	self string
}

func (v ringView) Self() string                     { return v.self }
func (v ringView) Members() []Member                { return v.r.Members() }
func (v ringView) Watch() (<-chan struct{}, func()) { return v.r.Watch() }
