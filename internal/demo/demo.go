package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"go.opentelemetry.io/collector/pdata/pcommon"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// Options configures Run.
type Options struct {
	Endpoint   string        // host:port of an OTLP/gRPC server, e.g. "127.0.0.1:4317"
	Rate       float64       // traces per second (default 200)
	Seed       int64         // PRNG seed (deterministic output for a given seed and clock)
	BatchEvery time.Duration // how often a batch is exported (default 200ms)
	Tenant     string        // if non-empty, sent as gRPC metadata "x-scope-orgid"
}

const (
	defaultRate       = 200
	defaultBatchEvery = 200 * time.Millisecond

	// A stalled server must not freeze the workload: later batches should
	// still be attempted once it recovers.
	exportTimeout = 5 * time.Second
	// While the server is down every tick fails; one line per interval is
	// enough to tell the user why no series appear.
	errorLogEvery = 5 * time.Second

	tenantHeader = "x-scope-orgid"
	scopeName    = "github.com/hopwatch/hopwatch/internal/demo"
)

// DefaultOptions returns the options `hopwatch demo` uses against a local server.
func DefaultOptions() Options {
	return Options{
		Endpoint:   "127.0.0.1:4317",
		Rate:       defaultRate,
		Seed:       1,
		BatchEvery: defaultBatchEvery,
	}
}

// Run exports batches until ctx is done, using ptraceotlp.NewGRPCClient over
// a plaintext gRPC connection to opts.Endpoint. Zero Rate or BatchEvery take
// their defaults. It returns nil once ctx is cancelled; export failures are
// logged to logger (nil discards) and do not stop the loop, because the demo
// server may still be starting when the first batches go out.
func Run(ctx context.Context, opts Options, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if opts.Endpoint == "" {
		return errors.New("demo: empty endpoint")
	}
	if opts.Rate == 0 {
		opts.Rate = defaultRate
	}
	if opts.BatchEvery == 0 {
		opts.BatchEvery = defaultBatchEvery
	}
	if opts.Rate < 0 || math.IsNaN(opts.Rate) || math.IsInf(opts.Rate, 0) {
		return fmt.Errorf("demo: invalid rate %v", opts.Rate)
	}
	if opts.BatchEvery < 0 {
		return fmt.Errorf("demo: invalid batch interval %v", opts.BatchEvery)
	}

	conn, err := grpc.NewClient(opts.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("demo: dial %s: %w", opts.Endpoint, err)
	}
	defer conn.Close()
	client := ptraceotlp.NewGRPCClient(conn)

	if opts.Tenant != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, tenantHeader, opts.Tenant)
	}

	gen := NewGenerator(opts.Seed)
	// Spread trace end times over one interval so consecutive batches
	// form a continuous stream instead of bursts at each tick.
	gen.window = opts.BatchEvery
	perBatch := opts.Rate * opts.BatchEvery.Seconds()
	var carry float64 // keeps fractional rates (e.g. 1/s at 200ms) accurate over time

	var (
		failures   int
		lastLogged time.Time
	)
	export := func(now time.Time) {
		carry += perBatch
		n := int(carry)
		carry -= float64(n)
		if n == 0 {
			return
		}
		td := gen.Traces(now, n)
		ectx, cancel := context.WithTimeout(ctx, exportTimeout)
		resp, err := client.Export(ectx, ptraceotlp.NewExportRequestFromTraces(td))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			if failures == 1 || now.Sub(lastLogged) >= errorLogEvery {
				logger.Warn("demo: export failed", "endpoint", opts.Endpoint,
					"consecutive_failures", failures, "err", err)
				lastLogged = now
			}
			return
		}
		if failures > 0 {
			logger.Info("demo: export recovered", "endpoint", opts.Endpoint, "failed_batches", failures)
			failures = 0
		}
		if ps := resp.PartialSuccess(); ps.RejectedSpans() > 0 {
			logger.Warn("demo: server rejected spans", "rejected", ps.RejectedSpans(), "message", ps.ErrorMessage())
		}
	}

	ticker := time.NewTicker(opts.BatchEvery)
	defer ticker.Stop()
	// Send right away rather than after the first tick so a newcomer sees
	// data as early as possible.
	export(time.Now())
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-ticker.C:
			export(now)
		}
	}
}

// Service indices into Generator.services. The order is also the order of
// resources in the output, which keeps output byte-stable for a seed.
const (
	svcFrontend = iota
	svcGateway
	svcProcessor
	svcIndexer
	svcStore
	numServices
)

