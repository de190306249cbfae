package agg

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/wlog"
)

// replay re-applies the WAL segments from first on to the state loaded from
// the checkpoint. A corrupt or torn tail is truncated at the last good
// record, as after a crash mid-write; it is not fatal.
func (t *tenantStore) replay(first int) error {
	walDir := t.wal.Dir()
	lo, hi, err := wlog.Segments(walDir)
	if err != nil {
		return fmt.Errorf("hopwatch/agg: tenant %s: list WAL segments: %w", t.id, err)
	}
	lo = max(lo, first)
	if hi < lo {
		return nil
	}
	// before[i] is the size of the segments before segment lo+i, so that
	// progress is where the reader is. The reader must read the segment
	// reader itself, unwrapped: only then do its errors name the segment
	// and offset that Repair needs.
	var total int64
	before := make([]int64, hi-lo+1)
	for i := lo; i <= hi; i++ {
		before[i-lo] = total
		if fi, err := os.Stat(wlog.SegmentName(walDir, i)); err == nil {
			total += fi.Size()
		}
	}
	rc, err := wlog.NewSegmentsRangeReader(wlog.SegmentRange{Dir: walDir, First: lo, Last: hi})
	if err != nil {
		return fmt.Errorf("hopwatch/agg: tenant %s: open WAL for replay: %w", t.id, err)
	}
	defer rc.Close()
	r := wlog.NewReader(rc)
	bytesRead := func() int64 {
		if seg := r.Segment(); seg >= lo && seg <= hi {
			return before[seg-lo] + r.Offset()
		}
		return 0
	}

	byRef := make(map[uint64]*series, len(t.series))
	for _, s := range t.series {
		byRef[s.ref] = s
	}
	var (
		sb                                 = labels.NewScratchBuilder(8)
		entries                            []seriesEntry
		samples                            []walSample
		refs                               []uint64
		records, nsamples, unknown, broken int
		start                              = time.Now()
		lastLog                            = start
		lay                                = &t.store.layout
	)
	progress := func(msg string) {
		elapsed := time.Since(start).Seconds()
		pct := 100.0
		if total > 0 {
			pct = 100 * float64(bytesRead()) / float64(total)
		}
		t.logger.Info(msg, "records", records, "samples", nsamples, "percent", fmt.Sprintf("%.1f", min(pct, 100)),
			"records_per_second", int(float64(records)/max(elapsed, 1e-9)), "bytes", bytesRead(), "total_bytes", total)
	}
	t.logger.Info("replaying WAL", "segments", hi-lo+1, "first_segment", lo, "total_bytes", total)
	for r.Next() {
		rec := r.Record()
		records++
		if len(rec) == 0 {
			broken++
			continue
		}
		var err error
		switch rec[0] {
		case recSeries:
			entries, err = decodeSeriesRecord(rec, &sb, entries[:0])
			for _, e := range entries {
				if old := t.series[e.key]; old != nil && old.ref == e.ref {
					// Logged again after a batch applied without its
					// record (Prepared.Apply): the series is the one the
					// checkpoint or an earlier record holds.
					byRef[e.ref] = old
					continue
				}
				s := lay.newSeries(e.ref, e.key, e.lset, e.family)
				t.series[e.key] = s
				byRef[e.ref] = s
				t.nextRef = max(t.nextRef, e.ref+1)
			}
		case recSamples, recSamplesSeq:
			if rec[0] == recSamples {
				samples, err = decodeSamplesRecord(rec, samples[:0])
			} else {
				var (
					writer string
					seq    uint64
				)
				samples, writer, seq, err = decodeSamplesSeqRecord(rec, samples[:0])
				if err == nil && seq > t.seqs[writer].seq {
					t.seqs[writer] = streamSeq{seq: seq, lastUsed: time.Now().Unix()}
				}
			}
			for i := range samples {
				smp := &samples[i]
				s := byRef[smp.ref]
				if s == nil {
					unknown++
					continue
				}
				var tid *[16]byte
				if smp.hasTrace {
					tid = &smp.traceID
				}
				s.observe(lay, smp.duration, smp.start+smp.duration, tid, smp.failed)
				nsamples++
			}
		case recCreated:
			refs, err = decodeCreatedRecord(rec, refs[:0])
			for _, ref := range refs {
				if s := byRef[ref]; s != nil {
					s.created = true
				}
			}
		default:
			err = fmt.Errorf("%w: unknown type %d", errCorruptRecord, rec[0])
		}
		if err != nil {
			// The record passed the WAL's checksum, so this is not a torn
			// write; keep what decoded and go on rather than refuse to start.
			broken++
			t.logger.Warn("skipping undecodable WAL record", "segment", r.Segment(), "offset", r.Offset(), "err", err)
		}
		if time.Since(lastLog) >= time.Second {
			lastLog = time.Now()
			progress("replaying WAL")
		}
	}
	if err := r.Err(); err != nil {
		var cerr *wlog.CorruptionErr
		if !errors.As(err, &cerr) {
			return fmt.Errorf("hopwatch/agg: tenant %s: read WAL: %w", t.id, err)
		}
		t.logger.Warn("WAL tail is corrupt; truncating at the last good record", "segment", cerr.Segment, "offset", cerr.Offset, "err", err)
		t.store.metrics.walRepairs.Inc()
		if err := t.wal.Repair(err); err != nil {
			return fmt.Errorf("hopwatch/agg: tenant %s: repair WAL: %w", t.id, err)
		}
	}
	if unknown > 0 || broken > 0 {
		t.logger.Warn("WAL replay skipped data", "samples_of_unknown_series", unknown, "undecodable_records", broken)
	}
	progress("WAL replay done")
	return nil
}

// checkpointPath is where a tenant's aggregate state is written.
func (t *tenantStore) checkpointPath() string { return filepath.Join(t.dir, "checkpoint") }
