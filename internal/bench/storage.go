package bench

import (
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"runtime"
	"slices"
	"time"

	"os"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/prometheus/model/labels"
	promchunk "github.com/prometheus/prometheus/tsdb/chunkenc"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/sample"
	"github.com/hopwatch/hopwatch/storage/raw"
	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

// StorageOptions configures the storage benchmark.
type StorageOptions struct {
	Samples   int   // per dataset
	ChunkSize int   // samples per hopwatch chunk
	Schema    int32 // of the chunk summaries' histograms
	Runs      int   // timing repetitions; the median is reported
	Seed      uint64
}

// DefaultStorageOptions measures 1 M samples per dataset.
func DefaultStorageOptions() StorageOptions {
	return StorageOptions{Samples: 1_000_000, ChunkSize: 8192, Schema: 5, Runs: 5, Seed: 1}
}

// StorageResult is the measurement of one dataset.
type StorageResult struct {
	Dataset                dataset.Name
	Hopwatch               float64 // bytes/sample, chunks with headers and summaries
	OnDisk                 float64 // bytes/sample of raw blocks: chunks file and index
	Zstd3, Zstd19          float64 // bytes/sample of the raw int64 column arrays
	XORms                  float64 // bytes/sample of Prometheus XOR chunks at ms (lossy)
	Entropy                float64 // bytes/sample bound
	EncodeRate, DecodeRate float64 // samples/s
	XORIterateRate         float64 // samples/s
}

// Storage measures every dataset and writes a Markdown table to w.
func Storage(w io.Writer, o StorageOptions) ([]StorageResult, error) {
	bounds, err := nativehist.NewBounds(o.Schema)
	if err != nil {
		return nil, err
	}
	var results []StorageResult
	for _, name := range dataset.All {
		ds, err := dataset.Generate(name, o.Samples, o.Seed)
		if err != nil {
			return nil, err
		}
		r, err := measure(name, ds, o, bounds)
		if err != nil {
			return nil, err
		}
		results = append(results, r)
	}
	fmt.Fprintf(w, "%d samples per dataset, chunks of %d, summary schema %d, %s/%s, GOMAXPROCS %d, median of %d runs\n\n",
		o.Samples, o.ChunkSize, o.Schema, runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0), o.Runs)
	fmt.Fprintln(w, "| dataset | chunks B/sample | blocks on disk B/sample | entropy bound | on disk ÷ bound | raw | zstd-3 | zstd-19 | XOR at ms (lossy) | encode samples/s | decode samples/s | XOR iterate samples/s | decode ÷ XOR |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		fmt.Fprintf(w, "| %s | %.3f | %.3f | %.3f | %.3f | 16 | %.3f | %.3f | %.3f | %.1f M | %.1f M | %.1f M | %.2f |\n",
			r.Dataset, r.Hopwatch, r.OnDisk, r.Entropy, r.OnDisk/r.Entropy, r.Zstd3, r.Zstd19, r.XORms,
			r.EncodeRate/1e6, r.DecodeRate/1e6, r.XORIterateRate/1e6, r.DecodeRate/r.XORIterateRate)
	}
	return results, nil
}