const instancesPerService = 2

type service struct {
	name      string
	shortName string // instance ids read "gateway-1" rather than "api-gateway-1"
}

// Generator builds synthetic traces. Output is a pure function of the seed,
// the sequence of calls and the `now` values passed in. A Generator is not
// safe for concurrent use.
type Generator struct {
	rng      *rand.Rand
	window   time.Duration // trace end times are spread over [now-window, now]
	services [numServices]service
	spans    []spanSpec // reused across traces to avoid per-trace allocation
}

// NewGenerator returns a Generator whose output is determined by seed.
func NewGenerator(seed int64) *Generator {
	return &Generator{
		// The second PCG word is fixed so a single int64 seed suffices.
		rng:    rand.New(rand.NewPCG(uint64(seed), 0x9e3779b97f4a7c15)),
		window: defaultBatchEvery,
		services: [numServices]service{
			svcFrontend:  {"web-frontend", "frontend"},
			svcGateway:   {"api-gateway", "gateway"},
			svcProcessor: {"log-processor", "processor"},
			svcIndexer:   {"log-indexer", "indexer"},
			svcStore:     {"log-store", "store"},
		},
	}
}

type attr struct {
	key string
	val any // string or int64
}

type event struct {
	name string
	at   int64 // ns offset from trace start
}

type spanSpec struct {
	svc, inst  int
	name       string
	kind       ptrace.SpanKind
	id         pcommon.SpanID
	parent     int   // index into the trace's spans; -1 for the root
	start, end int64 // ns offsets from trace start
	attrs      []attr
	events     []event
	errMsg     string
}

// Failure modes, chosen so that errors show up on different hops and on both
// sides of the queue.
const (
	failNone = iota
	failStore
	failPublish
	failProcessor
)

// Traces returns n synthetic traces ending at or before now, as one ptrace.Traces.
func (g *Generator) Traces(now time.Time, n int) ptrace.Traces {
	td := ptrace.NewTraces()
	// One ResourceSpans per service instance, created up front in fixed
	// order; unused ones are dropped at the end.
	var buckets [numServices][instancesPerService]ptrace.SpanSlice
	for s := range numServices {
		for i := range instancesPerService {
			rs := td.ResourceSpans().AppendEmpty()
			g.fillResource(rs.Resource(), s, i)
			ss := rs.ScopeSpans().AppendEmpty()
			ss.Scope().SetName(scopeName)
			buckets[s][i] = ss.Spans()
		}
	}

	nowNs := now.UnixNano()
	for range n {
		spans := g.buildTrace()
		var last int64
		for _, sp := range spans {
			last = max(last, sp.end)
		}
		var jitter int64
		if g.window > 0 {
			jitter = g.rng.Int64N(int64(g.window))
		}
		base := nowNs - jitter - last
		traceID := g.traceID()
		for _, sp := range spans {
			g.emit(buckets[sp.svc][sp.inst].AppendEmpty(), sp, spans, traceID, base)
		}
	}

	td.ResourceSpans().RemoveIf(func(rs ptrace.ResourceSpans) bool {
		return rs.ScopeSpans().At(0).Spans().Len() == 0
	})
	return td
}

func (g *Generator) fillResource(r pcommon.Resource, svc, inst int) {
	s := g.services[svc]
	a := r.Attributes()
	a.PutStr("service.name", s.name)
	a.PutStr("service.instance.id", fmt.Sprintf("%s-%d", s.shortName, inst+1))
	// Instances are packed onto three nodes so host-level grouping has
	// more than one service per host.
	a.PutStr("host.name", fmt.Sprintf("demo-node-%d", (svc*instancesPerService+inst)%3+1))
	a.PutStr("deployment.environment.name", "demo")
}

func (g *Generator) emit(dst ptrace.Span, sp spanSpec, spans []spanSpec, traceID pcommon.TraceID, base int64) {
	dst.SetTraceID(traceID)
	dst.SetSpanID(sp.id)
	if sp.parent >= 0 {
		dst.SetParentSpanID(spans[sp.parent].id)
	}
	dst.SetName(sp.name)
	dst.SetKind(sp.kind)
	dst.SetStartTimestamp(pcommon.Timestamp(base + sp.start))
	dst.SetEndTimestamp(pcommon.Timestamp(base + sp.end))
	attrs := dst.Attributes()
	for _, a := range sp.attrs {
		switch v := a.val.(type) {
		case string:
			attrs.PutStr(a.key, v)
		case int64:
			attrs.PutInt(a.key, v)
		}
	}
	for _, e := range sp.events {
		ev := dst.Events().AppendEmpty()
		ev.SetName(e.name)
		ev.SetTimestamp(pcommon.Timestamp(base + e.at))
	}
	if sp.errMsg != "" {
		dst.Status().SetCode(ptrace.StatusCodeError)
		dst.Status().SetMessage(sp.errMsg)
	}
}

