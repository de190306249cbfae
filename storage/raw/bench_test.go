package raw

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkAppend appends batches of 512 samples over 100 series into the
// head, WAL write included (no fsync, the default), from GOMAXPROCS
// goroutines sharing the WAL through group commit.
//
//	go test ./storage/raw -run '^$' -bench BenchmarkAppend -benchmem -count 6
func BenchmarkAppend(b *testing.B) {
	opts := DefaultOptions()
	opts.Dir = b.TempDir()
	db, err := Open(opts, nil, nil)
	require.NoError(b, err)
	defer db.Close()
	batches := testBatches(b, 100, 512*64, 512)
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := next.Add(1)
			if _, err := db.Append(batches[i%int64(len(batches))]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)*512/b.Elapsed().Seconds(), "samples/s")
}

// BenchmarkAppendSampled is BenchmarkAppend with random trace ids, at
// sampling level 0 (everything kept) and 2 (one trace in four kept, each
// sample weighing 4). samples/s counts the samples offered; the decision
// is a comparison per sample and allocates nothing.
//
//	go test ./storage/raw -run '^$' -bench BenchmarkAppendSampled -benchmem -count 6
func BenchmarkAppendSampled(b *testing.B) {
	for _, level := range []int{0, 2} {
		b.Run(fmt.Sprintf("level=%d", level), func(b *testing.B) {
			opts := DefaultOptions()
			opts.Dir = b.TempDir()
			db, err := Open(opts, nil, nil)
			require.NoError(b, err)
			defer db.Close()
			batches := withRandomTraceIDs(testBatches(b, 100, 512*64, 512), rand.New(rand.NewPCG(1, 2)))
			var next atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					if _, _, err := db.AppendSampled(batches[i%int64(len(batches))], level); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)*512/b.Elapsed().Seconds(), "samples/s")
		})
	}
}
