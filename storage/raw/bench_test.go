package raw

import (
	"fmt"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

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

// BenchmarkOpen measures a restart with a head of 5 M samples over 100
// series: after a crash the WAL is replayed, after Close the checkpoint
// written at Close is loaded and the WAL holds nothing. Each iteration
// opens the same directory and closes it without a checkpoint.
//
//	go test ./storage/raw -run '^$' -bench BenchmarkOpen -benchtime 5x -count 3
func BenchmarkOpen(b *testing.B) {
	const n = 5_000_000
	batches := testBatches(b, 100, n, 5000)
	for _, mode := range []string{"after-crash", "after-close"} {
		b.Run(mode, func(b *testing.B) {
			opts := DefaultOptions()
			opts.Dir = b.TempDir()
			db, err := Open(opts, nil, nil)
			require.NoError(b, err)
			for _, batch := range batches {
				_, err := db.Append(batch)
				require.NoError(b, err)
			}
			if mode == "after-close" {
				require.NoError(b, db.Close())
			} else {
				require.NoError(b, db.discard())
			}
			size, err := dirSize(filepath.Join(opts.Dir, "wal"))
			require.NoError(b, err)
			b.ResetTimer()
			var cpu time.Duration
			for range b.N {
				before := cpuTime()
				db, err := Open(opts, nil, nil)
				cpu += cpuTime() - before
				require.NoError(b, err)
				b.StopTimer()
				require.NoError(b, db.discard())
				b.StartTimer()
			}
			// CPU time as well as wall time: on a shared machine the wall
			// time is mostly waiting for a core.
			b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
			b.ReportMetric(float64(size)/(1<<20), "WAL-MiB")
		})
	}
}

func dirSize(dir string) (int64, error) {
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err == nil {
			total += fi.Size()
		}
		return err
	})
	return total, err
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
