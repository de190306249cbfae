package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"go.opentelemetry.io/collector/pdata/ptrace"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"

	"github.com/hopwatch/hopwatch/ingest/watermark"
	"github.com/hopwatch/hopwatch/internal/tenant"
	"github.com/hopwatch/hopwatch/sample"
)

// Appender stores accepted samples. Append returns only once the batch is
// durable: the receiver acknowledges the request when Append returns nil.
type Appender interface {
	Append(ctx context.Context, tenant string, b *sample.Batch) error
}

// Options configures a Receiver.
type Options struct {
	// MultitenancyEnabled takes the tenant from X-Scope-OrgID.
	MultitenancyEnabled bool
	// MaxRequestBytes bounds a request body after decompression.
	MaxRequestBytes int
	// Dimensions are attribute names added as labels to every series.
	Dimensions []string
	// Graph configures service graph pairing.
	Graph GraphOptions
	// Stages configures stage durations from span events.
	Stages Stages
	// MaxLabelValueLength refuses spans whose service, name or dimension
	// values are longer (Mimir's label_value_too_long).
	MaxLabelValueLength int
	// MaxDimensions bounds the attributes promoted to labels: each one
	// multiplies the series a span name can make.
	MaxDimensions int
	// Watermark configures writer tracking.
	Watermark watermark.Options
	// StreamWindow is the credit of a streaming ingest client: the batches
	// it may have sent and not yet had acknowledged.
	StreamWindow int
	// GRPC bounds the connections of the gRPC server hosting the receiver.
	GRPC GRPCLimits
	// CreationGracePeriod refuses spans (records) that end later than the
	// wall clock plus it (Mimir's creation_grace_period): a sender whose
	// clock runs ahead would otherwise date data into the future. 0: no
	// bound.
	CreationGracePeriod time.Duration
	// PastGracePeriod refuses spans (records) that ended longer ago than
	// it: the raw tier's retention, which would delete them at once. 0: no
	// bound.
	PastGracePeriod time.Duration
}

// DefaultOptions returns the options hopwatch runs with when none are given.
func DefaultOptions() Options {
	return Options{MaxRequestBytes: 16 << 20, Graph: DefaultGraphOptions(), Stages: DefaultStages(),
		MaxLabelValueLength: DefaultMaxLabelValueLength, MaxDimensions: 10, Watermark: watermark.DefaultOptions(), StreamWindow: 16,
		CreationGracePeriod: 10 * time.Minute,
		GRPC:                GRPCLimits{ConnectionTimeout: 10 * time.Second, MaxConnectionIdle: 10 * time.Minute, MaxConcurrentStreams: 1000}}
}

// GRPCLimits bound what one client can hold of the gRPC server: its
// messages are bounded by MaxRequestBytes.
type GRPCLimits struct {
	// ConnectionTimeout bounds a new connection's TLS and HTTP/2
	// handshakes.
	ConnectionTimeout time.Duration
	// MaxConnectionIdle closes a connection without an open call for this
	// long.
	MaxConnectionIdle time.Duration
	// MaxConcurrentStreams bounds the calls (streams) one connection may
	// have open.
	MaxConcurrentStreams int
}

