package raw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/recbuf"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/oklog/ulid/v2"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/fileutil"

	"github.com/hopwatch/hopwatch/storage/raw/chunkenc"
)

func (db *DB) blocksDir() string      { return filepath.Join(db.opts.Dir, "blocks") }
func (db *DB) checkpointPath() string { return filepath.Join(db.opts.Dir, "head.checkpoint") }

// loadBlocks opens every block under the blocks directory. A block cut
// from the head that the head checkpoint names (pending) but that was not
// yet renamed into place is installed; other leftovers of interrupted
// writes are removed, and so are blocks a compacted block supersedes.
func (db *DB) loadBlocks(pending []ulid.ULID) error {
	if err := os.MkdirAll(db.blocksDir(), 0o755); err != nil {
		return err
	}
	for _, id := range pending {
		if _, err := os.Stat(filepath.Join(db.blocksDir(), id.String()+".tmp")); err == nil {
			db.logger.Info("installing a block the head checkpoint names", "ulid", id)
			if err := installBlock(db.blocksDir(), id); err != nil {
				return err
			}
		}
	}
	entries, err := os.ReadDir(db.blocksDir())
	if err != nil {
		return err
	}
	for _, e := range entries {
		dir := filepath.Join(db.blocksDir(), e.Name())
		if strings.HasSuffix(e.Name(), ".tmp") {
			db.logger.Warn("removing an incomplete block", "dir", dir)
			if err := os.RemoveAll(dir); err != nil {
				return err
			}
			continue
		}
		if _, err := ulid.Parse(e.Name()); err != nil || !e.IsDir() {
			continue
		}
		b, err := openBlock(dir)
		if err != nil {
			return fmt.Errorf("hopwatch/raw: open block %s: %w", dir, err)
		}
		db.blocks = append(db.blocks, b)
	}
	// A compaction that died after writing its block but before deleting
	// its sources leaves both: the sources go.
	superseded := map[ulid.ULID]bool{}
	for _, b := range db.blocks {
		if b.meta.Level > 1 {
			for _, src := range b.meta.Sources {
				if src != b.meta.ULID {
					superseded[src] = true
				}
			}
		}
	}
	db.blocks = slices.DeleteFunc(db.blocks, func(b *Block) bool {
		if !superseded[b.meta.ULID] || b.meta.Level > 1 && !allSourcesSuperseded(b, superseded) {
			return false
		}
		db.logger.Warn("removing a block a compacted block supersedes", "ulid", b.meta.ULID)
		_ = db.deleteBlock(b)
		return true
	})
	db.sortBlocks()
	return nil
}

// allSourcesSuperseded tells whether every source of b is in superseded,
// that is whether b itself is covered by a later compaction.
func allSourcesSuperseded(b *Block, superseded map[ulid.ULID]bool) bool {
	for _, s := range b.meta.Sources {
		if !superseded[s] {
			return false
		}
	}
	return true
}

func (db *DB) sortBlocks() {
	slices.SortFunc(db.blocks, func(a, b *Block) int {
		if a.meta.MinTime != b.meta.MinTime {
			return compareInt64(a.meta.MinTime, b.meta.MinTime)
		}
		return compareInt64(a.meta.MaxTime, b.meta.MaxTime)
	})
}

func compareInt64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Compact persists what the head holds of closed time ranges as blocks,
// checkpoints the rest of the head and deletes the WAL before it, merges
// small or overlapping blocks, and applies retention. A range is closed
// when the newest sample of the DB is more than the out-of-order window
// past its end. Time is taken from the data, never from the clock.
func (db *DB) Compact() error {
	if err := db.compactHead(); err != nil {
		return err
	}
	if err := db.compactBlocks(); err != nil {
		return err
	}
	return db.applyRetention()
}

func alignDown(t, d int64) int64 {
	r := t % d
	if r < 0 {
		r += d
	}
	return t - r
}

func (db *DB) headMaxT() int64 {
	db.mtx.RLock()
	defer db.mtx.RUnlock()
	m := int64(minTime)
	for _, s := range db.series {
		s.mtx.Lock()
		m = max(m, s.maxT)
		s.mtx.Unlock()
	}
	return m
}

