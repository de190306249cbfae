package client

import (
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// FullPolicy says what Record does when the queue is full.
type FullPolicy uint8

// The policies. The zero value is Block.
const (
	// Block makes Record wait for room until its context ends, or until
	// the context's deadline less Options.DeadlineMargin. A record that
	// finds no room in that time is refused with an error that wraps both
	// ErrQueueFull and the context's error, and counted as dropped.
	Block FullPolicy = iota
	// Drop makes Record refuse the record at once with ErrQueueFull and
	// count it as dropped: the caller never waits.
	Drop
)

func (p FullPolicy) String() string {
	switch p {
	case Block:
		return "block"
	case Drop:
		return "drop"
	}
	return fmt.Sprintf("FullPolicy(%d)", uint8(p))
}

// MarshalText makes a FullPolicy a flag value (flag.TextVar) and a YAML or
// JSON string.
func (p FullPolicy) MarshalText() ([]byte, error) {
	if p > Drop {
		return nil, fmt.Errorf("hopwatch/client: unknown full policy %d", uint8(p))
	}
	return []byte(p.String()), nil
}

// UnmarshalText reads "block" or "drop".
func (p *FullPolicy) UnmarshalText(b []byte) error {
	switch string(b) {
	case "block":
		*p = Block
	case "drop":
		*p = Drop
	default:
		return fmt.Errorf("hopwatch/client: full policy %q is not one of block, drop", b)
	}
	return nil
}

// Backoff spaces retries: the n-th retry (n = 0, 1, ...) waits
// min(Initial·Multiplierⁿ, Max), spread uniformly by ±Jitter of itself so
// that writers cut off together do not come back together.
type Backoff struct {
	// Initial is the wait before the first retry.
	Initial time.Duration
	// Max caps the wait before jitter.
	Max time.Duration
	// Multiplier grows the wait from one retry to the next.
	Multiplier float64
	// Jitter is the spread, a fraction in [0, 1].
	Jitter float64
}

// Delay returns the wait before retry n (0 for the first), with r in
// [0, 1) picking the point in the jitter range.
func (b Backoff) Delay(n int, r float64) time.Duration {
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(n))
	if d > float64(b.Max) || math.IsInf(d, 0) || math.IsNaN(d) {
		d = float64(b.Max)
	}
	d *= 1 + b.Jitter*(2*r-1)
	return time.Duration(d)
}

func (b Backoff) validate(field string) []error {
	var errs []error
	if b.Initial <= 0 {
		errs = append(errs, fmt.Errorf("%s.Initial %s must be positive", field, b.Initial))
	}
	if b.Max < b.Initial {
		errs = append(errs, fmt.Errorf("%s.Max %s must be at least %s.Initial (%s)", field, b.Max, field, b.Initial))
	}
	if !(b.Multiplier >= 1) {
		errs = append(errs, fmt.Errorf("%s.Multiplier %g must be at least 1", field, b.Multiplier))
	}
	if !(b.Jitter >= 0 && b.Jitter <= 1) {
		errs = append(errs, fmt.Errorf("%s.Jitter %g outside [0, 1]", field, b.Jitter))
	}
	return errs
}

