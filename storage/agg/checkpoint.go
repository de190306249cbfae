package agg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/hopwatch/hopwatch/internal/recbuf"
	"github.com/hopwatch/hopwatch/sample"
	"hash/crc32"
	"io/fs"
	"math"
	"os"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/fileutil"
)

// A checkpoint is the whole aggregate state of a tenant at a cut of its WAL:
// it holds every sample of the segments before FirstSegment and none after.
// Replay loads it and reads the WAL from FirstSegment on.
//
//	magic "HWAGGCP3" ("HWAGGCP2" is read too: it has no stream seqs)
//	first segment, next ref, last flush ms (varint)
//	classic bounds: count, float64 bits each; native schema + 1 (0: off)
//	series count, then per series:
//	  ref, family (byte), key, labels, created (byte), count, failed, gauge, sumHi, sumLo,
//	  classic counts (count, values), native (present byte; count,
//	  zero count, sum bits, offset (varint), bucket count, values)
//	stream seq count, then per streaming writer: writer, last seq, last
//	  use (Unix seconds, varint); writers unused for StreamSeqTTL are left out
//	CRC32 (Castagnoli) of all of the above, big endian
const (
	checkpointMagic   = "HWAGGCP3"
	checkpointMagicV2 = "HWAGGCP2"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// checkpoint cuts the WAL, writes the state as of the cut and deletes the
// segments before it.
func (t *tenantStore) checkpoint(now time.Time) error {
	t.mtx.Lock()
	seg, err := t.wal.NextSegment()
	if err != nil {
		t.mtx.Unlock()
		return fmt.Errorf("hopwatch/agg: tenant %s: cut WAL segment: %w", t.id, err)
	}
	buf := t.encodeCheckpoint(seg)
	t.lastCheckpoint = now
	// The state encoded holds every batch applied without its WAL record
	// so far; one applied later sets the flag again.
	forced := t.needCheckpoint
	t.needCheckpoint = false
	t.mtx.Unlock()

	tmp := t.checkpointPath() + ".tmp"
	if err := recbuf.WriteFileSync(tmp, buf); err != nil {
		t.checkpointAgain(forced)
		return fmt.Errorf("hopwatch/agg: tenant %s: write checkpoint: %w", t.id, err)
	}
	if err := fileutil.Replace(tmp, t.checkpointPath()); err != nil {
		t.checkpointAgain(forced)
		return fmt.Errorf("hopwatch/agg: tenant %s: install checkpoint: %w", t.id, err)
	}
	if err := t.wal.Truncate(seg); err != nil {
		return fmt.Errorf("hopwatch/agg: tenant %s: truncate WAL before segment %d: %w", t.id, seg, err)
	}
	t.store.metrics.checkpoints.Inc()
	t.logger.Debug("checkpoint written", "first_segment", seg, "bytes", len(buf))
	return nil
}

// checkpointAgain keeps a failed forced checkpoint due at the next flush.
func (t *tenantStore) checkpointAgain(forced bool) {
	if !forced {
		return
	}
	t.mtx.Lock()
	t.needCheckpoint = true
	t.mtx.Unlock()
}

// encodeCheckpoint serializes the state; the caller holds t.mtx.
func (t *tenantStore) encodeCheckpoint(firstSegment int) []byte {
	lay := &t.store.layout
	b := []byte(checkpointMagic)
	b = binary.AppendUvarint(b, uint64(firstSegment))
	b = binary.AppendUvarint(b, t.nextRef)
	b = binary.AppendVarint(b, t.lastFlushMs)
	if lay.classic {
		b = binary.AppendUvarint(b, uint64(len(lay.boundsSec)))
		for _, v := range lay.boundsSec {
			b = binary.BigEndian.AppendUint64(b, math.Float64bits(v))
		}
	} else {
		b = binary.AppendUvarint(b, 0)
	}
	if lay.native {
		b = binary.AppendUvarint(b, uint64(lay.nbounds.Schema()+1-minSchemaOffset))
	} else {
		b = binary.AppendUvarint(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(t.series)))
	for _, s := range t.series {
		b = appendSeriesHead(b, s)
		created := byte(0)
		if s.created {
			created = 1
		}
		b = append(b, created)
		b = binary.AppendUvarint(b, s.count)
		b = binary.AppendUvarint(b, s.failed)
		b = binary.AppendVarint(b, s.gauge)
		b = binary.AppendUvarint(b, s.sumHi)
		b = binary.AppendUvarint(b, s.sumLo)
		b = binary.AppendUvarint(b, uint64(len(s.classic)))
		for _, c := range s.classic {
			b = binary.AppendUvarint(b, c)
		}
		if s.native == nil {
			b = append(b, 0)
			continue
		}
		b = append(b, 1)
		off, counts := s.native.Dense()
		b = binary.AppendUvarint(b, s.native.Count())
		b = binary.AppendUvarint(b, s.native.ZeroCount())
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(s.native.Sum()))
		b = binary.AppendVarint(b, int64(off))
		b = binary.AppendUvarint(b, uint64(len(counts)))
		for _, c := range counts {
			b = binary.AppendUvarint(b, c)
		}
	}
	cutoff := time.Now().Add(-StreamSeqTTL).Unix()
	n := 0
	for _, sq := range t.seqs {
		if sq.lastUsed >= cutoff {
			n++
		}
	}
	b = binary.AppendUvarint(b, uint64(n))
	for w, sq := range t.seqs {
		if sq.lastUsed >= cutoff {
			b = appendString(b, w)
			b = binary.AppendUvarint(b, sq.seq)
			b = binary.AppendVarint(b, sq.lastUsed)
		}
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
}

// minSchemaOffset shifts schemas so that the stored value is positive and 0
// can mean "native histograms off".
const minSchemaOffset = -4

// errCorruptCheckpoint is wrapped by every checkpoint decoding error.
var errCorruptCheckpoint = errors.New("hopwatch/agg: corrupt checkpoint")

// loadCheckpoint restores the state from the checkpoint, if there is one, and
// returns the first WAL segment to replay.
func (t *tenantStore) loadCheckpoint() (int, error) {
	buf, err := os.ReadFile(t.checkpointPath())
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("hopwatch/agg: tenant %s: read checkpoint: %w", t.id, err)
	}
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w %s (%d bytes): %s; move it aside to start this tenant from its WAL alone",
			errCorruptCheckpoint, t.checkpointPath(), len(buf), fmt.Sprintf(format, args...))
	}
	if len(buf) < len(checkpointMagic)+4 {
		return 0, corrupt("bad magic")
	}
	magic := string(buf[:len(checkpointMagic)])
	if magic != checkpointMagic && magic != checkpointMagicV2 {
		return 0, corrupt("bad magic")
	}
	body := buf[:len(buf)-4]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(buf[len(buf)-4:]) {
		return 0, corrupt("checksum mismatch")
	}
	d := recbuf.New(body, len(checkpointMagic), errCorruptCheckpoint)
	first := int(d.Uvarint("first segment"))
	t.nextRef = d.Uvarint("next ref")
	t.lastFlushMs = d.Varint("last flush")

	lay := &t.store.layout
	nb := d.Count("bucket count")
	sameClassic := lay.classic && nb == len(lay.boundsSec)
	for i := range nb {
		v := math.Float64frombits(d.Uint64BE("bucket bound"))
		if sameClassic && v != lay.boundsSec[i] {
			sameClassic = false
		}
	}
	if d.Err() != nil {
		return 0, corrupt("%v", d.Err())
	}
	schemaPlus := d.Uvarint("schema")
	sameNative := lay.native && schemaPlus == uint64(lay.nbounds.Schema()+1-minSchemaOffset)
	if (nb > 0 || lay.classic) && !sameClassic || (schemaPlus > 0 || lay.native) && !sameNative {
		// The bucket layout changed: the old counts cannot be carried into
		// the new buckets, so every series restarts from zero, which
		// rate() and increase() read as a counter reset.
		t.logger.Warn("histogram layout changed since the last checkpoint; span metrics restart from zero")
	}
	reset := !sameClassic && (nb > 0 || lay.classic) || !sameNative && (schemaPlus > 0 || lay.native)

	sb := labels.NewScratchBuilder(8)
	n := d.Count("series count")
	for range n {
		ref := d.Uvarint("series ref")
		family := sample.Family(d.Byte("series family"))
		if family >= sample.NumFamilies {
			d.Fail("series family")
		}
		key := d.String("series key")
		lset := d.Labels(&sb)
		if d.Err() != nil {
			return 0, corrupt("%v", d.Err())
		}
		s := lay.newSeries(ref, key, lset, family)
		s.created = d.Byte("created") == 1
		s.count = d.Uvarint("count")
		s.failed = d.Uvarint("failed")
		s.gauge = d.Varint("gauge")
		s.sumHi = d.Uvarint("sum")
		s.sumLo = d.Uvarint("sum")
		nc := d.Count("classic count")
		for i := range nc {
			c := d.Uvarint("classic bucket")
			if !reset && i < len(s.classic) {
				s.classic[i] = c
			}
		}
		if d.Byte("native flag") == 1 {
			count := d.Uvarint("native count")
			zero := d.Uvarint("native zero count")
			sum := math.Float64frombits(d.Uint64BE("native sum"))
			off := int32(d.Varint("native offset"))
			nn := d.Count("native bucket count")
			counts := make([]uint64, nn)
			for i := range counts {
				counts[i] = d.Uvarint("native bucket")
			}
			if !reset && s.native != nil {
				s.native.Restore(count, zero, sum, off, counts)
			}
		}
		if d.Err() != nil {
			return 0, corrupt("%v", d.Err())
		}
		if reset {
			s.count, s.failed, s.sumHi, s.sumLo = 0, 0, 0, 0
		}
		t.series[key] = s
		t.nextRef = max(t.nextRef, ref+1)
	}
	if magic == checkpointMagic {
		ns := d.Count("stream seq count")
		for range ns {
			w := d.String("stream writer")
			sq := streamSeq{seq: d.Uvarint("stream seq"), lastUsed: d.Varint("stream last use")}
			if d.Err() != nil {
				break
			}
			t.seqs[w] = sq
		}
	}
	if d.Err() != nil {
		return 0, corrupt("%v", d.Err())
	}
	t.logger.Info("checkpoint loaded", "series", len(t.series), "stream_writers", len(t.seqs), "first_segment", first)
	return first, nil
}
