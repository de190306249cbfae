package raw

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/recbuf"
	"hash/crc32"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

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
		if errors.Is(err, errCorruptBlock) {
			// Moved aside, not deleted: the tenant opens without it, and
			// whoever looks at the log can still inspect or restore it.
			db.metrics.blocksCorrupt.Inc()
			db.logger.Error("raw block is corrupt; moved aside, the tenant opens without it", "dir", dir, "moved_to", dir+".corrupt", "err", err)
			if err := os.Rename(dir, dir+".corrupt"); err != nil {
				return fmt.Errorf("hopwatch/raw: move corrupt block %s aside: %w", dir, err)
			}
			continue
		}
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
// small or overlapping blocks, and applies retention, at wall-clock time
// now. A range is closed once both now and the newest sample of the DB are
// more than the out-of-order window past its end: the data can hold a
// range open (a writer whose clock lags), never close it early, so a
// sample stamped in the future changes nothing. Retention counts back from
// now, never from the newest sample.
//
// A step that fails (a range's block, a merge, a deletion) is logged,
// counted in hopwatch_raw_compaction_failures_total and retried at the
// next compaction; the other steps go on. The error returned joins them.
func (db *DB) Compact(now time.Time) error {
	db.compactMtx.Lock()
	defer db.compactMtx.Unlock()
	if db.closed {
		return errDBClosed
	}
	db.wallNow.Store(now.UnixNano())
	errs := []error{db.compactHead(now.UnixNano())}
	if limit := db.opts.CheckpointWALSize; limit > 0 {
		if size, err := db.wal.Size(); err == nil && size > limit {
			if err := db.checkpoint(); err != nil {
				errs = append(errs, db.failed("checkpoint", err, "wal_bytes", size))
			}
		}
	}
	return errors.Join(append(errs, db.compactBlocks(), db.applyRetention(now.UnixNano()))...)
}

// errDBClosed is returned by Compact after Close.
var errDBClosed = errors.New("hopwatch/raw: DB closed")

// checkpoint writes the head as it is to the checkpoint and deletes the WAL
// before it. The caller holds compactMtx.
func (db *DB) checkpoint() error {
	snap, err := db.snapshotHead(nil)
	if err != nil {
		return err
	}
	if err := db.writeCheckpoint(snap, db.uninstalled); err != nil {
		return err
	}
	if err := db.wal.Truncate(snap.seg); err != nil {
		return fmt.Errorf("hopwatch/raw: truncate WAL before segment %d: %w", snap.seg, err)
	}
	return nil
}

// failed counts and logs one failed compaction step and returns err.
func (db *DB) failed(step string, err error, args ...any) error {
	db.metrics.compactionFailures.Inc()
	db.logger.Warn("raw compaction step failed; retried at the next compaction", append([]any{"step", step, "err", err}, args...)...)
	return err
}

// satSub returns a-b, or the smallest int64 where that underflows.
func satSub(a, b int64) int64 {
	if b > 0 && a < minTime+b {
		return minTime
	}
	return a - b
}