// Options configures a Client. Start from DefaultOptions and set Target
// and Writer.
type Options struct {
	// Target is the gRPC target of hopwatch's ingest service, such as
	// "hopwatch.example:4317" or "dns:///hopwatch:4317".
	Target string
	// DialOptions are passed to grpc.NewClient after the client's own
	// (a connection backoff matching Backoff, and TLS), so they win. Unless
	// TLS is set, they must say how to secure the connection, for example
	// grpc.WithTransportCredentials(insecure.NewCredentials()).
	DialOptions []grpc.DialOption
	// TLS, if not nil, secures the connection with TLS: its RootCAs verify
	// hopwatch's certificate (nil: the system's CAs), and its
	// Certificates or GetClientCertificate present a client certificate
	// where hopwatch requires one (--tls.require-client-cert).
	TLS *tls.Config
	// Token is sent as gRPC metadata "authorization: Bearer <token>" on
	// every call, for hopwatch running with --auth.enabled; empty sends
	// none. The token decides the tenant: Tenant may be left empty, and if
	// set must name the token's tenant. Send it only over TLS (or to a
	// proxy on the same host that adds TLS): a token is a password. Do not
	// also add per-RPC credentials of your own in DialOptions: hopwatch
	// refuses a call with two authorization values.
	Token string

	// Writer identifies this client to hopwatch (gRPC metadata
	// x-hopwatch-writer): hopwatch tracks each writer's event-time position
	// and deduplicates its batches by (writer, seq). A Client numbers its
	// batches from 1, so a writer id must not be reused by a later Client
	// (a restarted process): hopwatch would take the new batches for
	// duplicates of the old ones. Include something unique per process
	// start, as OpenTelemetry's service.instance.id does.
	Writer string
	// Tenant is sent as X-Scope-OrgID when hopwatch runs with
	// multi-tenancy; empty sends none.
	Tenant string

	// MaxBatchRecords cuts a batch when it holds this many records.
	MaxBatchRecords int
	// MaxBatchBytes cuts a batch when its encoded size may exceed this
	// many bytes (records are counted at their largest encoding, series at
	// their exact size). It keeps batches under gRPC's default receive
	// limit of 4 MiB however large the series' labels are.
	MaxBatchBytes int
	// BatchInterval is how often a batch that is not full is sent: a
	// record waits at most about this long before it is sent, however
	// slowly records come.
	BatchInterval time.Duration
	// QueueSize bounds the records the client holds: recorded and not yet
	// acknowledged, whether waiting, being sent or awaiting an
	// acknowledgement. It is kept in ⌈QueueSize/MaxBatchRecords⌉ batches
	// of MaxBatchRecords records (36 bytes per record); batches cut
	// early by BatchInterval or Flush take a whole batch each, so under a
	// slow server with a short interval the queue fills with fewer
	// records.
	QueueSize int
	// FullPolicy says what Record does when the queue is full.
	FullPolicy FullPolicy
	// DeadlineMargin is taken off the deadline of every context the client
	// waits on (Record under Block, Flush, Close), so the caller has its
	// answer in time to act on it before its own deadline.
	DeadlineMargin time.Duration
	// AckTimeout ends a stream that has batches in flight and has answered
	// nothing for this long; the client reconnects and sends them again.
	// It finds a server or connection that hangs without failing. 0
	// disables it.
	AckTimeout time.Duration
	// Backoff spaces reconnects, and the resending of batches that hopwatch
	// answered with UNAVAILABLE.
	Backoff Backoff
	// MaxSeries bounds the series registered with Client.Series, which are
	// kept for the client's lifetime.
	MaxSeries int
	// SpanDimensions are the label names a span series may carry besides
	// service, span_name, span_kind and status_code: the dimension labels
	// hopwatch is configured with (spanmetrics.dimensions, as label names:
	// http.method becomes http_method). hopwatch refuses a whole batch
	// with a span label it does not know, so Series refuses it first.
	SpanDimensions []string
}

// DefaultOptions returns the defaults; Target and Writer are left empty.
//
// BatchInterval is 1s: a record reaches hopwatch well before its next
// flush (every 5s by default), while a quiet writer costs the server at
// most one batch (one WAL append) per second. MaxBatchRecords is 1000:
// about 29 KB on the wire with trace ids, enough to amortize the per-batch
// work (a WAL append and an acknowledgement) and well under every message
// limit. QueueSize is 100 batches (3.6 MB): at 10,000 records/s, ten
// seconds of a server restart. DeadlineMargin is 50ms: time for the caller
// to log or count a refusal and answer its own caller. AckTimeout is 30s:
// far beyond a WAL append under load, well within what a person notices.
func DefaultOptions() Options {
	return Options{
		MaxBatchRecords: 1000,
		MaxBatchBytes:   1 << 20,
		BatchInterval:   time.Second,
		QueueSize:       100_000,
		FullPolicy:      Block,
		DeadlineMargin:  50 * time.Millisecond,
		AckTimeout:      30 * time.Second,
		Backoff:         Backoff{Initial: 100 * time.Millisecond, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.2},
		MaxSeries:       10_000,
	}
}

