package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"
)

// limiterMetrics are a Limiter's measurements. The per-tenant series are
// read from the tenants' own counters at scrape time, so a decision adds
// to one counter on its bucket's line and nothing else, and an evicted
// tenant's series go with it.
type limiterMetrics struct {
	l                        *Limiter
	admitted, refused, share *prometheus.Desc
	tenants                  prometheus.Gauge
	evictions                prometheus.Counter
	fallback                 prometheus.Gauge
}

func newLimiterMetrics(l *Limiter, reg prometheus.Registerer) (*limiterMetrics, error) {
	cl := prometheus.Labels{"limit": l.name}
	m := &limiterMetrics{
		l: l,
		admitted: prometheus.NewDesc("hopwatch_ratelimit_admitted_total",
			"Units (spans, bytes: the limit label) of a tenant this node admitted.", []string{"tenant"}, cl),
		refused: prometheus.NewDesc("hopwatch_ratelimit_refused_total",
			"Units of a tenant this node refused because the tenant was over its limit.", []string{"tenant"}, cl),
		share: prometheus.NewDesc("hopwatch_ratelimit_share",
			"Fraction of the tenant's cluster-wide limit this node admits until the next exchange.", []string{"tenant"}, cl),
		tenants: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_ratelimit_tenants", ConstLabels: cl,
			Help: "Tenants the limiter holds a bucket for.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_ratelimit_evictions_total", ConstLabels: cl,
			Help: "Idle tenants the limiter forgot.",
		}),
		fallback: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "hopwatch_ratelimit_fallback_tenants", ConstLabels: cl,
			Help: "Tenants at the even split (limit / live nodes) because their owner did not answer the exchange.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m, m.tenants, m.evictions, m.fallback} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// Describe implements prometheus.Collector for the per-tenant series.
func (m *limiterMetrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.admitted
	ch <- m.refused
	ch <- m.share
}

// Collect implements prometheus.Collector for the per-tenant series.
func (m *limiterMetrics) Collect(ch chan<- prometheus.Metric) {
	type row struct {
		id                string
		admitted, refused int64
		share             float64
	}
	var rows []row
	// Read under the limiter's mutex, so that a rebuild of the index does
	// not show a tenant twice; sent after it, so that a slow scrape does
	// not hold up new tenants.
	m.l.mu.Lock()
	m.l.tenants.each(func(t *tenant) {
		t.mu.Lock()
		defer t.mu.Unlock()
		b := t.b.Load()
		if b.gone {
			return
		}
		r := row{id: t.id, share: t.share}
		r.admitted, r.refused = t.counts()
		if b.unlimited {
			r.share = 1
		}
		rows = append(rows, r)
	})
	m.l.mu.Unlock()
	for _, r := range rows {
		ch <- prometheus.MustNewConstMetric(m.admitted, prometheus.CounterValue, float64(r.admitted), r.id)
		ch <- prometheus.MustNewConstMetric(m.refused, prometheus.CounterValue, float64(r.refused), r.id)
		ch <- prometheus.MustNewConstMetric(m.share, prometheus.GaugeValue, r.share, r.id)
	}
}