// Validate reports every problem with the options.
func (o Options) Validate() error {
	var errs []error
	if o.MaxRequestBytes <= 0 {
		errs = append(errs, fmt.Errorf("invalid MaxRequestBytes %d: must be positive", o.MaxRequestBytes))
	}
	if o.Graph.Wait <= 0 {
		errs = append(errs, fmt.Errorf("invalid Graph.Wait %s: must be positive", o.Graph.Wait))
	}
	if o.Graph.MaxItems <= 0 {
		errs = append(errs, fmt.Errorf("invalid Graph.MaxItems %d: must be positive", o.Graph.MaxItems))
	}
	if o.Graph.MaxHeldQueueHops <= 0 {
		errs = append(errs, fmt.Errorf("invalid Graph.MaxHeldQueueHops %d: must be positive", o.Graph.MaxHeldQueueHops))
	}
	if o.StreamWindow <= 0 || o.StreamWindow > 1<<16 {
		errs = append(errs, fmt.Errorf("invalid StreamWindow %d: must be 1 to 65536 batches", o.StreamWindow))
	}
	if err := o.Watermark.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.GRPC.ConnectionTimeout <= 0 || o.GRPC.MaxConnectionIdle <= 0 {
		errs = append(errs, fmt.Errorf("invalid GRPC.ConnectionTimeout %s or GRPC.MaxConnectionIdle %s: must be positive", o.GRPC.ConnectionTimeout, o.GRPC.MaxConnectionIdle))
	}
	if o.GRPC.MaxConcurrentStreams <= 0 || o.GRPC.MaxConcurrentStreams > math.MaxUint32 {
		errs = append(errs, fmt.Errorf("invalid GRPC.MaxConcurrentStreams %d: must be positive", o.GRPC.MaxConcurrentStreams))
	}
	if o.CreationGracePeriod < 0 {
		errs = append(errs, fmt.Errorf("invalid CreationGracePeriod %s: must not be negative", o.CreationGracePeriod))
	}
	if o.PastGracePeriod < 0 {
		errs = append(errs, fmt.Errorf("invalid PastGracePeriod %s: must not be negative", o.PastGracePeriod))
	}
	if o.MaxLabelValueLength <= 0 {
		errs = append(errs, fmt.Errorf("invalid MaxLabelValueLength %d: must be positive", o.MaxLabelValueLength))
	}
	if len(o.Dimensions) > o.MaxDimensions {
		errs = append(errs, fmt.Errorf("invalid Dimensions: %d attributes promoted to labels, more than MaxDimensions (%d); every one multiplies the series", len(o.Dimensions), o.MaxDimensions))
	}
	seen := map[string]string{}
	for _, a := range o.Dimensions {
		if a == "" {
			errs = append(errs, errors.New("invalid Dimensions: empty attribute name"))
			continue
		}
		if len(a) > maxLabelNameLength {
			errs = append(errs, fmt.Errorf("invalid Dimensions: attribute name of %d bytes is longer than the label name limit of %d", len(a), maxLabelNameLength))
		}
		l := NewDimension(a).Label
		if prev, ok := seen[l]; ok {
			errs = append(errs, fmt.Errorf("invalid Dimensions: attributes %q and %q both become label %q", prev, a, l))
		}
		seen[l] = a
	}
	return errors.Join(errs...)
}

// maxLabelNameLength is Mimir's and Tempo's limit on a label name.
const maxLabelNameLength = 1024

// Protocols, as metric label values.
const (
	protoGRPC   = "grpc"
	protoHTTP   = "http"
	protoStream = "stream" // hopwatch.v1.IngestService
)

// Reasons a whole request is refused, as metric label values.
const (
	refusedMalformed   = "malformed"
	refusedMediaType   = "unsupported_media_type"
	refusedEncoding    = "unsupported_encoding"
	refusedTooLarge    = "too_large"
	refusedTenant      = "invalid_tenant"
	refusedMethod      = "method_not_allowed"
	refusedUnavailable = "unavailable"
	refusedWriter      = "invalid_writer"
	refusedCredit      = "credit_exceeded"
	refusedTimeout     = "timeout"
)

// WriterHeader names the writer of a request, for the watermark: an HTTP
// header, or gRPC metadata (lower case there). Without it, each resource's
// service.instance.id names its writer.
const WriterHeader = "X-Hopwatch-Writer"

// writerMetadata is WriterHeader as gRPC metadata.
const writerMetadata = "x-hopwatch-writer"

// maxWriterLength bounds a writer id.
const maxWriterLength = 256

// writerFromHeader checks a writer id taken from a header.
func writerFromHeader(id string) error {
	if len(id) > maxWriterLength {
		return fmt.Errorf("%s is %d bytes, longer than the limit of %d", WriterHeader, len(id), maxWriterLength)
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%s is not valid UTF-8", WriterHeader)
	}
	return nil
}

// setTimeBounds bounds the span times d accepts by the wall clock now.
func (r *Receiver) setTimeBounds(d *Decoder, now time.Time) {
	var notAfter, notBefore int64
	if g := r.opts.CreationGracePeriod; g > 0 {
		notAfter = now.Add(g).UnixNano()
	}
	if g := r.opts.PastGracePeriod; g > 0 {
		notBefore = now.Add(-g).UnixNano()
	}
	d.SetTimeBounds(notAfter, notBefore)
}