// compactHead writes the head's chunks that end before the cutoff into
// blocks, one per aligned block range, and drops them from the head.
func (db *DB) compactHead() error {
	maxT := db.headMaxT()
	if maxT == minTime {
		return nil
	}
	d := db.opts.BlockDuration.Nanoseconds()
	cutoff := alignDown(maxT-db.opts.OutOfOrderWindow.Nanoseconds(), d)

	db.mtx.RLock()
	all := make([]*memSeries, 0, len(db.series))
	for _, s := range db.series {
		all = append(all, s)
	}
	db.mtx.RUnlock()
	slices.SortFunc(all, func(a, b *memSeries) int { return labels.Compare(a.lset, b.lset) })

	// Group the closed chunks by block range; open samples that all fall
	// before the cutoff are cut into a (short) chunk first. Chunks are
	// immutable, so the blocks are written without holding up appends.
	ranges := map[int64][]blockSeries{}
	moved := map[*byte]bool{}
	var w appendWork
	for _, s := range all {
		s.mtx.Lock()
		if len(s.t) > 0 && slices.Max(s.t) < cutoff {
			db.cut(s, &w)
		}
		byRange := map[int64][]headChunk{}
		for _, c := range s.chunks {
			if c.maxT < cutoff {
				r := alignDown(c.minT, d)
				byRange[r] = append(byRange[r], c)
				moved[&c.data[0]] = true
			}
		}
		s.mtx.Unlock()
		for r, cs := range byRange {
			ranges[r] = append(ranges[r], blockSeries{lset: s.lset, chunks: cs, owner: s})
		}
	}
	if len(moved) == 0 {
		return nil
	}
	starts := make([]int64, 0, len(ranges))
	for r := range ranges {
		starts = append(starts, r)
	}
	slices.Sort(starts)
	// The blocks are written in ".tmp" directories first. The checkpoint
	// that drops their chunks from the head names them, and they are
	// installed after it: a crash before the checkpoint leaves the old
	// checkpoint and WAL (the blocks are discarded at open), a crash after
	// it leaves blocks that open installs. Never both, never neither.
	var metas []BlockMeta
	for _, r := range starts {
		meta, err := writeBlock(db.blocksDir(), ranges[r], 1, nil, chunkSamples, false)
		if err != nil {
			return err
		}
		metas = append(metas, meta)
	}
	db.appendMtx.Lock()
	defer db.appendMtx.Unlock()
	for _, s := range all {
		s.mtx.Lock()
		s.chunks = slices.DeleteFunc(s.chunks, func(c headChunk) bool { return moved[&c.data[0]] })
		s.mtx.Unlock()
	}
	pending := make([]ulid.ULID, len(metas))
	for i, m := range metas {
		pending[i] = m.ULID
	}
	seg, err := db.writeCheckpoint(pending)
	if err != nil {
		return err
	}
	var written []*Block
	for _, m := range metas {
		if err := installBlock(db.blocksDir(), m.ULID); err != nil {
			return err
		}
		b, err := openBlock(filepath.Join(db.blocksDir(), m.ULID.String()))
		if err != nil {
			return err
		}
		written = append(written, b)
		db.logger.Info("raw block written", "ulid", m.ULID, "series", m.Stats.Series, "samples", m.Stats.Samples, "bytes", m.Stats.Bytes)
	}
	db.blocksMtx.Lock()
	db.blocks = append(db.blocks, written...)
	db.sortBlocks()
	db.blocksMtx.Unlock()
	db.metrics.blocksWritten.Add(float64(len(written)))
	if err := db.wal.Truncate(seg); err != nil {
		return fmt.Errorf("hopwatch/raw: truncate WAL before segment %d: %w", seg, err)
	}
	return nil
}

