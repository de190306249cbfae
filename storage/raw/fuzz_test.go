package raw

import (
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
)

func FuzzDecodeSamplesRecord(f *testing.F) {
	b := testBatches(f, 3, 50, 50)[0]
	rec := []byte{recSamples}
	rec = appendUvarintPlaceholder(rec)
	var prev int64
	for _, s := range b.Samples {
		rec = appendUvarint(rec, uint64(s.Series+1))
		rec = appendVarint(rec, s.Start-prev)
		prev = s.Start
		rec = appendUvarint(rec, uint64(s.Duration))
		rec = append(rec, s.TraceID[:]...)
	}
	f.Add(fillCount(rec, 1+countWidth, len(b.Samples)))
	// The same samples as a weighted record, weight 4.
	weighted := append([]byte{recWeightedSamples}, rec[1:1+countWidth]...)
	weighted = appendUvarint(weighted, 4)
	weighted = append(weighted, rec[1+countWidth:]...)
	f.Add(fillCount(weighted, 1+countWidth, len(b.Samples)))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, rec []byte) {
		out, err := decodeSamplesRecord(rec, nil)
		if err != nil {
			require.ErrorIs(t, err, errCorruptRecord)
		}
		for _, s := range out {
			require.GreaterOrEqual(t, s.latency, int64(0))
			require.GreaterOrEqual(t, s.weight, uint32(1))
		}
	})
}

func FuzzDecodeSeriesRecord(f *testing.F) {
	f.Add(appendSeriesRecord(nil, 7, "k", labels.FromStrings("service", "a", "span_name", "b")))
	f.Add([]byte{recSeries})
	f.Fuzz(func(t *testing.T, rec []byte) {
		sb := labels.NewScratchBuilder(4)
		err := decodeSeriesRecord(rec, &sb, func(uint64, string, labels.Labels) {})
		if err != nil {
			require.ErrorIs(t, err, errCorruptRecord)
		}
	})
}

// FuzzLoadHeadCheckpoint feeds arbitrary checkpoint bodies (with a valid
// checksum, so the parser behind it is reached) to a fresh DB: an error
// that says how to recover, never a panic.
func FuzzLoadHeadCheckpoint(f *testing.F) {
	dir := f.TempDir()
	db, err := Open(blockOptions(dir), nil, nil)
	require.NoError(f, err)
	// Some open samples are weighted, so the weights section is exercised.
	for i, b := range withRandomTraceIDs(testBatches(f, 2, 3000, 500), rand.New(rand.NewPCG(1, 1))) {
		_, _, err := db.AppendSampled(b, i%2)
		require.NoError(f, err)
	}
	// Close writes the checkpoint.
	require.NoError(f, db.Close())
	good, err := os.ReadFile(db.checkpointPath())
	require.NoError(f, err)
	f.Add(good[:len(good)-4])
	f.Fuzz(func(t *testing.T, body []byte) {
		d := t.TempDir()
		b := binary.BigEndian.AppendUint32(append([]byte(nil), body...), crc32.Checksum(body, castagnoli))
		require.NoError(t, os.WriteFile(d+"/head.checkpoint", b, 0o644))
		db, err := Open(blockOptions(d), nil, nil)
		if err != nil {
			require.ErrorIs(t, err, errCorruptCheckpoint)
			require.ErrorContains(t, err, "move it aside")
			return
		}
		require.NoError(t, db.Close())
	})
}