// reasonBadEventTime counts, in hopwatch_discarded_samples_total, the stage
// events ignored for a time that is unset, out of int64 nanoseconds or out
// of the creation and past grace periods.
const reasonBadEventTime = "invalid_event_time"

// countBadEvents counts the stage events d ignored in its last request.
func (r *Receiver) countBadEvents(tenantID string, d *Decoder) {
	if d.badEvents > 0 {
		r.metrics.discarded.WithLabelValues(tenantID, reasonBadEventTime).Add(float64(d.badEvents))
	}
}

type receiverMetrics struct {
	requests         *prometheus.CounterVec // protocol
	requestsRefused  *prometheus.CounterVec // protocol, reason
	spansReceived    *prometheus.CounterVec // protocol
	spansAccepted    *prometheus.CounterVec // protocol
	spansRefused     *prometheus.CounterVec // protocol, reason
	discarded        *prometheus.CounterVec // tenant, reason
	lateSpans        *prometheus.CounterVec // tenant
	streamDuplicates prometheus.Counter
	writerChanges    *prometheus.CounterVec   // action, result
	duration         *prometheus.HistogramVec // protocol
	graphPending     prometheus.GaugeFunc
}

func newReceiverMetrics(reg prometheus.Registerer) *receiverMetrics {
	f := promauto.With(reg)
	return &receiverMetrics{
		requests: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_otlp_requests_total",
			Help: "OTLP export requests received.",
		}, []string{"protocol"}),
		requestsRefused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_otlp_requests_refused_total",
			Help: "OTLP export requests refused as a whole, by reason.",
		}, []string{"protocol", "reason"}),
		spansReceived: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_otlp_spans_received_total",
			Help: "Spans in decoded OTLP export requests.",
		}, []string{"protocol"}),
		spansAccepted: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_otlp_spans_accepted_total",
			Help: "Spans accepted and durably stored.",
		}, []string{"protocol"}),
		spansRefused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_otlp_spans_refused_total",
			Help: "Spans refused, by reason.",
		}, []string{"protocol", "reason"}),
		discarded: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_discarded_samples_total",
			Help: "Latency samples not stored, by tenant and reason.",
		}, []string{"tenant", "reason"}),
		writerChanges: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_writer_api_requests_total",
			Help: "Writer API calls (HTTP and gRPC) by action (list, exclude, include) and result (ok, unknown_writer, invalid_writer, invalid_tenant, unavailable).",
		}, []string{"action", "result"}),
		streamDuplicates: f.NewCounter(prometheus.CounterOpts{
			Name: "hopwatch_stream_duplicate_batches_total",
			Help: "Streamed batches acknowledged as duplicates (a writer's seq already applied) and not applied again.",
		}),
		lateSpans: f.NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_late_spans_total",
			Help: "Spans accepted that end at or before their tenant's watermark: their windows had been declared complete.",
		}, []string{"tenant"}),
		duration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "hopwatch_otlp_request_duration_seconds",
			Help:                            "Time from a decoded-enough OTLP export request to its answer: decoding, WAL writes and aggregation.",
			Buckets:                         prometheus.ExponentialBuckets(25e-6, 2, 16),
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"protocol"}),
	}
}

// Receiver accepts OTLP trace exports over gRPC and HTTP.
type Receiver struct {
	opts     Options
	app      Appender
	resolver tenant.Resolver
	dims     []Dimension
	metrics  *receiverMetrics
	pairs    *pairer
	marks    *watermark.Tracker
	// exclusions, when set, holds writer exclusions for the whole
	// cluster (see UseExclusionReplica).
	exclusions atomic.Pointer[exclusionsRef]
	streams    streamWriters
	// draining is closed when the node shuts down: streams end.
	draining  chan struct{}
	drainOnce sync.Once
	// grpcMetrics counts gRPC calls and messages per method, live.
	grpcMetrics *grpcprom.ServerMetrics
	// limits are the tenants' ingestion rate limits; set before serving.
	limits RateLimits
	logger *slog.Logger
	work   sync.Pool // *work
}

