package ratelimit

// Decision cost beside golang.org/x/time/rate, in the same run:
//
//	go test ./ratelimit -run '^$' -bench 'BenchmarkAllow' -benchmem -count 6 | tee ratelimit.txt
//	go run golang.org/x/perf/cmd/benchstat@latest -col /impl ratelimit.txt
//
// Cases: one goroutine; GOMAXPROCS goroutines (b.RunParallel); 10,000
// goroutines on one tenant; GOMAXPROCS goroutines over 10,000 tenants.
// Loads: "admit", a limit far above what the loop reaches, so every
// decision takes units (the compare-and-swap path); "refuse", a limit of 1
// unit per second, so nearly every decision is a refusal. x/time/rate gets
// one *rate.Limiter per tenant in a read-only map (no lock), its best case,
// and reads time.Now() per decision as its Allow does. "hopwatch-coarse"
// is the same limiter on a clock read from memory (CoarseClock, in
// coarse_test.go), to show what the clock read costs.

import (
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

type allowFunc func(tenant string, n int64) bool

type impl struct {
	name string
	make func(b *testing.B, lim Limit, tenants []string) allowFunc
}

var impls = []impl{
	{"hopwatch", func(b *testing.B, lim Limit, tenants []string) allowFunc {
		l := newTestLimiter(b, MonotonicClock(), lim)
		for _, t := range tenants {
			l.Allow(t)
		}
		return func(t string, n int64) bool { return l.AllowN(t, n).Allowed }
	}},
	{"hopwatch-coarse", func(b *testing.B, lim Limit, tenants []string) allowFunc {
		clock := NewCoarseClock(time.Millisecond)
		b.Cleanup(clock.Stop)
		l := newTestLimiter(b, clock, lim)
		for _, t := range tenants {
			l.Allow(t)
		}
		return func(t string, n int64) bool { return l.AllowN(t, n).Allowed }
	}},
	{"xrate", func(b *testing.B, lim Limit, tenants []string) allowFunc {
		m := make(map[string]*rate.Limiter, len(tenants))
		for _, t := range tenants {
			m[t] = rate.NewLimiter(rate.Limit(lim.Rate), int(lim.Burst))
		}
		return func(t string, n int64) bool { return m[t].AllowN(time.Now(), int(n)) }
	}},
}

var loads = []struct {
	name string
	lim  Limit
}{
	{"admit", Limit{Rate: 1e11, Burst: 1e9}},
	{"refuse", Limit{Rate: 1, Burst: 1}},
}

func benchTenants(n int) []string {
	ts := make([]string, n)
	for i := range ts {
		ts[i] = "tenant-" + strconv.Itoa(i)
	}
	return ts
}

func benchDecisions(b *testing.B, n int64) {
	one := benchTenants(1)
	many := benchTenants(10000)
	for _, ld := range loads {
		for _, im := range impls {
			prefix := fmt.Sprintf("load=%s/impl=%s", ld.name, im.name)
			b.Run(prefix+"/case=single", func(b *testing.B) {
				allow := im.make(b, ld.lim, one)
				b.ReportAllocs()
				for b.Loop() {
					allow(one[0], n)
				}
			})
			b.Run(prefix+"/case=parallel", func(b *testing.B) {
				allow := im.make(b, ld.lim, one)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						allow(one[0], n)
					}
				})
			})
			b.Run(prefix+"/case=goroutines-10000", func(b *testing.B) {
				allow := im.make(b, ld.lim, one)
				b.ReportAllocs()
				b.SetParallelism(max(1, 10000/runtime.GOMAXPROCS(0)))
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						allow(one[0], n)
					}
				})
			})
			b.Run(prefix+"/case=tenants-10000", func(b *testing.B) {
				allow := im.make(b, ld.lim, many)
				b.ReportAllocs()
				var seed uint64
				var mu chan struct{} = make(chan struct{}, 1)
				mu <- struct{}{}
				b.RunParallel(func(pb *testing.PB) {
					<-mu
					seed++
					i := int(seed * 7919)
					mu <- struct{}{}
					for pb.Next() {
						i++
						if i == len(many) {
							i = 0
						}
						allow(many[i%len(many)], n)
					}
				})
			})
		}
	}
}

// BenchmarkAllow: decisions of one unit.
func BenchmarkAllow(b *testing.B) { benchDecisions(b, 1) }

// BenchmarkAllowN: decisions on batches of 100 units.
func BenchmarkAllowN(b *testing.B) { benchDecisions(b, 100) }
