package agg

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/sample"
)

// BenchmarkAppend measures the ingest path of one tenant: batches of 512
// samples over 100 known series, logged to the WAL (no fsync) and aggregated.
//
//	go test ./storage/agg -run '^$' -bench BenchmarkAppend -benchmem -count 5
func BenchmarkAppend(b *testing.B) {
	const nSeries, batchSize = 100, 512
	s, err := Open(testOptions(b.TempDir()), nil, nil)
	require.NoError(b, err)
	b.Cleanup(func() { require.NoError(b, s.Close()) })

	var batch sample.Batch
	for i := range nSeries {
		l := labels.FromStrings("service", fmt.Sprintf("svc-%d", i%10), "span_name", fmt.Sprintf("op-%d", i))
		batch.Series = append(batch.Series, sample.Series{Key: l.String(), Labels: l})
	}
	for i := range batchSize {
		batch.Samples = append(batch.Samples, sample.Sample{
			Series:   uint32(i % nSeries),
			Start:    base.UnixNano() + int64(i)*1000,
			Duration: 100_000 + int64(i*7919%512)*50_000,
			TraceID:  traceID(byte(i)),
		})
	}
	ctx := context.Background()
	// Create the tenant and its series outside the measurement.
	require.NoError(b, s.Append(ctx, testTenant, &batch))

	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if err := s.Append(ctx, testTenant, &batch); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(n*batchSize)/b.Elapsed().Seconds(), "samples/s")
}
