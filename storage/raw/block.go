package raw

import (
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/tsdb/fileutil"
	"github.com/prometheus/prometheus/tsdb/index"

	"github.com/hopwatch/hopwatch/internal/recbuf"
)

// A block is an immutable directory holding the chunks of a time range:
//
//	meta.json  BlockMeta
//	chunks     "HWCK" version:byte, then entries; an entry is
//	           count:uvarint (length:uvarint chunk) × count
//	           (version 1: one chunk an entry, no count)
//	index      Prometheus's TSDB index (tsdb/index): series, label postings,
//	           and per series one chunk meta per entry, whose ref is the
//	           entry's offset in the chunks file and whose times (ns) are
//	           the entry's range
//
// The index wants a series' chunk metas strictly ordered and disjoint in
// time. Compaction re-cuts overlapping chunks (recut.go), so an entry
// holds several chunks only when more samples than a chunk may hold share
// one timestamp.
//
// It is written into "<ulid>.tmp" and renamed into place, so a crash never
// leaves a half-written block under a block's name.
const (
	chunksMagic   = "HWCK"
	chunksVersion = 2
	metaVersion   = 1
)

// BlockMeta describes a block.
type BlockMeta struct {
	ULID    ulid.ULID `json:"ulid"`
	MinTime int64     `json:"minTime"` // ns, inclusive
	MaxTime int64     `json:"maxTime"` // ns, inclusive
	Stats   struct {
		Series  uint64 `json:"numSeries"`
		Chunks  uint64 `json:"numChunks"`
		Samples uint64 `json:"numSamples"`
		Bytes   int64  `json:"numBytes"`
	} `json:"stats"`
	// Level is 1 for a block cut from the head, one more than the highest
	// of its sources for a compacted one.
	Level   int         `json:"level"`
	Sources []ulid.ULID `json:"sources"`
	Version int         `json:"version"`
}

// blockSeries is one series to write into a block.
type blockSeries struct {
	lset   labels.Labels
	chunks []headChunk
	owner  *memSeries // the head series the chunks come from, if any
}

// writeBlock writes series (sorted by labels) as a block under parent and
// returns its meta. With install unset the block stays in its ".tmp"
// directory for the caller to install with installBlock.
func writeBlock(parent string, series []blockSeries, level int, sources []ulid.ULID, samples func([]byte) int, install bool) (BlockMeta, error) {
	meta := BlockMeta{ULID: ulid.Make(), Level: level, Sources: sources, Version: metaVersion, MinTime: maxTime, MaxTime: minTime}
	if len(meta.Sources) == 0 {
		meta.Sources = []ulid.ULID{meta.ULID}
	}
	final := filepath.Join(parent, meta.ULID.String())
	tmp := final + ".tmp"
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return meta, err
	}
	fail := func(err error) (BlockMeta, error) {
		_ = os.RemoveAll(tmp)
		return meta, fmt.Errorf("hopwatch/raw: write block %s: %w", meta.ULID, err)
	}

	// Chunks file.
	buf := []byte(chunksMagic)
	buf = append(buf, chunksVersion)
	metas := make([][]chunks.Meta, len(series))
	symbols := map[string]struct{}{}
	for i, s := range series {
		s.lset.Range(func(l labels.Label) {
			symbols[l.Name] = struct{}{}
			symbols[l.Value] = struct{}{}
		})
		// Chunks that still overlap (only a timestamp shared by more
		// samples than a chunk holds, after re-cutting) go under one entry.
		cs := slices.Clone(s.chunks)
		slices.SortStableFunc(cs, func(a, b headChunk) int { return cmp.Compare(a.minT, b.minT) })
		for j := 0; j < len(cs); {
			k, end := overlapRun(cs, j)
			metas[i] = append(metas[i], chunks.Meta{Ref: chunks.ChunkRef(len(buf)), MinTime: cs[j].minT, MaxTime: end})
			buf = binary.AppendUvarint(buf, uint64(k-j))
			for _, c := range cs[j:k] {
				buf = binary.AppendUvarint(buf, uint64(len(c.data)))
				buf = append(buf, c.data...)
				meta.Stats.Chunks++
				meta.Stats.Samples += uint64(samples(c.data))
			}
			meta.MinTime, meta.MaxTime = min(meta.MinTime, cs[j].minT), max(meta.MaxTime, end)
			j = k
		}
		meta.Stats.Series++
	}
	if err := recbuf.WriteFileSync(filepath.Join(tmp, "chunks"), buf); err != nil {
		return fail(err)
	}

	// Index.
	iw, err := index.NewWriter(context.Background(), filepath.Join(tmp, "index"))
	if err != nil {
		return fail(err)
	}
	syms := make([]string, 0, len(symbols))
	for s := range symbols {
		syms = append(syms, s)
	}
	sortStrings(syms)
	for _, s := range syms {
		if err := iw.AddSymbol(s); err != nil {
			_ = iw.Close()
			return fail(err)
		}
	}
	for i, s := range series {
		if err := iw.AddSeries(storage.SeriesRef(i+1), s.lset, metas[i]...); err != nil {
			_ = iw.Close()
			return fail(err)
		}
	}
	if err := iw.Close(); err != nil {
		return fail(err)
	}
	meta.Stats.Bytes = int64(len(buf))
	if fi, err := os.Stat(filepath.Join(tmp, "index")); err == nil {
		meta.Stats.Bytes += fi.Size()
	}
	mj, err := json.MarshalIndent(meta, "", "\t")
	if err != nil {
		return fail(err)
	}
	if err := recbuf.WriteFileSync(filepath.Join(tmp, "meta.json"), mj); err != nil {
		return fail(err)
	}
	if install {
		if err := installBlock(parent, meta.ULID); err != nil {
			return fail(err)
		}
	}
	return meta, nil
}