// compactBlocks merges the blocks that fall within one aligned range of
// MaxBlockDuration into one block, when there are several.
func (db *DB) compactBlocks() error {
	d := db.opts.MaxBlockDuration.Nanoseconds()
	db.blocksMtx.RLock()
	groups := map[int64][]*Block{}
	for _, b := range db.blocks {
		start := alignDown(b.meta.MinTime, d)
		if b.meta.MaxTime < start+d {
			groups[start] = append(groups[start], b)
		}
	}
	db.blocksMtx.RUnlock()
	starts := make([]int64, 0, len(groups))
	for s, g := range groups {
		if len(g) > 1 {
			starts = append(starts, s)
		}
	}
	slices.Sort(starts)
	for _, start := range starts {
		if err := db.mergeBlocks(groups[start]); err != nil {
			return err
		}
	}
	return nil
}

// mergeBlocks writes the union of bs as one block and replaces them by it.
func (db *DB) mergeBlocks(bs []*Block) error {
	bySeries := map[string]*blockSeries{}
	var order []string
	level := 0
	var sources []ulid.ULID
	for _, b := range bs {
		level = max(level, b.meta.Level)
		sources = append(sources, b.meta.Sources...)
		series, err := b.selectSeries(minTime, maxTime)
		if err != nil {
			return err
		}
		for _, sr := range series {
			k := sr.Labels.String()
			bsr := bySeries[k]
			if bsr == nil {
				bsr = &blockSeries{lset: sr.Labels.Copy()}
				bySeries[k] = bsr
				order = append(order, k)
			}
			for _, c := range sr.Chunks {
				sum, err := chunkenc.ReadSummary(c, db.bounds)
				if err != nil {
					return fmt.Errorf("hopwatch/raw: block %s: %w", b.meta.ULID, err)
				}
				bsr.chunks = append(bsr.chunks, headChunk{data: c, minT: sum.MinT, maxT: sum.MaxT})
			}
		}
	}
	series := make([]blockSeries, 0, len(order))
	for _, k := range order {
		bsr := bySeries[k]
		slices.SortStableFunc(bsr.chunks, func(a, b headChunk) int { return compareInt64(a.minT, b.minT) })
		series = append(series, *bsr)
	}
	slices.SortFunc(series, func(a, b blockSeries) int { return labels.Compare(a.lset, b.lset) })
	meta, err := writeBlock(db.blocksDir(), series, level+1, sources, chunkSamples, true)
	if err != nil {
		return err
	}
	nb, err := openBlock(filepath.Join(db.blocksDir(), meta.ULID.String()))
	if err != nil {
		return err
	}
	db.blocksMtx.Lock()
	db.blocks = slices.DeleteFunc(db.blocks, func(b *Block) bool { return slices.Contains(bs, b) })
	db.blocks = append(db.blocks, nb)
	db.sortBlocks()
	db.blocksMtx.Unlock()
	for _, b := range bs {
		if err := db.deleteBlock(b); err != nil {
			return err
		}
	}
	db.metrics.blocksCompacted.Add(float64(len(bs)))
	db.logger.Info("raw blocks compacted", "into", meta.ULID, "from", len(bs), "level", meta.Level)
	return nil
}

// deleteBlock closes a block already removed from db.blocks (waiting for
// the readers that pinned it) and deletes its directory.
func (db *DB) deleteBlock(b *Block) error {
	if err := b.Close(); err != nil {
		return err
	}
	return os.RemoveAll(b.dir)
}

// applyRetention deletes blocks older than Retention behind the newest
// sample, then the oldest blocks while the blocks exceed RetentionBytes.
func (db *DB) applyRetention() error {
	newest := db.headMaxT()
	db.blocksMtx.Lock()
	for _, b := range db.blocks {
		newest = max(newest, b.meta.MaxTime)
	}
	var drop []*Block
	keep := db.blocks[:0]
	var total int64
	for _, b := range db.blocks {
		total += b.meta.Stats.Bytes
	}
	for _, b := range db.blocks { // oldest first
		tooOld := db.opts.Retention > 0 && b.meta.MaxTime < newest-db.opts.Retention.Nanoseconds()
		tooBig := db.opts.RetentionBytes > 0 && total > db.opts.RetentionBytes
		if tooOld || tooBig {
			drop = append(drop, b)
			total -= b.meta.Stats.Bytes
			continue
		}
		keep = append(keep, b)
	}
	db.blocks = keep
	db.blocksMtx.Unlock()
	for _, b := range drop {
		if err := db.deleteBlock(b); err != nil {
			return err
		}
		db.metrics.blocksDeleted.Inc()
		db.logger.Info("raw block deleted by retention", "ulid", b.meta.ULID, "max_time", b.meta.MaxTime)
	}
	return nil
}