// work is the per-request scratch space, pooled so that steady-state
// requests reuse decoders, batches and request objects.
type work struct {
	dec   *Decoder
	batch sample.Batch
	id    []byte // a writer id being built
	undo  pairUndo
}

// New returns a receiver that appends to app.
func New(opts Options, app Appender, reg prometheus.Registerer, logger *slog.Logger) (*Receiver, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("hopwatch/ingest: invalid options: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Receiver{
		opts:     opts,
		app:      app,
		resolver: tenant.Resolver{Enabled: opts.MultitenancyEnabled},
		metrics:  newReceiverMetrics(reg),
		pairs:    newPairer(opts.Graph),
		streams:  streamWriters{writers: map[streamWriterKey]*streamWriter{}},
		draining: make(chan struct{}),
		logger:   logger,
	}
	var err error
	if r.marks, err = watermark.New(opts.Watermark, reg); err != nil {
		return nil, err
	}
	r.grpcMetrics = grpcprom.NewServerMetrics()
	if reg != nil {
		if err := reg.Register(r.grpcMetrics); err != nil {
			return nil, err
		}
	}
	r.metrics.graphPending = promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_service_graph_pending_spans",
		Help: "Client and server spans waiting for their peer to form a service graph edge.",
	}, func() float64 { return float64(r.pairs.pendingCount()) })
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{
		Name: "hopwatch_service_graph_held_queue_hops",
		Help: "Queue hops between two nodes held until a request between the nodes gives their clock offset (at most --service-graph.max-held-queue-hops per tenant).",
	}, func() float64 { return float64(r.pairs.heldTotal()) })
	for _, a := range opts.Dimensions {
		r.dims = append(r.dims, NewDimension(a))
	}
	r.work.New = func() any {
		return &work{dec: NewDecoder(r.dims).WithStages(opts.Stages).WithMaxLabelValueLength(opts.MaxLabelValueLength)}
	}
	return r, nil
}

// exportResult is the outcome of one export, independent of the transport.
type exportResult struct {
	rejected int64
	message  string
}

// errUnavailable wraps a storage failure: the client should retry.
type errUnavailable struct{ err error }

func (e errUnavailable) Error() string {
	return "hopwatch/ingest: storage unavailable: " + e.err.Error()
}
func (e errUnavailable) Unwrap() error { return e.err }

// decodeFunc fills a batch from a request body.
type decodeFunc func(d *Decoder, b *sample.Batch, ref *Refusals) (total int, err error)

// decodeProtobuf decodes a protobuf request with the zero-copy walker, and
// through pdata when an attribute needs it.
func decodeProtobuf(body []byte) decodeFunc {
	return func(d *Decoder, b *sample.Batch, ref *Refusals) (int, error) {
		total, err := d.DecodeProto(body, b, ref)
		if !errors.Is(err, errNeedsPdata) {
			return total, err
		}
		b.Reset()
		*ref = Refusals{}
		if err := checkValueDepth(body); err != nil {
			return 0, err
		}
		td, err := unmarshalProto(body)
		if err != nil {
			return 0, err
		}
		return d.Decode(td, b, ref), nil
	}
}

// decodeJSON decodes an OTLP/JSON request through pdata.
func decodeJSON(body []byte) decodeFunc {
	return func(d *Decoder, b *sample.Batch, ref *Refusals) (int, error) {
		if err := checkJSONDepth(body); err != nil {
			return 0, err
		}
		req := ptraceotlp.NewExportRequest()
		if err := req.UnmarshalJSON(body); err != nil {
			return 0, fmt.Errorf("malformed OTLP JSON ExportTraceServiceRequest (%d bytes): %w", len(body), err)
		}
		return d.Decode(req.Traces(), b, ref), nil
	}
}

// errMalformed wraps decoding errors: the request is refused as a whole.
type errMalformed struct{ err error }

func (e errMalformed) Error() string { return e.err.Error() }
func (e errMalformed) Unwrap() error { return e.err }

// Drain ends every open ingest stream after the batch it is applying, with
// UNAVAILABLE, and every stream opened later at once: call it when the node
// shuts down, before stopping the gRPC server gracefully.
func (r *Receiver) Drain() { r.drainOnce.Do(func() { close(r.draining) }) }