// installBlock renames a block written with install unset into place.
func installBlock(parent string, id ulid.ULID) error {
	final := filepath.Join(parent, id.String())
	return fileutil.Replace(final+".tmp", final)
}

// Block is an open, immutable block.
type Block struct {
	dir     string
	meta    BlockMeta
	version byte // of the chunks file
	chunks  *fileutil.MmapFile
	index   *index.Reader
	// readers counts queries holding views of the mapped chunks
	// (SelectPinned); Close waits for them.
	readers sync.WaitGroup
}

// errCorruptBlock is wrapped by every error about a block's contents.
var errCorruptBlock = errors.New("hopwatch/raw: corrupt block")

// openBlock opens the block in dir. Whatever is wrong with its files (one
// missing or empty, a header, the meta or the index that does not parse)
// is an error wrapping errCorruptBlock; other errors are the system's.
func openBlock(dir string) (*Block, error) {
	for _, name := range []string{"meta.json", "chunks", "index"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if errors.Is(err, fs.ErrNotExist) || err == nil && (fi.Size() == 0 || !fi.Mode().IsRegular()) {
			return nil, fmt.Errorf("%w %s: %s missing or empty", errCorruptBlock, dir, name)
		}
		if err != nil {
			return nil, err
		}
	}
	mb, err := os.ReadFile(filepath.Join(dir, "meta.json"))
	if err != nil {
		return nil, err
	}
	b := &Block{dir: dir}
	if err := json.Unmarshal(mb, &b.meta); err != nil {
		return nil, fmt.Errorf("%w %s: meta.json: %v", errCorruptBlock, dir, err)
	}
	if b.meta.Version != metaVersion {
		return nil, fmt.Errorf("%w %s: meta version %d, want %d", errCorruptBlock, dir, b.meta.Version, metaVersion)
	}
	if b.meta.MinTime > b.meta.MaxTime || b.meta.Level < 1 || b.meta.Stats.Bytes < 0 {
		return nil, fmt.Errorf("%w %s: meta.json: time range [%d, %d], level %d, %d bytes", errCorruptBlock, dir, b.meta.MinTime, b.meta.MaxTime, b.meta.Level, b.meta.Stats.Bytes)
	}
	if b.chunks, err = fileutil.OpenMmapFile(filepath.Join(dir, "chunks")); err != nil {
		return nil, err
	}
	data := b.chunks.Bytes()
	if len(data) < len(chunksMagic)+1 || string(data[:len(chunksMagic)]) != chunksMagic || data[len(chunksMagic)] < 1 || data[len(chunksMagic)] > chunksVersion {
		_ = b.chunks.Close()
		return nil, fmt.Errorf("%w %s: bad chunks file header", errCorruptBlock, dir)
	}
	b.version = data[len(chunksMagic)]
	if b.index, err = index.NewFileReader(filepath.Join(dir, "index"), index.DecodePostingsRaw); err != nil {
		_ = b.chunks.Close()
		return nil, fmt.Errorf("%w %s: index: %v", errCorruptBlock, dir, err)
	}
	return b, nil
}