// chunkSamples returns the sample count of an encoded chunk.
func chunkSamples(c []byte) int {
	if len(c) < 2 {
		return 0
	}
	n, _ := binary.Uvarint(c[1:])
	return int(n)
}

// The head checkpoint holds, at a cut of the WAL, everything the head
// still has, so that the WAL before the cut can be deleted, and names the
// blocks cut from the head with it:
//
//	"HWRHCP2" firstSegment nPending (ulid 16 bytes)… nextRef nSeries
//	  (ref key labels maxT nChunks (len data minT maxT)… nOpen (t lat traceID)…
//	   nWeights weight…)…
//	crc32c
//
// nWeights is 0 when every open sample has weight 1, else nOpen. Version 1
// ("HWRHCP1") has no weights and is still read.
const (
	headCheckpointMagic   = "HWRHCP2"
	headCheckpointMagicV1 = "HWRHCP1"
)

// checkpointVersion returns 2 or 1 for a checkpoint with that magic, 0 for
// anything else. Both magics have the same length.
func checkpointVersion(b []byte) int {
	switch {
	case len(b) < len(headCheckpointMagic):
		return 0
	case string(b[:len(headCheckpointMagic)]) == headCheckpointMagic:
		return 2
	case string(b[:len(headCheckpointMagicV1)]) == headCheckpointMagicV1:
		return 1
	}
	return 0
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// writeCheckpoint cuts the WAL and writes the head as of the cut, naming
// the pending blocks; it returns the first segment after the cut, before
// which the WAL may be deleted. The caller holds appendMtx exclusively.
func (db *DB) writeCheckpoint(pending []ulid.ULID) (int, error) {
	seg, err := db.wal.NextSegment()
	if err != nil {
		return 0, fmt.Errorf("hopwatch/raw: cut WAL segment: %w", err)
	}
	b := []byte(headCheckpointMagic)
	b = binary.AppendUvarint(b, uint64(seg))
	b = binary.AppendUvarint(b, uint64(len(pending)))
	for _, id := range pending {
		b = append(b, id[:]...)
	}
	db.mtx.RLock()
	b = binary.AppendUvarint(b, db.nextRef)
	b = binary.AppendUvarint(b, uint64(len(db.series)))
	for _, s := range db.series {
		s.mtx.Lock()
		b = binary.AppendUvarint(b, s.ref)
		b = appendSeriesHead(b, s.key, s.lset)
		b = binary.AppendVarint(b, s.maxT)
		b = binary.AppendUvarint(b, uint64(len(s.chunks)))
		for _, c := range s.chunks {
			b = binary.AppendUvarint(b, uint64(len(c.data)))
			b = append(b, c.data...)
			b = binary.AppendVarint(b, c.minT)
			b = binary.AppendVarint(b, c.maxT)
		}
		b = binary.AppendUvarint(b, uint64(len(s.t)))
		for i := range s.t {
			b = binary.AppendVarint(b, s.t[i])
			b = binary.AppendUvarint(b, uint64(s.lat[i]))
			b = append(b, s.ids[i][:]...)
		}
		b = binary.AppendUvarint(b, uint64(len(s.wt)))
		for _, v := range s.wt {
			b = binary.AppendUvarint(b, uint64(v))
		}
		s.mtx.Unlock()
	}
	db.mtx.RUnlock()
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))

	tmp := db.checkpointPath() + ".tmp"
	if err := recbuf.WriteFileSync(tmp, b); err != nil {
		return 0, fmt.Errorf("hopwatch/raw: write head checkpoint: %w", err)
	}
	if err := fileutil.Replace(tmp, db.checkpointPath()); err != nil {
		return 0, fmt.Errorf("hopwatch/raw: install head checkpoint: %w", err)
	}
	db.metrics.checkpoints.Inc()
	return seg, nil
}

