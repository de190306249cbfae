package agg

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
	"github.com/stretchr/testify/require"
)

// realRecords appends and flushes through a real store and returns the WAL
// records it wrote (series, samples and created records) and its checkpoint.
func realRecords(t testing.TB) (recs [][]byte, checkpoint []byte) {
	t.Helper()
	opts := testOptions(t.TempDir())
	s, err := Open(opts, nil, nil)
	require.NoError(t, err)
	ctx := context.Background()
	require.NoError(t, s.Append(ctx, testTenant, batchOf(genObs(1, 20, seriesA, seriesB))))
	require.NoError(t, s.Append(ctx, testTenant, batchOf(genObs(2, 5, seriesA, seriesC, labels.FromStrings("a", "", "b", "ü\x00")))))
	require.NoError(t, s.Flush(ctx, base))
	require.NoError(t, s.Append(ctx, testTenant, batchOf([]obs{{seriesA, -5, 0, traceID(3)}, {seriesB, math.MaxInt64 - 1, math.MaxInt64, traceID(4)}})))

	// Read the WAL while the store is open: Close checkpoints and deletes it.
	dir := walDir(opts, testTenant)
	lo, hi, err := wlog.Segments(dir)
	require.NoError(t, err)
	rc, err := wlog.NewSegmentsRangeReader(wlog.SegmentRange{Dir: dir, First: lo, Last: hi})
	require.NoError(t, err)
	r := wlog.NewReader(rc)
	for r.Next() {
		recs = append(recs, slices.Clone(r.Record()))
	}
	require.NoError(t, r.Err())
	require.NoError(t, rc.Close())
	require.NoError(t, s.Close())
	checkpoint, err = os.ReadFile(filepath.Join(opts.Dir, "tenants", testTenant, "checkpoint"))
	require.NoError(t, err)
	return recs, checkpoint
}

// appendSamplesRecord encodes samples as tenantStore.append does (which
// encodes inline, with no function of its own to call).
func appendSamplesRecord(b []byte, ss []walSample) []byte {
	b = append(b, recSamples)
	b = binary.AppendUvarint(b, uint64(len(ss)))
	var prev int64
	for _, s := range ss {
		b = binary.AppendUvarint(b, s.ref)
		b = binary.AppendVarint(b, s.start-prev)
		prev = s.start
		b = binary.AppendUvarint(b, uint64(s.duration))
		if s.hasTrace {
			b = append(b, 1)
			b = append(b, s.traceID[:]...)
		} else {
			b = append(b, 0)
		}
	}
	return b
}

func seriesOfEntries(es []seriesEntry) []*series {
	out := make([]*series, len(es))
	for i, e := range es {
		out[i] = &series{ref: e.ref, key: e.key, lset: e.lset}
	}
	return out
}

// TestRealRecordsReencodeIdentically checks the encoders against what the
// store actually wrote: every record decodes and re-encodes byte for byte.
func TestRealRecordsReencodeIdentically(t *testing.T) {
	recs, _ := realRecords(t)
	seen := map[byte]int{}
	sb := labels.NewScratchBuilder(8)
	for _, rec := range recs {
		seen[rec[0]]++
		switch rec[0] {
		case recSeries:
			es, err := decodeSeriesRecord(rec, &sb, nil)
			require.NoError(t, err)
			require.Equal(t, rec, appendSeriesRecord(nil, seriesOfEntries(es)))
		case recSamples:
			ss, err := decodeSamplesRecord(rec, nil)
			require.NoError(t, err)
			require.Equal(t, rec, appendSamplesRecord(nil, ss))
		case recCreated:
			refs, err := decodeCreatedRecord(rec, nil)
			require.NoError(t, err)
			require.Equal(t, rec, appendCreatedRecord(nil, refs))
		default:
			t.Fatalf("unknown record type %d", rec[0])
		}
	}
	require.Equal(t, map[byte]int{recSeries: 2, recSamples: 3, recCreated: 1}, seen)
}