// Watermarks returns the receiver's writer tracker.
func (r *Receiver) Watermarks() *watermark.Tracker { return r.marks }

// export decodes a request of size bytes (after decompression) and appends
// its samples for tenantID; writer, if not empty, names the request's
// writer. A request over the tenant's rate limits is refused as a whole
// with an *errRateLimited before anything of it is written (the service
// graph's pairing included).
func (r *Receiver) export(ctx context.Context, protocol, tenantID, writer string, size int, decode decodeFunc) (exportResult, error) {
	start := time.Now()
	defer func() { r.metrics.duration.WithLabelValues(protocol).Observe(time.Since(start).Seconds()) }()
	w := r.work.Get().(*work)
	defer r.work.Put(w)
	w.batch.Reset()

	var ref Refusals
	r.setTimeBounds(w.dec, start)
	total, err := decode(w.dec, &w.batch, &ref)
	if err != nil {
		r.metrics.requestsRefused.WithLabelValues(protocol, refusedMalformed).Inc()
		return exportResult{}, errMalformed{err}
	}
	r.countBadEvents(tenantID, w.dec)
	r.metrics.spansReceived.WithLabelValues(protocol).Add(float64(total))
	if e := r.allow(tenantID, int64(total), int64(size)); e != nil {
		r.countRateLimited(protocol, tenantID, total, e)
		return exportResult{}, e
	}
	// Edges whose two sides are now known go into the same durable append.
	// One outcome per request: if the append fails, the pairing is taken
	// back and the rate limits' tokens given back, so that the client's
	// retry finds everything as it was and is counted once.
	var gs graphStats
	w.undo.reset()
	r.pairs.process(tenantID, w.dec.hops, &w.batch, time.Now().UnixNano(), &gs, &w.undo)

	if len(w.batch.Samples) > 0 {
		if err := r.app.Append(ctx, tenantID, &w.batch); err != nil {
			r.pairs.rollback(&w.undo)
			r.giveBack(tenantID, int64(total), int64(size))
			r.metrics.requestsRefused.WithLabelValues(protocol, refusedUnavailable).Inc()
			r.logger.Warn("append failed", "tenant", tenantID, "spans", len(w.batch.Samples), "err", err)
			return exportResult{}, errUnavailable{err}
		}
		r.countLate(tenantID, &w.batch)
		r.countLimited(tenantID, &w.batch, &ref, false)
	}
	r.countGraph(tenantID, &gs)
	r.metrics.spansAccepted.WithLabelValues(protocol).Add(float64(total - ref.Total()))
	r.observeWriters(w, tenantID, writer, time.Now().UnixNano())
	res := exportResult{}
	if n := ref.Total(); n > 0 {
		r.countRefusals(protocol, tenantID, &ref)
		res.rejected = int64(n)
		res.message = ref.Message(total)
	}
	return res, nil
}

// countRefusals counts refused spans (or records) by reason.
func (r *Receiver) countRefusals(protocol, tenantID string, ref *Refusals) {
	for reason, c := range ref {
		if c > 0 {
			id := Reason(reason).String()
			r.metrics.spansRefused.WithLabelValues(protocol, id).Add(float64(c))
			r.metrics.discarded.WithLabelValues(tenantID, id).Add(float64(c))
		}
	}
}

// countLimited moves what storage refused for the series limit into ref:
// spans (records, for streams) are reported to the client; other samples
// refused with them are counted here.
func (r *Receiver) countLimited(tenantID string, b *sample.Batch, ref *Refusals, records bool) {
	rs := b.Refused
	if rs.Samples == 0 {
		return
	}
	reported := rs.Spans
	if records {
		reported = rs.Samples
	}
	ref[ReasonSeriesLimit] += reported
	if extra := rs.Samples - reported; extra > 0 {
		r.metrics.discarded.WithLabelValues(tenantID, ReasonSeriesLimit.String()).Add(float64(extra))
	}
}

