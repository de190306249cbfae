package chunkenc

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/nativehist"
	"github.com/hopwatch/hopwatch/storage/raw/dataset"
)

// BenchmarkDecodeChunk decodes one 8192-sample chunk of each dataset.
//
//	go test ./storage/raw/chunkenc -run XXX -bench BenchmarkDecodeChunk -benchmem -count 6
func BenchmarkDecodeChunk(b *testing.B) {
	bounds, _ := nativehist.NewBounds(5)
	for _, name := range dataset.All {
		b.Run(string(name), func(b *testing.B) {
			in := testSamples(b, name, 8192, false)
			in.Exemplars = nil
			var e Encoder
			c, err := e.AppendChunk(nil, in, bounds)
			require.NoError(b, err)
			var d Decoder
			var out Samples
			b.ReportAllocs()
			for b.Loop() {
				if _, err := d.DecodeChunk(c, bounds, &out); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)*8192/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

// BenchmarkEncodeChunk encodes one 8192-sample chunk of each dataset.
//
//	go test ./storage/raw/chunkenc -run XXX -bench BenchmarkEncodeChunk -benchmem -count 6
func BenchmarkEncodeChunk(b *testing.B) {
	bounds, _ := nativehist.NewBounds(5)
	for _, name := range dataset.All {
		b.Run(string(name), func(b *testing.B) {
			in := testSamples(b, name, 8192, false)
			var e Encoder
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				var err error
				buf, err = e.AppendChunk(buf[:0], in, bounds)
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)*8192/b.Elapsed().Seconds(), "samples/s")
			b.ReportMetric(float64(len(buf))/8192, "B/sample")
		})
	}
}