const (
	us = int64(time.Microsecond)
	ms = int64(time.Millisecond)
)

// lognormal draws a duration in ns with the given median and log-space sigma,
// floored at 1µs so no span is ever zero-length.
func (g *Generator) lognormal(median int64, sigma float64) int64 {
	return max(int64(float64(median)*math.Exp(sigma*g.rng.NormFloat64())), us)
}

// netDelay is one network traversal between services.
func (g *Generator) netDelay() int64 { return g.lognormal(300*us, 0.4) }

// queueWait models time a message sits in Kafka. A plain lognormal under-
// represents consumer-lag incidents, so a small share of messages get a
// Pareto-scaled stall on top; the cap keeps a trace from spanning minutes.
func (g *Generator) queueWait() int64 {
	w := g.lognormal(5*ms, 0.8)
	if g.rng.Float64() < 0.03 {
		const alpha = 1.5
		w = int64(float64(w) * math.Pow(1-g.rng.Float64(), -1/alpha) * 4)
	}
	return min(w, 5*int64(time.Second))
}

func (g *Generator) instance() int { return g.rng.IntN(instancesPerService) }

func (g *Generator) spanID() pcommon.SpanID {
	var id pcommon.SpanID
	for id.IsEmpty() { // an all-zero id is invalid in OTLP
		v := g.rng.Uint64()
		for i := range id {
			id[i] = byte(v >> (8 * i))
		}
	}
	return id
}

func (g *Generator) traceID() pcommon.TraceID {
	var id pcommon.TraceID
	for id.IsEmpty() {
		hi, lo := g.rng.Uint64(), g.rng.Uint64()
		for i := range 8 {
			id[i] = byte(hi >> (8 * i))
			id[8+i] = byte(lo >> (8 * i))
		}
	}
	return id
}

func (g *Generator) add(sp spanSpec) int {
	sp.id = g.spanID()
	g.spans = append(g.spans, sp)
	return len(g.spans) - 1
}

// buildTrace lays out one request with times relative to the frontend's
// request start. Enclosing spans are finished only after their children so
// every child lies inside its parent.
func (g *Generator) buildTrace() []spanSpec {
	g.spans = g.spans[:0]

	failure := failNone
	if g.rng.Float64() < 0.01 {
		switch r := g.rng.Float64(); {
		case r < 0.5:
			failure = failStore
		case r < 0.8:
			failure = failPublish
		default:
			failure = failProcessor
		}
	}

	fe := g.add(spanSpec{
		svc: svcFrontend, inst: g.instance(), name: "POST /api/logs", kind: ptrace.SpanKindClient,
		parent: -1, start: 0,
		attrs: []attr{{"http.request.method", "POST"}, {"url.path", "/api/logs"}, {"server.address", "api-gateway"}},
	})

	gwOverhead := g.lognormal(1*ms, 0.5)
	gwPre := int64(float64(gwOverhead) * (0.3 + 0.4*g.rng.Float64()))
	gw := g.add(spanSpec{
		svc: svcGateway, inst: g.instance(), name: "POST /api/logs", kind: ptrace.SpanKindServer,
		parent: fe, start: g.spans[fe].start + g.netDelay(),
		attrs: []attr{{"http.request.method", "POST"}, {"http.route", "/api/logs"}},
	})
	gwc := g.add(spanSpec{
		svc: svcGateway, inst: g.spans[gw].inst, name: "ingest.Submit", kind: ptrace.SpanKindClient,
		parent: gw, start: g.spans[gw].start + gwPre,
		attrs: []attr{{"rpc.system", "grpc"}, {"rpc.service", "ingest"}, {"rpc.method", "Submit"}},
	})

	work := g.lognormal(2*ms, 0.5)
	pre := int64(float64(work) * 0.6)
	post := work - pre
	pr := g.add(spanSpec{
		svc: svcProcessor, inst: g.instance(), name: "ingest.Submit", kind: ptrace.SpanKindServer,
		parent: gwc, start: g.spans[gwc].start + g.netDelay(),
		attrs: []attr{{"rpc.system", "grpc"}, {"rpc.service", "ingest"}, {"rpc.method", "Submit"}},
	})

	var failing int
	prEnd := g.spans[pr].start + pre
	if failure == failProcessor {
		failing = pr
		g.spans[pr].errMsg = "processor: malformed log batch"
	} else {
		pub := g.add(spanSpec{
			svc: svcProcessor, inst: g.spans[pr].inst, name: "logs publish", kind: ptrace.SpanKindProducer,
			parent: pr, start: prEnd,
			attrs: []attr{
				{"messaging.system", "kafka"}, {"messaging.destination.name", "logs"},
				{"messaging.operation.type", "send"},
			},
		})
		pubDur := g.lognormal(600*us, 0.5)
		if failure == failPublish {
			// A broker outage shows up as the client waiting out its timeout.
			pubDur = g.lognormal(30*ms, 0.3)
		}
		p := &g.spans[pub]
		p.end = p.start + pubDur
		p.events = []event{{"enqueue", p.start + int64(float64(pubDur)*(0.5+0.4*g.rng.Float64()))}}
		prEnd = p.end + post

		if failure == failPublish {
			failing = pub
			p.errMsg = "kafka: broker not available"
		} else {
			failing = g.buildConsumer(pub, failure == failStore)
		}
	}

	g.spans[pr].end = prEnd
	g.spans[gwc].end = prEnd + g.netDelay()
	g.spans[gw].end = g.spans[gwc].end + (gwOverhead - gwPre)
	g.spans[fe].end = g.spans[gw].end + g.netDelay()

	status := int64(200)
	if failure != failNone {
		g.propagateError(failing)
		if failure != failStore { // the store fails after the HTTP response went out
			status = 500
		}
	}
	g.spans[fe].attrs = append(g.spans[fe].attrs, attr{"http.response.status_code", status})
	g.spans[gw].attrs = append(g.spans[gw].attrs, attr{"http.response.status_code", status})

	return g.spans
}