// alignDown returns the start of the d-aligned range holding t (the
// smallest int64 for the partial range at the bottom).
func alignDown(t, d int64) int64 {
	r := t % d
	if r < 0 {
		r += d
	}
	if t < minTime+r {
		return minTime
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

// headRange is what the head holds of one block range.
type headRange struct {
	series []blockSeries
	moved  []movedChunk
}

// movedChunk is a head chunk whose samples before the cutoff go to a
// block: the chunk (by its first byte) and what replaces it in the head.
type movedChunk struct {
	id   *byte
	keep []headChunk // its samples from the cutoff on, if any
}

// compactHead writes the head's samples before the cutoff into blocks,
// one per aligned block range, and drops them from the head. A chunk that
// straddles the cutoff is split, so that a sample stamped in the future
// does not hold older ones in the head. A range whose block cannot be
// written stays in the head; the others go. The caller holds compactMtx.
func (db *DB) compactHead(now int64) error {
	maxT := db.headMaxT()
	if maxT == minTime {
		return db.installPending()
	}
	d := db.opts.BlockDuration.Nanoseconds()
	cutoff := alignDown(satSub(min(maxT, now), db.opts.OutOfOrderWindow.Nanoseconds()), d)

	db.mtx.RLock()
	all := make([]*memSeries, 0, len(db.series))
	for _, s := range db.series {
		all = append(all, s)
	}
	db.mtx.RUnlock()
	slices.SortFunc(all, func(a, b *memSeries) int { return labels.Compare(a.lset, b.lset) })

	// Group the chunks before the cutoff by block range (of their first
	// sample); open samples before it are cut into a chunk first. Chunks
	// are immutable, so the blocks are written without holding up appends.
	var (
		errs   []error
		ranges = map[int64]*headRange{}
		w      appendWork
		rc     = db.newRecutter()
		mine   []headChunk
	)
	for _, s := range all {
		s.mtx.Lock()
		if len(s.t) > 0 && slices.Min(s.t) < cutoff {
			db.cut(s, &w)
		}
		mine = mine[:0]
		for _, c := range s.chunks {
			if c.minT < cutoff {
				mine = append(mine, c)
			}
		}
		s.mtx.Unlock()
		byRange := map[int64][]headChunk{}
		for _, c := range mine {
			r := alignDown(c.minT, d)
			mc := movedChunk{id: &c.data[0]}
			if c.maxT < cutoff {
				byRange[r] = append(byRange[r], c)
			} else {
				before, after, err := rc.split(c, cutoff)
				if err != nil {
					errs = append(errs, db.failed("head chunk split", err, "series", s.lset.String(), "min_time", c.minT, "max_time", c.maxT))
					continue
				}
				byRange[r] = append(byRange[r], before...)
				mc.keep = after
			}
			hr := ranges[r]
			if hr == nil {
				hr = &headRange{}
				ranges[r] = hr
			}
			hr.moved = append(hr.moved, mc)
		}
		for r, cs := range byRange {
			ranges[r].series = append(ranges[r].series, blockSeries{lset: s.lset, chunks: cs, owner: s})
		}
	}
	if len(ranges) == 0 {
		return errors.Join(append(errs, db.installPending())...)
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
	var (
		metas []BlockMeta
		moved = map[*byte][]headChunk{}
	)
	for _, r := range starts {
		meta, err := db.writeHeadRange(rc, ranges[r].series)
		if err != nil {
			errs = append(errs, db.failed("head block", err, "min_time", r))
			continue
		}
		metas = append(metas, meta)
		for _, m := range ranges[r].moved {
			moved[m.id] = m.keep
		}
	}
	if len(metas) == 0 {
		return errors.Join(append(errs, db.installPending())...)
	}
	pending := slices.Clone(db.uninstalled)
	for _, m := range metas {
		pending = append(pending, m.ULID)
	}
	snap, err := db.snapshotHead(moved)
	if err == nil {
		err = db.writeCheckpoint(snap, pending)
	}
	if err != nil {
		// The head keeps the chunks, the old checkpoint and WAL stay:
		// the blocks go.
		for _, m := range metas {
			_ = os.RemoveAll(filepath.Join(db.blocksDir(), m.ULID.String()+".tmp"))
		}
		return errors.Join(append(errs, db.failed("checkpoint", err))...)
	}
	for _, m := range metas {
		db.uninstalled = append(db.uninstalled, m.ULID)
		db.logger.Info("raw block written", "ulid", m.ULID, "series", m.Stats.Series, "samples", m.Stats.Samples, "bytes", m.Stats.Bytes)
	}
	opened, err := db.openPending()
	errs = append(errs, err)
	// The chunks leave the head and the blocks arrive in one step for
	// queries, which hold blocksMtx across head and blocks: a sample is
	// never seen twice nor missed. A block that could not be opened is
	// retried; its samples are in the checkpoint's pending block only.
	db.blocksMtx.Lock()
	for _, s := range all {
		s.mtx.Lock()
		s.chunks = replaceChunks(s.chunks, moved)
		s.mtx.Unlock()
	}
	db.addBlocks(opened)
	db.blocksMtx.Unlock()
	db.metrics.blocksWritten.Add(float64(len(metas)))
	if err := db.wal.Truncate(snap.seg); err != nil {
		errs = append(errs, db.failed("WAL truncation", fmt.Errorf("hopwatch/raw: truncate WAL before segment %d: %w", snap.seg, err)))
	}
	return errors.Join(errs...)
}

// replaceChunks returns cs with each chunk in moved replaced by what moved
// maps it to (nothing, or its samples from the cutoff on). It builds a new
// slice: a checkpoint may hold the old one.
func replaceChunks(cs []headChunk, moved map[*byte][]headChunk) []headChunk {
	out := make([]headChunk, 0, len(cs))
	for _, c := range cs {
		if keep, ok := moved[&c.data[0]]; ok {
			out = append(out, keep...)
			continue
		}
		out = append(out, c)
	}
	return out
}

// writeHeadRange writes one range's chunks, re-cut where they overlap, as
// a block left in its ".tmp" directory.
// Head series sharing one label set under different keys (the key format
// of an older version or configuration, say) become one block series: the
// index takes each label set once.
func (db *DB) writeHeadRange(rc *recutter, series []blockSeries) (BlockMeta, error) {
	slices.SortStableFunc(series, func(a, b blockSeries) int { return labels.Compare(a.lset, b.lset) })
	out := make([]blockSeries, 0, len(series))
	for i := 0; i < len(series); {
		j := i + 1
		chunks := series[i].chunks
		for j < len(series) && labels.Equal(series[j].lset, series[i].lset) {
			chunks = append(slices.Clip(chunks), series[j].chunks...)
			j++
		}
		cs, err := rc.recut(chunks)
		if err != nil {
			return BlockMeta{}, fmt.Errorf("series %s: %w", series[i].lset, err)
		}
		out = append(out, blockSeries{lset: series[i].lset, chunks: cs, owner: series[i].owner})
		i = j
	}
	return writeBlock(db.blocksDir(), out, 1, nil, chunkSamples, false)
}

// installPending renames into place and opens the blocks cut from the
// head whose checkpoint is written. One that fails stays pending: every
// later checkpoint names it, so that Open installs it if no compaction
// does. The caller holds compactMtx.
func (db *DB) installPending() error {
	opened, err := db.openPending()
	db.blocksMtx.Lock()
	db.addBlocks(opened)
	db.blocksMtx.Unlock()
	return err
}

// addBlocks adds opened blocks to the DB; the caller holds blocksMtx.
func (db *DB) addBlocks(bs []*Block) {
	if len(bs) > 0 {
		db.blocks = append(db.blocks, bs...)
		db.sortBlocks()
	}
}

// openPending renames the pending blocks into place and opens them,
// returning those it opened. The caller holds compactMtx.
func (db *DB) openPending() ([]*Block, error) {
	var errs []error
	var written []*Block
	left := db.uninstalled[:0]
	for _, id := range db.uninstalled {
		dir := filepath.Join(db.blocksDir(), id.String())
		if _, err := os.Stat(dir + ".tmp"); err == nil {
			if err := installBlock(db.blocksDir(), id); err != nil {
				errs = append(errs, db.failed("block install", err, "ulid", id))
				left = append(left, id)
				continue
			}
		}
		b, err := openBlock(dir)
		if err != nil {
			errs = append(errs, db.failed("block open", err, "ulid", id))
			left = append(left, id)
			continue
		}
		written = append(written, b)
	}
	db.uninstalled = left
	return written, errors.Join(errs...)
}

// compactBlocks merges the blocks that fall within one aligned range of
// MaxBlockDuration into one block, when there are several. A merge that
// fails leaves its blocks as they are and does not stop the others.
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
	var errs []error
	rc := db.newRecutter()
	for _, start := range starts {
		if err := db.mergeBlocks(rc, groups[start]); err != nil {
			errs = append(errs, db.failed("block merge", err, "min_time", start, "blocks", len(groups[start])))
		}
	}
	return errors.Join(errs...)
}

// mergeBlocks writes the union of bs as one block, each series' chunks
// re-cut where they overlap, and replaces them by it.
func (db *DB) mergeBlocks(rc *recutter, bs []*Block) error {
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
				minT, maxT, _, err := chunkenc.ReadTimeRange(c)
				if err != nil {
					return fmt.Errorf("hopwatch/raw: block %s: %w", b.meta.ULID, err)
				}
				bsr.chunks = append(bsr.chunks, headChunk{data: c, minT: minT, maxT: maxT})
			}
		}
	}
	series := make([]blockSeries, 0, len(order))
	for _, k := range order {
		bsr := bySeries[k]
		cs, err := rc.recut(bsr.chunks)
		if err != nil {
			return fmt.Errorf("series %s: %w", bsr.lset, err)
		}
		bsr.chunks = cs
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
	db.metrics.blocksCompacted.Add(float64(len(bs)))
	db.logger.Info("raw blocks compacted", "into", meta.ULID, "from", len(bs), "level", meta.Level)
	// The new block lists them as sources: one left behind by a failed
	// delete goes at the next Open.
	var errs []error
	for _, b := range bs {
		if err := db.deleteBlock(b); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// deleteBlock closes a block already removed from db.blocks (waiting for
// the readers that pinned it) and deletes its directory.
func (db *DB) deleteBlock(b *Block) error {
	if err := b.Close(); err != nil {
		return err
	}
	return os.RemoveAll(b.dir)
}

// applyRetention deletes the blocks whose newest sample is more than
// Retention before now, then the oldest blocks while the blocks exceed
// RetentionBytes.
func (db *DB) applyRetention(now int64) error {
	horizon := satSub(now, db.opts.Retention.Nanoseconds())
	db.blocksMtx.Lock()
	var drop []*Block
	keep := db.blocks[:0]
	var total int64
	for _, b := range db.blocks {
		total += b.meta.Stats.Bytes
	}
	for _, b := range db.blocks { // oldest first
		tooOld := db.opts.Retention > 0 && b.meta.MaxTime < horizon
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
	var errs []error
	for _, b := range drop {
		if err := db.deleteBlock(b); err != nil {
			errs = append(errs, db.failed("retention", err, "ulid", b.meta.ULID))
			continue
		}
		db.metrics.blocksDeleted.Inc()
		db.logger.Info("raw block deleted by retention", "ulid", b.meta.ULID, "max_time", b.meta.MaxTime)
	}
	return errors.Join(errs...)
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

// headSnapshot is the head as of a cut of the WAL: what a checkpoint
// holds. Chunks are shared with the head (they are immutable), open
// samples are copied.
type headSnapshot struct {
	seg     int // the first WAL segment after the cut
	nextRef uint64
	series  []seriesSnapshot
}

type seriesSnapshot struct {
	ref    uint64
	key    string
	lset   labels.Labels
	maxT   int64
	chunks []headChunk
	t, lat []int64
	ids    [][16]byte
	wt     []uint32
}

// snapshotHead cuts the WAL and copies the head as of the cut, with the
// chunks in moved replaced as replaceChunks does. Appends wait only for
// the copy of the chunk lists and open samples, not for encoding or
// writing. The caller holds compactMtx, so no chunk leaves the head
// meanwhile.
func (db *DB) snapshotHead(moved map[*byte][]headChunk) (*headSnapshot, error) {
	db.appendMtx.Lock()
	defer db.appendMtx.Unlock()
	seg, err := db.wal.NextSegment()
	if err != nil {
		return nil, fmt.Errorf("hopwatch/raw: cut WAL segment: %w", err)
	}
	db.mtx.RLock()
	defer db.mtx.RUnlock()
	snap := &headSnapshot{seg: seg, nextRef: db.nextRef, series: make([]seriesSnapshot, 0, len(db.series))}
	for _, s := range db.series {
		s.mtx.Lock()
		ss := seriesSnapshot{
			ref: s.ref, key: s.key, lset: s.lset, maxT: s.maxT,
			t: slices.Clone(s.t), lat: slices.Clone(s.lat), ids: slices.Clone(s.ids), wt: slices.Clone(s.wt),
		}
		if len(moved) == 0 {
			// Appends only ever add chunks past the end, and compaction
			// replaces the slice: the first len(s.chunks) stay as they are.
			ss.chunks = s.chunks[:len(s.chunks):len(s.chunks)]
		} else {
			ss.chunks = replaceChunks(s.chunks, moved)
		}
		s.mtx.Unlock()
		snap.series = append(snap.series, ss)
	}
	return snap, nil
}

// writeCheckpoint writes snap as the head checkpoint naming the pending
// blocks: into a temporary file, fsynced, then renamed over the old one,
// so a crash leaves one or the other whole. The WAL before snap.seg may be
// deleted once it returns.
func (db *DB) writeCheckpoint(snap *headSnapshot, pending []ulid.ULID) error {
	tmp := db.checkpointPath() + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("hopwatch/raw: write head checkpoint: %w", err)
	}
	fail := func(err error) error {
		_ = f.Close()
		_ = os.Remove(tmp)
		return fmt.Errorf("hopwatch/raw: write head checkpoint: %w", err)
	}
	crc := crc32.New(castagnoli)
	bw := bufio.NewWriterSize(io.MultiWriter(f, crc), 1<<20)
	b := []byte(headCheckpointMagic)
	b = binary.AppendUvarint(b, uint64(snap.seg))
	b = binary.AppendUvarint(b, uint64(len(pending)))
	for _, id := range pending {
		b = append(b, id[:]...)
	}
	b = binary.AppendUvarint(b, snap.nextRef)
	b = binary.AppendUvarint(b, uint64(len(snap.series)))
	for i := range snap.series {
		s := &snap.series[i]
		b = binary.AppendUvarint(b, s.ref)
		b = appendSeriesHead(b, s.key, s.lset)
		b = binary.AppendVarint(b, s.maxT)
		b = binary.AppendUvarint(b, uint64(len(s.chunks)))
		for _, c := range s.chunks {
			b = binary.AppendUvarint(b, uint64(len(c.data)))
			if _, err := bw.Write(b); err != nil {
				return fail(err)
			}
			if _, err := bw.Write(c.data); err != nil {
				return fail(err)
			}
			b = binary.AppendVarint(b[:0], c.minT)
			b = binary.AppendVarint(b, c.maxT)
		}
		b = binary.AppendUvarint(b, uint64(len(s.t)))
		for j := range s.t {
			b = binary.AppendVarint(b, s.t[j])
			b = binary.AppendUvarint(b, uint64(s.lat[j]))
			b = append(b, s.ids[j][:]...)
		}
		b = binary.AppendUvarint(b, uint64(len(s.wt)))
		for _, v := range s.wt {
			b = binary.AppendUvarint(b, uint64(v))
		}
		if len(b) >= 1<<16 || i == len(snap.series)-1 {
			if _, err := bw.Write(b); err != nil {
				return fail(err)
			}
			b = b[:0]
		}
	}
	if _, err := bw.Write(b); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if _, err := f.Write(binary.BigEndian.AppendUint32(nil, crc.Sum32())); err != nil {
		return fail(err)
	}
	if err := f.Sync(); err != nil {
		return fail(err)
	}
	if err := f.Close(); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("hopwatch/raw: write head checkpoint: %w", err)
	}
	if err := fileutil.Replace(tmp, db.checkpointPath()); err != nil {
		if _, serr := os.Stat(tmp); !errors.Is(serr, fs.ErrNotExist) {
			return fmt.Errorf("hopwatch/raw: install head checkpoint: %w", err)
		}
		// Renamed, but the directory's fsync failed: the new checkpoint is
		// the one in place, and the caller must act on it as written (its
		// blocks kept), or a restart would find neither head nor block.
		db.logger.Warn("raw head checkpoint renamed into place but its directory not synced", "err", err)
	}
	db.metrics.checkpoints.Inc()
	return nil
}

var errCorruptCheckpoint = errors.New("hopwatch/raw: corrupt head checkpoint")

// readCheckpoint returns the head checkpoint's bytes, nil if there is
// none; it is read once for checkpointPending and loadCheckpoint.
func (db *DB) readCheckpoint() ([]byte, error) {
	b, err := os.ReadFile(db.checkpointPath())
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// checkpointPending returns the blocks checkpoint b names, if any.
func checkpointPending(b []byte) []ulid.ULID {
	if len(b) < len(headCheckpointMagic)+4 || checkpointVersion(b) == 0 {
		return nil // loadCheckpoint reports it
	}
	r := recbuf.New(b[:len(b)-4], len(headCheckpointMagic), errCorruptCheckpoint)
	r.Uvarint("first segment")
	var ids []ulid.ULID
	for range r.Count("pending count") {
		if v := r.Bytes(16, "pending block"); r.Err() == nil {
			ids = append(ids, ulid.ULID(v))
		}
	}
	return ids
}

// checkCheckpoint checks checkpoint b's magic and checksum.
func (db *DB) checkCheckpoint(b []byte) error {
	if len(b) < len(headCheckpointMagic)+4 || checkpointVersion(b) == 0 {
		return db.corruptCheckpoint(b, "bad magic")
	}
	if crc32.Checksum(b[:len(b)-4], castagnoli) != binary.BigEndian.Uint32(b[len(b)-4:]) {
		return db.corruptCheckpoint(b, "checksum mismatch")
	}
	return nil
}

func (db *DB) corruptCheckpoint(b []byte, why string) error {
	return fmt.Errorf("%w %s (%d bytes): %s; move it aside to start from the WAL alone", errCorruptCheckpoint, db.checkpointPath(), len(b), why)
}

// loadCheckpoint restores the head from checkpoint b, checked by
// checkCheckpoint, if any, and returns the first WAL segment to replay.
func (db *DB) loadCheckpoint(b []byte) (int, error) {
	if b == nil {
		return 0, nil
	}
	corrupt := func(why string) error { return db.corruptCheckpoint(b, why) }
	version := checkpointVersion(b)
	r := recbuf.New(b[:len(b)-4], len(headCheckpointMagic), errCorruptCheckpoint)
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
			// A view into the checkpoint, not a copy (which took most of
			// the load's time): the buffer lives while one of its chunks
			// is in the head, until the next block cut at most.
			data := r.Bytes(r.Uvarint("chunk length"), "chunk")
			data = data[:len(data):len(data)]
			c := headChunk{data: data, minT: r.Varint("chunk min time"), maxT: r.Varint("chunk max time")}
			if r.Err() == nil {
				if _, err := chunkenc.ReadSummary(data, db.bounds); err != nil {
					return 0, corrupt(err.Error())
				}
			}
			s.chunks = append(s.chunks, c)
		}
		no := r.Count("open count")
		if no > 0 {
			s.t = make([]int64, 0, no)
			s.lat = make([]int64, 0, no)
			s.ids = make([][16]byte, 0, no)
		}
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