// Meta returns the block's meta.
func (b *Block) Meta() BlockMeta { return b.meta }

// Close releases the block's files, once no pinned reader remains. The
// block must already be out of the DB's list, so no new reader comes.
func (b *Block) Close() error {
	b.readers.Wait()
	return errors.Join(b.index.Close(), b.chunks.Close())
}

// appendChunks appends the chunks of the entry at ref to dst, as views
// into the mapped file.
func (b *Block) appendChunks(dst [][]byte, ref chunks.ChunkRef) ([][]byte, error) {
	data := b.chunks.Bytes()
	off := uint64(ref)
	if off < uint64(len(chunksMagic)+1) || off >= uint64(len(data)) {
		return dst, fmt.Errorf("%w %s: chunk ref %d outside %d bytes", errCorruptBlock, b.dir, ref, len(data))
	}
	count := uint64(1)
	if b.version >= 2 {
		c, n := binary.Uvarint(data[off:])
		// Every chunk takes at least its length byte.
		if n <= 0 || c == 0 || c > uint64(len(data))-off-uint64(n) {
			return dst, fmt.Errorf("%w %s: chunk entry at %d has a bad count", errCorruptBlock, b.dir, ref)
		}
		count, off = c, off+uint64(n)
	}
	for range count {
		if off >= uint64(len(data)) {
			return dst, fmt.Errorf("%w %s: chunk entry at %d runs past %d bytes", errCorruptBlock, b.dir, ref, len(data))
		}
		l, n := binary.Uvarint(data[off:])
		if n <= 0 || l > uint64(len(data))-off-uint64(n) {
			return dst, fmt.Errorf("%w %s: chunk at %d has a bad length", errCorruptBlock, b.dir, off)
		}
		start := off + uint64(n)
		dst = append(dst, data[start:start+l])
		off = start + l
	}
	return dst, nil
}

// indexReader adds what tsdb.PostingsForMatchers needs to index.Reader.
type indexReader struct{ *index.Reader }

func (indexReader) SortedPostings(p index.Postings) index.Postings { return p }

func (indexReader) WriteChunks(...chunks.Meta) error { return nil }

// selectSeries returns the series of the block matching ms with chunks in
// [mint, maxt]. The chunk bytes view the mapped file: valid while the block
// is open.
func (b *Block) selectSeries(mint, maxt int64, ms ...*labels.Matcher) ([]Series, error) {
	return b.walkSeries(mint, maxt, true, ms...)
}

// labelSets returns the labels of the series selectSeries would return,
// reading no chunk.
func (b *Block) labelSets(mint, maxt int64, ms ...*labels.Matcher) ([]labels.Labels, error) {
	sel, err := b.walkSeries(mint, maxt, false, ms...)
	out := make([]labels.Labels, len(sel))
	for i := range sel {
		out[i] = sel[i].Labels
	}
	return out, err
}

func (b *Block) walkSeries(mint, maxt int64, withChunks bool, ms ...*labels.Matcher) ([]Series, error) {
	if b.meta.MaxTime < mint || b.meta.MinTime > maxt {
		return nil, nil
	}
	if len(ms) == 0 {
		k, v := index.AllPostingsKey()
		ms = []*labels.Matcher{labels.MustNewMatcher(labels.MatchEqual, k, v)}
	}
	p, err := tsdb.PostingsForMatchers(context.Background(), indexReader{b.index}, ms...)
	if err != nil {
		return nil, err
	}
	var (
		out  []Series
		sb   labels.ScratchBuilder
		chks []chunks.Meta
	)
	for p.Next() {
		if err := b.index.Series(p.At(), &sb, &chks); err != nil {
			return nil, fmt.Errorf("%w %s: %v", errCorruptBlock, b.dir, err)
		}
		var sr Series
		inRange := false
		for _, m := range chks {
			if m.MaxTime < mint || m.MinTime > maxt {
				continue
			}
			inRange = true
			if !withChunks {
				break
			}
			if sr.Chunks, err = b.appendChunks(sr.Chunks, m.Ref); err != nil {
				return nil, err
			}
		}
		if inRange {
			sr.Labels = sb.Labels()
			out = append(out, sr)
		}
	}
	return out, p.Err()
}

const maxTime = 1<<63 - 1
