package raw

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Sampling of the raw tier. At sampling level k the raw tier keeps the
// samples of a trace with probability p = 2^-k and gives each kept sample
// the weight 2^k: the number of spans it stands for. Summaries, counts and
// quantiles that honour weights stay unbiased estimates of the unsampled
// data, and powers of two keep the weights integers.
//
// The decision is OpenTelemetry's consistent probability sampling: the
// randomness R is the low 56 bits of the trace id (random by W3C Trace
// Context Level 2), and a trace is kept when R ≥ T, with the rejection
// threshold T = (1-p)·2^56. So every span of a trace gets the same answer,
// on every node and for every service; a trace kept at level k is kept at
// every lower level; and the traces kept are the ones an OpenTelemetry
// sampler with the same probability keeps, so exemplars of the raw tier
// point at traces a consistently sampled trace store still holds.

// MaxSamplingLevel is the highest sampling level: 2^-20 keeps about one
// trace in a million, already too few for a per-series quantile; the bound
// keeps weights within 32 bits in the head.
const MaxSamplingLevel = 20

// randomnessMask selects the 56 random bits of a trace id read as a
// big-endian integer from its last 8 bytes.
const randomnessMask = 1<<56 - 1

// errSamplingLevel is returned for a level outside [0, MaxSamplingLevel].
var errSamplingLevel = errors.New("hopwatch/raw: sampling level out of range")

// samplingThreshold returns T for level k: a trace is kept when its
// randomness is at least T. Level 0 gives 0, which keeps everything.
func samplingThreshold(level int) uint64 {
	return 1<<56 - 1<<(56-level)
}

// traceRandomness returns R, the low 56 bits of a trace id.
func traceRandomness(id *[16]byte) uint64 {
	return binary.BigEndian.Uint64(id[8:]) & randomnessMask
}

// SampledIn tells whether sampling level level keeps the samples of the
// trace traceID. An all-zero trace id (which ingest refuses) is kept only
// at level 0.
func SampledIn(traceID [16]byte, level int) bool {
	return traceRandomness(&traceID) >= samplingThreshold(level)
}

func checkSamplingLevel(level int) error {
	if level < 0 || level > MaxSamplingLevel {
		return fmt.Errorf("%w: %d outside [0, %d]", errSamplingLevel, level, MaxSamplingLevel)
	}
	return nil
}