func measure(name dataset.Name, ds []dataset.Sample, o StorageOptions, bounds *nativehist.Bounds) (StorageResult, error) {
	n := float64(len(ds))
	r := StorageResult{Dataset: name, Entropy: dataset.EntropyBound(name) / 8}

	// Chunks as hopwatch writes them.
	var chunks [][]byte
	var enc chunkenc.Encoder
	var s chunkenc.Samples
	encodeAll := func() (int, error) {
		total := 0
		chunks = chunks[:0]
		for off := 0; off < len(ds); off += o.ChunkSize {
			s.Reset()
			for _, x := range ds[off:min(off+o.ChunkSize, len(ds))] {
				s.T = append(s.T, x.T)
				s.Latency = append(s.Latency, x.Latency)
			}
			b, err := enc.AppendChunk(nil, &s, bounds)
			if err != nil {
				return 0, err
			}
			chunks = append(chunks, b)
			total += len(b)
		}
		return total, nil
	}
	total, err := encodeAll()
	if err != nil {
		return r, err
	}
	r.Hopwatch = float64(total) / n
	r.EncodeRate = n / median(o.Runs, func() { _, _ = encodeAll() })

	var dec chunkenc.Decoder
	var out chunkenc.Samples
	var decodeErr error
	r.DecodeRate = n / median(o.Runs, func() {
		for _, c := range chunks {
			if _, err := dec.DecodeChunk(c, bounds, &out); err != nil {
				decodeErr = err
			}
		}
	})
	if decodeErr != nil {
		return r, decodeErr
	}

	// On disk: the samples through a raw DB (one series), cut into blocks.
	if r.OnDisk, err = onDisk(ds, o); err != nil {
		return r, err
	}

	// zstd of the raw column arrays.
	tsCol, latCol := make([]byte, 0, 8*len(ds)), make([]byte, 0, 8*len(ds))
	for _, x := range ds {
		tsCol = binary.LittleEndian.AppendUint64(tsCol, uint64(x.T))
		latCol = binary.LittleEndian.AppendUint64(latCol, uint64(x.Latency))
	}
	for _, lvl := range []int{3, 19} {
		zw, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(lvl)), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return r, err
		}
		size := len(zw.EncodeAll(tsCol, nil)) + len(zw.EncodeAll(latCol, nil))
		zw.Close()
		if lvl == 3 {
			r.Zstd3 = float64(size) / n
		} else {
			r.Zstd19 = float64(size) / n
		}
	}

	// Prometheus XOR chunks of 120 samples at ms resolution, value in seconds.
	var xors []*promchunk.XORChunk
	xorBytes := 0
	for off := 0; off < len(ds); off += 120 {
		c := promchunk.NewXORChunk()
		app, err := c.Appender()
		if err != nil {
			return r, err
		}
		for _, x := range ds[off:min(off+120, len(ds))] {
			app.Append(0, x.T/1e6, float64(x.Latency)/1e9)
		}
		xors = append(xors, c)
		xorBytes += len(c.Bytes())
	}
	r.XORms = float64(xorBytes) / n
	var it promchunk.Iterator
	var sink float64
	r.XORIterateRate = n / median(o.Runs, func() {
		for _, c := range xors {
			it = c.Iterator(it)
			for it.Next() != promchunk.ValNone {
				_, v := it.At()
				sink += v
			}
		}
	})
	if math.IsNaN(sink) {
		return r, fmt.Errorf("XOR iteration produced NaN")
	}
	return r, nil
}

// median runs f runs times and returns the median duration in seconds.
func median(runs int, f func()) float64 {
	ds := make([]float64, runs)
	for i := range ds {
		start := time.Now()
		f()
		ds[i] = time.Since(start).Seconds()
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// onDisk appends ds to a raw DB in a temporary directory, cuts blocks and
// returns the blocks' bytes (chunks file and index) per sample they hold.
func onDisk(ds []dataset.Sample, o StorageOptions) (float64, error) {
	dir, err := os.MkdirTemp("", "hopwatch-bench-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	opts := raw.DefaultOptions()
	opts.Dir = dir
	opts.ChunkSize = o.ChunkSize
	opts.Schema = o.Schema
	opts.OutOfOrderWindow = 0
	// Blocks of 1 s of data time (merged up to an hour), so that nearly all
	// of it leaves the head.
	opts.BlockDuration = time.Second
	opts.MaxBlockDuration = time.Hour
	opts.Retention = 0
	db, err := raw.Open(opts, nil, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	l := labels.FromStrings("service", "bench", "span_name", "op")
	b := &sample.Batch{Series: []sample.Series{{Key: "bench", Labels: l}}}
	for off := 0; off < len(ds); off += 1000 {
		b.Samples = b.Samples[:0]
		for _, x := range ds[off:min(off+1000, len(ds))] {
			b.Samples = append(b.Samples, sample.Sample{Start: x.T, Duration: x.Latency})
		}
		if _, err := db.Append(b); err != nil {
			return 0, err
		}
	}
	// The data's own clock: compaction as it would run just after the
	// newest sample.
	if err := db.Compact(time.Unix(0, ds[len(ds)-1].T)); err != nil {
		return 0, err
	}
	var bytes int64
	var samples uint64
	for _, m := range db.Blocks() {
		bytes += m.Stats.Bytes
		samples += m.Stats.Samples
	}
	if samples == 0 {
		return 0, fmt.Errorf("no samples reached a block")
	}
	return float64(bytes) / float64(samples), nil
}
