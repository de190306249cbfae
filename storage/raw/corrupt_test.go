package raw

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

// copyDir copies the files of a DB directory tree.
func copyDir(t testing.TB, from, to string) {
	require.NoError(t, filepath.WalkDir(from, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(to, rel), 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(to, rel), b, 0o644)
	}))
}

// Damaged block files (a flipped byte, a truncation, an empty or missing
// file) never panic: the block is moved aside at open and the tenant opens
// without it, or the damage shows as an error on the reads that meet it.
// Queries, compaction and retention go on.
func TestCorruptBlockFilesNeverPanic(t *testing.T) {
	good := t.TempDir()
	opts := blockOptions(good)
	opts.MaxBlockDuration = opts.BlockDuration
	db, err := Open(opts, nil, nil)
	require.NoError(t, err)
	for _, b := range testBatches(t, 3, 20_000, 500) {
		_, err := db.Append(b)
		require.NoError(t, err)
	}
	require.NoError(t, db.Compact(dataNow(db)))
	blocks := db.Blocks()
	require.GreaterOrEqual(t, len(blocks), 2)
	require.NoError(t, db.Close())
	victim := blocks[0].ULID.String()

	rng := rand.New(rand.NewPCG(9, 9))
	damage := []func(b []byte) []byte{
		func(b []byte) []byte { b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255)); return b },
		func(b []byte) []byte {
			for range 8 {
				b[rng.IntN(len(b))] = byte(rng.Uint32())
			}
			return b
		},
		func(b []byte) []byte { return b[:rng.IntN(len(b))] },
		func([]byte) []byte { return nil },
	}
	moved := 0
	for i := range 300 {
		file := []string{"index", "chunks", "meta.json"}[i%3]
		t.Run(fmt.Sprintf("%d-%s", i, file), func(t *testing.T) {
			dir := t.TempDir()
			copyDir(t, good, dir)
			p := filepath.Join(dir, "blocks", victim, file)
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			b = damage[rng.IntN(len(damage))](b)
			if i%50 == 49 {
				require.NoError(t, os.Remove(p))
			} else {
				require.NoError(t, os.WriteFile(p, b, 0o644))
			}
			o := opts
			o.Dir = dir
			db, err := Open(o, nil, nil)
			require.NoError(t, err, "a damaged block never stops the tenant from opening")
			defer db.Close()
			if testutil.ToFloat64(db.metrics.blocksCorrupt) > 0 {
				moved++
				_, err := os.Stat(filepath.Join(dir, "blocks", victim+".corrupt"))
				require.NoError(t, err, "moved aside, not deleted")
			}
			var d chunkenc.Decoder
			var s chunkenc.Samples
			for _, sr := range db.Select(minTime, maxTime) {
				for _, c := range sr.Chunks {
					_, _ = d.DecodeChunk(c, db.bounds, &s)
					_, _ = chunkenc.ReadSummary(c, db.bounds)
				}
			}
			db.LabelSets(minTime, maxTime)
			_ = db.Compact(dataNow(db))
		})
	}
	require.Positive(t, moved)
}
