package window

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

// benchRuns is one series of D1 (10,000 spans/s) thinned to rate per
// second over d, in runs of 8192 samples as the raw tier's chunks.
func benchRuns(b *testing.B, rate int, d time.Duration) ([]Run, int64, int64) {
	n := int(d.Seconds()) * 10_000
	all, err := dataset.Generate(dataset.D1, n, 1)
	if err != nil {
		b.Fatal(err)
	}
	keep := 10_000 / rate
	var ts, lat []int64
	for i := 0; i < len(all); i += keep {
		ts, lat = append(ts, all[i].T), append(lat, all[i].Latency)
	}
	var runs []Run
	for i := 0; i < len(ts); i += 8192 {
		j := min(i+8192, len(ts))
		t, l := ts[i:j], lat[i:j]
		runs = append(runs, Run{MinT: t[0], MaxT: t[len(t)-1], Load: func(dst *chunkenc.Samples) error {
			dst.T = append(dst.T, t...)
			dst.Latency = append(dst.Latency, l...)
			dst.Weight = nil
			return nil
		}})
	}
	return runs, ts[0], ts[len(ts)-1]
}

// BenchmarkQuantiles: one series, 1 h, step 10 s, window 1 m, P50/P90/P99,
// at 100 and 10,000 spans/s (the "100 series" and "1 series"
// shapes of D1). Runs hold decoded columns, so this is the algorithm alone.
//
//	go test ./query/window -run '^$' -bench BenchmarkQuantiles -benchmem -count 6
func BenchmarkQuantiles(b *testing.B) {
	for _, rate := range []int{100, 10_000} {
		runs, first, last := benchRuns(b, rate, time.Hour)
		r := Range{Start: first + int64(time.Minute), End: last, Step: int64(10 * time.Second), Window: int64(time.Minute)}
		qs := []float64{0.5, 0.9, 0.99}
		samples := rate * 3600
		b.Run(map[int]string{100: "100_per_s", 10_000: "10000_per_s"}[rate], func(b *testing.B) {
			var c Computer
			var vals []float64
			var counts []uint64
			b.ReportAllocs()
			for b.Loop() {
				var err error
				vals, counts, err = c.Quantiles(context.Background(), r, qs, runs, vals[:0], counts[:0])
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(samples), "ns/sample")
		})
		if rate != 100 {
			continue // re-sorting 10,000/s takes minutes a run
		}
		b.Run("resort_100_per_s", func(b *testing.B) {
			// What the engine does: copy and sort every window.
			var buf chunkenc.Samples
			var ts, lat []int64
			for _, run := range runs {
				buf.Reset()
				_ = run.Load(&buf)
				ts, lat = append(ts, buf.T...), append(lat, buf.Latency...)
			}
			var win []float64
			b.ReportAllocs()
			for b.Loop() {
				lo := 0
				for t := r.Start; t <= r.End; t += r.Step {
					for lo < len(ts) && ts[lo] <= t-r.Window {
						lo++
					}
					win = win[:0]
					for i := lo; i < len(ts) && ts[i] <= t; i++ {
						win = append(win, float64(lat[i])/1e9)
					}
					for range qs {
						w := slices.Clone(win)
						slices.Sort(w)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(samples), "ns/sample")
		})
	}
}