func seedRecords(f *testing.F, typ byte) {
	recs, _ := realRecords(f)
	for _, rec := range recs {
		if rec[0] == typ {
			f.Add(rec)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{typ})
	f.Add([]byte{typ, 0})
	f.Add([]byte{typ, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
}

// The fuzzers check that decoding never panics, fails only with
// errCorruptRecord, and that a decoded record re-encodes stably: the
// re-encoding decodes to the same entries and re-encodes to itself. (The
// input itself is re-encoded identically only when canonical: the decoders
// accept overlong varints, unsorted labels and trailing bytes.) Run each as
//
//	go test ./storage/agg -run XXX -fuzz '^FuzzDecodeSamplesRecord$' -fuzztime 20s -fuzzminimizetime 1s
//
// (with the default minimize time of 60s, minimizing every new interesting
// input stalls a short run).

func FuzzDecodeSamplesRecord(f *testing.F) {
	seedRecords(f, recSamples)
	f.Fuzz(func(t *testing.T, rec []byte) {
		ss, err := decodeSamplesRecord(rec, nil)
		if err != nil {
			require.ErrorIs(t, err, errCorruptRecord)
			return
		}
		enc := appendSamplesRecord(nil, ss)
		ss2, err := decodeSamplesRecord(enc, nil)
		require.NoError(t, err)
		require.Equal(t, ss, ss2)
		require.Equal(t, enc, appendSamplesRecord(nil, ss2))
	})
}

func FuzzDecodeSeriesRecord(f *testing.F) {
	seedRecords(f, recSeries)
	f.Fuzz(func(t *testing.T, rec []byte) {
		sb := labels.NewScratchBuilder(8)
		es, err := decodeSeriesRecord(rec, &sb, nil)
		if err != nil {
			require.ErrorIs(t, err, errCorruptRecord)
			return
		}
		enc := appendSeriesRecord(nil, seriesOfEntries(es))
		es2, err := decodeSeriesRecord(enc, &sb, nil)
		require.NoError(t, err)
		require.Len(t, es2, len(es))
		for i := range es {
			require.Equal(t, es[i].ref, es2[i].ref)
			require.Equal(t, es[i].key, es2[i].key)
			require.True(t, labels.Equal(es[i].lset, es2[i].lset), "%s != %s", es[i].lset, es2[i].lset)
		}
		require.Equal(t, enc, appendSeriesRecord(nil, seriesOfEntries(es2)))
	})
}

func FuzzDecodeCreatedRecord(f *testing.F) {
	seedRecords(f, recCreated)
	f.Fuzz(func(t *testing.T, rec []byte) {
		refs, err := decodeCreatedRecord(rec, nil)
		if err != nil {
			require.ErrorIs(t, err, errCorruptRecord)
			return
		}
		enc := appendCreatedRecord(nil, refs)
		refs2, err := decodeCreatedRecord(enc, nil)
		require.NoError(t, err)
		require.Equal(t, refs, refs2)
		require.Equal(t, enc, appendCreatedRecord(nil, refs2))
	})
}

// seriesState is a series' loaded state in a comparable form (floats as
// bits, so that a NaN sum compares equal to itself).
type seriesState struct {
	Ref, Count, SumHi, SumLo uint64
	Lset                     string
	Created                  bool
	Classic                  []uint64
	Native                   bool
	NCount, NZero, NSum      uint64
	NOffset                  int32
	NCounts                  []uint64
}

func tenantState(ts *tenantStore) (uint64, int64, map[string]seriesState) {
	out := map[string]seriesState{}
	for k, s := range ts.series {
		st := seriesState{Ref: s.ref, Count: s.count, SumHi: s.sumHi, SumLo: s.sumLo, Lset: s.lset.String(), Created: s.created, Classic: s.classic}
		if s.native != nil {
			st.Native = true
			st.NCount, st.NZero, st.NSum = s.native.Count(), s.native.ZeroCount(), math.Float64bits(s.native.Sum())
			off, counts := s.native.Dense()
			if len(counts) > 0 {
				st.NOffset, st.NCounts = off, counts
			}
		}
		out[k] = st
	}
	return ts.nextRef, ts.lastFlushMs, out
}

// FuzzLoadCheckpoint loads arbitrary checkpoint files. With fixCRC the
// input is framed with the magic and a valid checksum, so that the fuzzer
// reaches the decoder instead of stopping at the checksum. Loading must
// never panic; an error must name the file; a loaded state must survive an
// encode and load unchanged.
func FuzzLoadCheckpoint(f *testing.F) {
	_, cp := realRecords(f)
	f.Add(cp, false)
	f.Add(cp[len(checkpointMagic):len(cp)-4], true)
	f.Add([]byte{}, false)
	f.Add([]byte{}, true)
	f.Add([]byte(checkpointMagic), false)

	s, err := Open(testOptions(f.TempDir()), nil, nil)
	require.NoError(f, err)
	f.Cleanup(func() { _ = s.Close() })
	dir := f.TempDir()
	fresh := func() *tenantStore {
		return &tenantStore{id: "fuzz", dir: dir, store: s, logger: slog.New(slog.DiscardHandler), series: map[string]*series{}, seqs: map[string]streamSeq{}}
	}

	f.Fuzz(func(t *testing.T, data []byte, fixCRC bool) {
		if fixCRC {
			b := append([]byte(checkpointMagic), data...)
			data = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
		}
		ts := fresh()
		require.NoError(t, os.WriteFile(ts.checkpointPath(), data, 0o644))
		first, err := ts.loadCheckpoint()
		if err != nil {
			require.ErrorIs(t, err, errCorruptCheckpoint)
			require.ErrorContains(t, err, ts.checkpointPath())
			return
		}
		ref, flush, state := tenantState(ts)

		require.NoError(t, os.WriteFile(ts.checkpointPath(), ts.encodeCheckpoint(first), 0o644))
		ts2 := fresh()
		first2, err := ts2.loadCheckpoint()
		require.NoError(t, err)
		require.Equal(t, first, first2)
		ref2, flush2, state2 := tenantState(ts2)
		require.Equal(t, ref, ref2)
		require.Equal(t, flush, flush2)
		require.Equal(t, state, state2)
	})
}
