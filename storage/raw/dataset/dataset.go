package dataset

import (
	"fmt"
	"math"
	"math/rand/v2"
)

// Sample is one raw latency sample: when it happened and how long it took,
// both in nanoseconds.
type Sample struct {
	T       int64 // Unix ns
	Latency int64 // ns
}

// Name identifies a dataset.
type Name string

// The datasets.
const (
	// D1: Poisson arrivals at 10,000/s, lognormal latencies (median 2 ms,
	// σ 0.8), nanosecond precision.
	D1 Name = "D1"
	// D2: D1 quantized to microseconds in both columns.
	D2 Name = "D2"
	// D3: bimodal latencies (90% median 300 µs, 10% median 40 ms, σ 0.5
	// each) with on/off bursts (200 ms at 20,000/s, then 800 ms at 200/s).
	D3 Name = "D3"
	// D4: regular 1 kHz arrivals with uniform ±2 µs jitter around the
	// grid, latencies as D1.
	D4 Name = "D4"
)

// All lists the datasets in order.
var All = []Name{D1, D2, D3, D4}

// epoch is where every dataset starts: a fixed time, so that outputs are
// identical across runs.
const epoch = int64(1_790_000_000_000_000_000)

// Generate returns n samples of the dataset, deterministic for a seed.
func Generate(name Name, n int, seed uint64) ([]Sample, error) {
	rng := rand.New(rand.NewPCG(seed, uint64(len(name))*0x9e3779b97f4a7c15))
	out := make([]Sample, n)
	// Time accumulates in integers: a float64 near 1.8e18 ns only
	// resolves 256 ns, which would quantize the "nanosecond" datasets.
	t := epoch
	lognormal := func(median, sigma float64) int64 {
		return int64(math.Round(median * math.Exp(sigma*rng.NormFloat64())))
	}
	switch name {
	case D1, D2:
		for i := range out {
			t += int64(rng.ExpFloat64() * 1e5) // mean gap 100 µs
			out[i] = Sample{T: t, Latency: lognormal(2e6, 0.8)}
		}
		if name == D2 {
			for i := range out {
				out[i].T -= out[i].T % 1000
				out[i].Latency -= out[i].Latency % 1000
			}
		}
	case D3:
		on, phaseEnd := true, t+200e6
		for i := range out {
			for {
				rate := 200.0
				if on {
					rate = 20_000
				}
				next := t + int64(rng.ExpFloat64()*1e9/rate)
				if next < phaseEnd {
					t = next
					break
				}
				// Memoryless: restart the arrival clock at the phase change.
				t = phaseEnd
				on = !on
				if on {
					phaseEnd = t + 200e6
				} else {
					phaseEnd = t + 800e6
				}
			}
			lat := lognormal(300e3, 0.5)
			if rng.Float64() < 0.1 {
				lat = lognormal(40e6, 0.5)
			}
			out[i] = Sample{T: t, Latency: lat}
		}
	case D4:
		for i := range out {
			jitter := rng.Int64N(4001) - 2000
			out[i] = Sample{T: epoch + int64(i)*1e6 + jitter, Latency: lognormal(2e6, 0.8)}
		}
	default:
		return nil, fmt.Errorf("hopwatch/dataset: unknown dataset %q", name)
	}
	return out, nil
}

// EntropyBound returns the entropy of the generating distribution at the
// stored precision, in bits per sample: the fewest bits any lossless code
// can spend on average. See docs/storage-format.md for the formulas.
func EntropyBound(name Name) float64 {
	const ln2 = math.Ln2
	// Exponential gaps with mean m units: h = log2(e·m).
	expGap := func(mean float64) float64 { return math.Log2(math.E * mean) }
	// Lognormal with median M units and shape σ: h = (ln M + 1/2 + ln(σ√(2π))) / ln 2.
	logn := func(median, sigma float64) float64 {
		return (math.Log(median) + 0.5 + math.Log(sigma*math.Sqrt(2*math.Pi))) / ln2
	}
	switch name {
	case D1:
		return expGap(1e5) + logn(2e6, 0.8)
	case D2:
		return expGap(100) + logn(2e3, 0.8)
	case D3:
		return d3ArrivalEntropy() + mixtureEntropy()
	case D4:
		return math.Log2(4001) + logn(2e6, 0.8)
	}
	return math.NaN()
}

// d3ArrivalEntropy is the gap entropy of D3's bursts: a sample arrives in an
// on phase with probability 20000·0.2/(20000·0.2+200·0.8); knowing the phase,
// gaps are exponential. The phase is nearly determined by the gap, so this
// is close to the bound (it omits the few bits per phase change).
func d3ArrivalEntropy() float64 {
	onShare := 20000 * 0.2 / (20000*0.2 + 200*0.8)
	return onShare*math.Log2(math.E*1e9/20000) + (1-onShare)*math.Log2(math.E*1e9/200)
}

// mixtureEntropy integrates −p log2 p of D3's latency mixture numerically
// (in ns, the stored precision).
func mixtureEntropy() float64 {
	pdf := func(x float64) float64 {
		ln := func(median, sigma float64) float64 {
			z := (math.Log(x) - math.Log(median)) / sigma
			return math.Exp(-z*z/2) / (x * sigma * math.Sqrt(2*math.Pi))
		}
		return 0.9*ln(300e3, 0.5) + 0.1*ln(40e6, 0.5)
	}
	// Integrate in log space: x = e^u, dx = x du.
	var h float64
	const du = 1e-3
	for u := math.Log(1e3); u < math.Log(1e10); u += du {
		x := math.Exp(u)
		p := pdf(x)
		if p > 0 {
			h -= p * math.Log2(p) * x * du
		}
	}
	return h
}
