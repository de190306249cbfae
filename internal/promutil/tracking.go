package promutil

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// TrackingRegisterer remembers what is registered through it, so that a
// component that goes away (a deleted tenant's storage) can take all its
// series off the registry, and a new one can register the same names again.
type TrackingRegisterer struct {
	reg prometheus.Registerer

	mtx sync.Mutex
	cs  []prometheus.Collector
}

var _ prometheus.Registerer = (*TrackingRegisterer)(nil)

// NewTrackingRegisterer wraps reg.
func NewTrackingRegisterer(reg prometheus.Registerer) *TrackingRegisterer {
	return &TrackingRegisterer{reg: reg}
}

// Register registers c with the wrapped registerer and remembers it.
func (t *TrackingRegisterer) Register(c prometheus.Collector) error {
	if err := t.reg.Register(c); err != nil {
		return err
	}
	t.mtx.Lock()
	t.cs = append(t.cs, c)
	t.mtx.Unlock()
	return nil
}

// MustRegister registers cs, panicking on error as prometheus.MustRegister does.
func (t *TrackingRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := t.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister unregisters c.
func (t *TrackingRegisterer) Unregister(c prometheus.Collector) bool {
	t.mtx.Lock()
	defer t.mtx.Unlock()
	for i, x := range t.cs {
		if x == c {
			t.cs = append(t.cs[:i], t.cs[i+1:]...)
			break
		}
	}
	return t.reg.Unregister(c)
}

// UnregisterAll unregisters everything registered through t.
func (t *TrackingRegisterer) UnregisterAll() {
	t.mtx.Lock()
	cs := t.cs
	t.cs = nil
	t.mtx.Unlock()
	for _, c := range cs {
		t.reg.Unregister(c)
	}
}