// buildConsumer adds the asynchronous half of the trace below the producer
// span. It returns the store span, the only place this half fails.
func (g *Generator) buildConsumer(producer int, storeFails bool) int {
	start := g.spans[producer].end + g.queueWait()
	ix := g.add(spanSpec{
		svc: svcIndexer, inst: g.instance(), name: "logs process", kind: ptrace.SpanKindConsumer,
		parent: producer, start: start,
		attrs: []attr{
			{"messaging.system", "kafka"}, {"messaging.destination.name", "logs"},
			{"messaging.operation.type", "process"},
		},
	})
	arrive := start + g.lognormal(100*us, 0.5)
	ins := g.add(spanSpec{
		svc: svcIndexer, inst: g.spans[ix].inst, name: "INSERT logs", kind: ptrace.SpanKindClient,
		parent: ix, start: arrive + g.lognormal(1*ms, 0.5),
		attrs: []attr{{"db.system", "clickhouse"}, {"db.operation.name", "INSERT"}, {"db.collection.name", "logs"}},
	})
	dur := g.lognormal(4*ms, 0.6)
	if storeFails {
		// Timeouts are slow by definition; keep them visibly in the tail.
		dur = g.lognormal(250*ms, 0.2)
	}
	st := g.add(spanSpec{
		svc: svcStore, inst: g.instance(), name: "InsertBatch", kind: ptrace.SpanKindServer,
		parent: ins, start: g.spans[ins].start + g.netDelay(),
	})
	g.spans[st].end = g.spans[st].start + dur
	if storeFails {
		g.spans[st].errMsg = "clickhouse: timeout"
	}
	g.spans[ins].end = g.spans[st].end + g.netDelay()
	end := g.spans[ins].end + g.lognormal(300*us, 0.5)
	g.spans[ix].end = end
	g.spans[ix].events = []event{{"dequeue", start}, {"arrive", arrive}, {"done", end}}
	return st
}

// propagateError marks the failing span and every ancestor that waited on
// it, so per-hop error rates charge the failure to each hop that observed it.
// It stops at the queue: the producer finished before the consumer ran, so a
// real tracer could never have recorded the consumer's failure there.
func (g *Generator) propagateError(failing int) {
	msg := g.spans[failing].errMsg
	for i := failing; i >= 0; i = g.spans[i].parent {
		g.spans[i].errMsg = msg
		if g.spans[i].kind == ptrace.SpanKindConsumer {
			return
		}
	}
}