var errCorruptCheckpoint = errors.New("hopwatch/raw: corrupt head checkpoint")

// checkpointPending returns the blocks the checkpoint names, if any.
func (db *DB) checkpointPending() ([]ulid.ULID, error) {
	b, err := os.ReadFile(db.checkpointPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if len(b) < len(headCheckpointMagic)+4 || checkpointVersion(b) == 0 ||
		crc32.Checksum(b[:len(b)-4], castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return nil, nil // loadCheckpoint reports it
	}
	r := recbuf.New(b[:len(b)-4], len(headCheckpointMagic), errCorruptCheckpoint)
	r.Uvarint("first segment")
	var ids []ulid.ULID
	for range r.Count("pending count") {
		if v := r.Bytes(16, "pending block"); r.Err() == nil {
			ids = append(ids, ulid.ULID(v))
		}
	}
	return ids, nil
}

// loadCheckpoint restores the head from the checkpoint, if any, and returns
// the first WAL segment to replay.
func (db *DB) loadCheckpoint() (int, error) {
	b, err := os.ReadFile(db.checkpointPath())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	corrupt := func(why string) error {
		return fmt.Errorf("%w %s (%d bytes): %s; move it aside to start from the WAL alone", errCorruptCheckpoint, db.checkpointPath(), len(b), why)
	}
	version := checkpointVersion(b)
	if len(b) < len(headCheckpointMagic)+4 || version == 0 {
		return 0, corrupt("bad magic")
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return 0, corrupt("checksum mismatch")
	}
	r := recbuf.New(body, len(headCheckpointMagic), errCorruptCheckpoint)
	first := int(r.Uvarint("first segment"))
	r.Bytes(16*uint64(r.Count("pending count")), "pending blocks")
	db.nextRef = r.Uvarint("next ref")
	n := r.Count("series count")
	sb := labels.NewScratchBuilder(8)
	for range n {
		ref := r.Uvarint("series ref")
		key := r.String("key")
		lset := r.Labels(&sb)
		if r.Err() != nil {
			return 0, corrupt(r.Err().Error())
		}
		s := db.newSeries(ref, key, lset)
		s.maxT = r.Varint("max time")
		nc := r.Count("chunk count")
		for range nc {
			data := slices.Clone(r.Bytes(r.Uvarint("chunk length"), "chunk"))
			c := headChunk{data: data, minT: r.Varint("chunk min time"), maxT: r.Varint("chunk max time")}
			if r.Err() == nil {
				if _, err := chunkenc.ReadSummary(data, db.bounds); err != nil {
					return 0, corrupt(err.Error())
				}
			}
			s.chunks = append(s.chunks, c)
		}
		no := r.Count("open count")
		for range no {
			s.t = append(s.t, r.Varint("open time"))
			s.lat = append(s.lat, int64(r.Uvarint("open latency")))
			s.ids = append(s.ids, [16]byte(padTo16(r.Bytes(16, "open trace id"))))
		}
		if version >= 2 {
			if nw := r.Count("open weight count"); nw != 0 && nw != no {
				r.Fail("open weight count")
			} else {
				for range nw {
					v := r.Uvarint("open weight")
					if v == 0 || v > math.MaxUint32 {
						r.Fail("open weight")
					}
					s.wt = append(s.wt, uint32(v))
				}
			}
		}
		if r.Err() != nil {
			return 0, corrupt(r.Err().Error())
		}
		db.nextRef = max(db.nextRef, ref+1)
	}
	if r.Err() != nil {
		return 0, corrupt(r.Err().Error())
	}
	db.logger.Info("raw head checkpoint loaded", "series", len(db.series), "first_segment", first)
	return first, nil
}

func padTo16(b []byte) []byte {
	if len(b) == 16 {
		return b
	}
	return make([]byte, 16)
}