// Bounds that keep a batch within what the wire format and hopwatch take.
const (
	// maxRecordBytes is the largest encoding of one record: a 5-byte series
	// index, a 10-byte start delta, a 10-byte duration, a 16-byte trace id
	// and a failed bit.
	maxRecordBytes = 5 + 10 + 10 + 16 + 1
	// batchOverhead bounds the encoding of a batch besides its series and
	// records: the StreamRequest's field, seq, watermark, and the tags and
	// lengths of the five columns.
	batchOverhead = 6 + 11 + 11 + 5*6
	// minBatchBytes leaves room for at least one record of a large series.
	minBatchBytes = 16 << 10
	// maxLabelNameLength is Mimir's and hopwatch's limit on a label name.
	maxLabelNameLength = 1024
	// maxWriterLength is hopwatch's limit on a writer id.
	maxWriterLength = 256
)

// Validate reports every problem with the options, naming the field.
func (o Options) Validate() error {
	var errs []error
	add := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if o.Target == "" {
		add("Target must be set")
	}
	switch {
	case o.Writer == "":
		add("Writer must be set: it identifies this client's batches to hopwatch")
	case len(o.Writer) > maxWriterLength:
		add("Writer is %d bytes, longer than hopwatch's limit of %d", len(o.Writer), maxWriterLength)
	case !printableASCII(o.Writer):
		add("Writer %q must be printable ASCII (it is sent as gRPC metadata)", o.Writer)
	}
	if o.Tenant != "" {
		if err := tenant.Validate(o.Tenant); err != nil {
			add("Tenant: %w", err)
		}
	}
	if o.Token != "" && !tokenChars(o.Token) {
		// The token itself is never repeated: it is a secret.
		add("Token must be a bearer token: letters, digits and -._~+/, then = padding, without spaces or a \"Bearer \" prefix")
	}
	if o.MaxBatchRecords <= 0 || o.MaxBatchRecords > 1<<20 {
		add("MaxBatchRecords %d outside [1, %d]", o.MaxBatchRecords, 1<<20)
	}
	if o.MaxBatchBytes < minBatchBytes {
		add("MaxBatchBytes %d is less than the minimum of %d", o.MaxBatchBytes, minBatchBytes)
	}
	if o.BatchInterval <= 0 {
		add("BatchInterval %s must be positive", o.BatchInterval)
	}
	if o.QueueSize < o.MaxBatchRecords {
		add("QueueSize %d must be at least MaxBatchRecords (%d)", o.QueueSize, o.MaxBatchRecords)
	}
	if o.FullPolicy > Drop {
		add("FullPolicy %s is not one of block, drop", o.FullPolicy)
	}
	if o.DeadlineMargin < 0 {
		add("DeadlineMargin %s must not be negative", o.DeadlineMargin)
	}
	if o.AckTimeout < 0 {
		add("AckTimeout %s must not be negative (0 disables it)", o.AckTimeout)
	}
	errs = append(errs, o.Backoff.validate("Backoff")...)
	if o.MaxSeries <= 0 {
		add("MaxSeries %d must be positive", o.MaxSeries)
	}
	for i, d := range o.SpanDimensions {
		if err := checkLabelChars(d); err != nil {
			add("SpanDimensions[%d]: %w", i, err)
		}
	}
	return errors.Join(errs...)
}

// batches returns how many batches hold QueueSize records.
func (o Options) batches() int {
	return (o.QueueSize + o.MaxBatchRecords - 1) / o.MaxBatchRecords
}

// tokenChars reports whether s has RFC 6750's b64token syntax, which
// hopwatch checks too.
func tokenChars(s string) bool {
	pad := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '=':
			pad = true
		case pad:
			return false
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '+', c == '/':
		default:
			return false
		}
	}
	return true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