// countLate counts the spans that end at or before their tenant's
// watermark: their windows were already complete when they came.
func (r *Receiver) countLate(tenantID string, b *sample.Batch) {
	mark := r.marks.Mark(tenantID)
	if mark == 0 {
		return
	}
	late := 0
	for i := range b.Samples {
		smp := &b.Samples[i]
		if smp.Start+smp.Duration <= mark && b.Series[smp.Series].Family == sample.FamilySpan {
			late++
		}
	}
	if late > 0 {
		r.metrics.lateSpans.WithLabelValues(tenantID).Add(float64(late))
	}
}

// observeWriters moves the writers of an accepted request forward. A
// request's writer is the header's, else each resource's: its
// service.instance.id, else service.name@host.name, else service.name.
func (r *Receiver) observeWriters(w *work, tenantID, header string, now int64) {
	progress := w.dec.writers
	if len(progress) == 0 {
		return
	}
	if header != "" {
		var end int64
		for _, p := range progress {
			end = max(end, p.maxEnd)
		}
		r.marks.Observe(tenantID, append(w.id[:0], header...), end, now)
		return
	}
	for _, p := range progress {
		id := w.id[:0]
		switch {
		case len(p.instance) > 0:
			id = append(id, p.instance...)
		case len(p.host) > 0:
			id = append(append(append(id, p.service...), '@'), p.host...)
		default:
			id = append(id, p.service...)
		}
		w.id = id
		r.marks.Observe(tenantID, id, p.maxEnd, now)
	}
}

// unmarshalProto decodes an OTLP protobuf request.
func unmarshalProto(body []byte) (ptrace.Traces, error) {
	req := ptraceotlp.NewExportRequest()
	if err := req.UnmarshalProto(body); err != nil {
		return ptrace.Traces{}, fmt.Errorf("malformed OTLP protobuf ExportTraceServiceRequest (%d bytes): %w", len(body), err)
	}
	return req.Traces(), nil
}

// streamWriterTTL is how long the sequence number of a streaming writer is
// remembered after its last batch: a resend after that is applied again.
const streamWriterTTL = time.Hour

// ExpireEdges ends the wait of the spans whose peer did not come by now:
// client spans naming a peer become edges to a virtual node, the others
// count as unpaired. Call it regularly (the server does, every flush).
func (r *Receiver) ExpireEdges(ctx context.Context, now time.Time) {
	r.streams.expire(now.Add(-streamWriterTTL).UnixNano())
	r.pairs.expire(now.UnixNano(), func(tenantID string, b *sample.Batch, gs *graphStats) error {
		if len(b.Samples) > 0 {
			if err := r.app.Append(ctx, tenantID, b); err != nil {
				// Taken back by the pairer: the next call tries again.
				r.logger.Warn("appending expired service graph spans failed; retried at the next expiry", "tenant", tenantID, "err", err)
				return err
			}
		}
		r.countGraph(tenantID, gs)
		return nil
	})
}

// countGraph counts the derived samples pairing discarded for a batch that
// was kept.
func (r *Receiver) countGraph(tenantID string, gs *graphStats) {
	for _, c := range []struct {
		reason string
		n      int
	}{
		{discardNegativeNetwork, gs.negativeNetwork},
		{discardNegativeQueue, gs.negativeQueue},
		{discardNoClockOffset, gs.noClockOffset},
		{discardHeldOverflow, gs.heldOverflow},
	} {
		if c.n > 0 {
			r.metrics.discarded.WithLabelValues(tenantID, c.reason).Add(float64(c.n))
		}
	}
}

// giveBack returns to the rate limits what a request that was not kept
// took: the client sends it again and must not pay twice.
func (r *Receiver) giveBack(tenantID string, spans, bytes int64) {
	if r.limits.Spans != nil {
		r.limits.Spans.ReturnN(tenantID, spans)
	}
	if r.limits.Bytes != nil {
		r.limits.Bytes.ReturnN(tenantID, bytes)
	}
}

// DeleteTenantMetrics drops the per-tenant series of a tenant that is gone.
func (r *Receiver) DeleteTenantMetrics(tenantID string) {
	r.metrics.discarded.DeletePartialMatch(prometheus.Labels{"tenant": tenantID})
	r.metrics.lateSpans.DeletePartialMatch(prometheus.Labels{"tenant": tenantID})
	r.marks.DeleteTenant(tenantID)
}
