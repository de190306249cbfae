package ingest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/klauspost/compress/flate"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"go.opentelemetry.io/collector/pdata/ptrace/ptraceotlp"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// TracesPath is where OTLP/HTTP exporters post traces.
const TracesPath = "/v1/traces"

const (
	contentProto = "application/x-protobuf"
	contentJSON  = "application/json"
)

// HTTPHandler returns the OTLP/HTTP handler: POST /v1/traces with a
// protobuf or JSON body, optionally gzip, deflate or zstd compressed.
func (r *Receiver) HTTPHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(TracesPath, r.serveTraces)
	return mux
}

func (r *Receiver) serveTraces(w http.ResponseWriter, req *http.Request) {
	r.metrics.requests.WithLabelValues(protoHTTP).Inc()
	mediaType, _, _ := mime.ParseMediaType(req.Header.Get("Content-Type"))
	// Answer errors in the request's encoding where it is one we speak.
	respType := contentProto
	if mediaType == contentJSON {
		respType = contentJSON
	}
	fail := func(status int, reason string, err error) {
		r.metrics.requestsRefused.WithLabelValues(protoHTTP, reason).Inc()
		writeStatus(w, respType, status, err.Error())
	}

	if req.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		fail(http.StatusMethodNotAllowed, refusedMethod, fmt.Errorf("method %s not allowed on %s; use POST", req.Method, TracesPath))
		return
	}
	if mediaType != contentProto && mediaType != contentJSON {
		fail(http.StatusUnsupportedMediaType, refusedMediaType,
			fmt.Errorf("unsupported Content-Type %q; send %s or %s", req.Header.Get("Content-Type"), contentProto, contentJSON))
		return
	}
	tenantID, err := r.resolver.FromHTTP(req)
	if err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, tenant.ErrMissing) {
			status = http.StatusUnauthorized
		}
		fail(status, refusedTenant, err)
		return
	}
	writer := req.Header.Get(WriterHeader)
	if err := writerFromHeader(writer); err != nil {
		fail(http.StatusBadRequest, refusedWriter, err)
		return
	}
	body, status, reason, err := r.readBody(req)
	if err != nil {
		fail(status, reason, err)
		return
	}

	decode := decodeProtobuf(body)
	if mediaType == contentJSON {
		decode = decodeJSON(body)
	}
	res, err := r.export(req.Context(), protoHTTP, tenantID, writer, len(body), decode)
	var malformed errMalformed
	if errors.As(err, &malformed) {
		// Counted by export.
		writeStatus(w, respType, http.StatusBadRequest, err.Error())
		return
	}
	var limited *errRateLimited
	if errors.As(err, &limited) {
		// Counted by export. OTLP exporters retry a 429 after Retry-After;
		// the body's RetryInfo says the same to clients that read it.
		if !limited.tooLarge {
			w.Header().Set("Retry-After", retryAfterSeconds(limited.retryAfter))
		}
		writeRPCStatus(w, respType, limited.httpStatus(), limited.rpcStatus().Proto())
		return
	}
	if err != nil {
		// 503 with Retry-After: OTLP exporters retry it; nothing was kept.
		w.Header().Set("Retry-After", "1")
		writeStatus(w, respType, http.StatusServiceUnavailable, err.Error())
		return
	}
	resp := ptraceotlp.NewExportResponse()
	if res.rejected > 0 {
		resp.PartialSuccess().SetRejectedSpans(res.rejected)
		resp.PartialSuccess().SetErrorMessage(res.message)
	}
	var out []byte
	if respType == contentJSON {
		out, err = resp.MarshalJSON()
	} else {
		out, err = resp.MarshalProto()
	}
	if err != nil {
		writeStatus(w, respType, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", respType)
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(out)
}

// readBody reads the (decompressed) body, refusing more than MaxRequestBytes
// before or after decompression. The buffer grows as bytes arrive, never
// from what Content-Length announces: a client announcing 16 MiB and
// sending one byte costs one small buffer.
func (r *Receiver) readBody(req *http.Request) (body []byte, status int, reason string, err error) {
	limit := int64(r.opts.MaxRequestBytes)
	if req.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, refusedTooLarge,
			fmt.Errorf("request body is %d bytes, more than the limit of %d (--otlp.max-request-bytes)", req.ContentLength, limit)
	}
	var src io.Reader = http.MaxBytesReader(nil, req.Body, limit)
	switch enc := strings.ToLower(strings.TrimSpace(req.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		zr, err := gzip.NewReader(src)
		if err != nil {
			return nil, http.StatusBadRequest, refusedMalformed, fmt.Errorf("bad gzip body: %w", err)
		}
		defer zr.Close()
		src = zr
	case "deflate":
		// RFC 9110's deflate is zlib-wrapped (RFC 1950), which the
		// Collector sends; some clients send raw RFC 1951 deflate. A zlib
		// header is two bytes whose big-endian value is a multiple of 31
		// with compression method 8; raw deflate rarely starts so, and a
		// wrong guess fails the zlib checksum.
		br := bufio.NewReader(src)
		var zr io.ReadCloser
		if h, _ := br.Peek(2); len(h) == 2 && h[0]&0x0f == 8 && h[0]>>4 <= 7 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
			if zr, err = zlib.NewReader(br); err != nil {
				return nil, http.StatusBadRequest, refusedMalformed, fmt.Errorf("bad deflate (zlib) body: %w", err)
			}
		} else {
			zr = flate.NewReader(br)
		}
		defer zr.Close()
		src = zr
	case "zstd":
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(limit)))
		if err != nil {
			return nil, http.StatusBadRequest, refusedMalformed, fmt.Errorf("bad zstd body: %w", err)
		}
		defer zr.Close()
		src = zr
	default:
		return nil, http.StatusUnsupportedMediaType, refusedEncoding,
			fmt.Errorf("unsupported Content-Encoding %q; send gzip, deflate, zstd or none", enc)
	}
	var buf bytes.Buffer
	if req.ContentLength > 0 {
		// What has certainly arrived with the headers, at most.
		buf.Grow(int(min(req.ContentLength, initialBodyBuffer)))
	}
	// Read one byte past the limit to tell "exactly the limit" from "more".
	n, err := buf.ReadFrom(io.LimitReader(src, limit+1))
	var maxErr *http.MaxBytesError
	switch {
	case errors.As(err, &maxErr):
		return nil, http.StatusRequestEntityTooLarge, refusedTooLarge,
			fmt.Errorf("request body is more than the limit of %d bytes (--otlp.max-request-bytes)", limit)
	case n > limit || errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) || errors.Is(err, zstd.ErrFrameSizeExceeded):
		return nil, http.StatusRequestEntityTooLarge, refusedTooLarge,
			fmt.Errorf("request body decompresses to more than the limit of %d bytes (--otlp.max-request-bytes)", limit)
	case isTimeout(err):
		return nil, http.StatusRequestTimeout, refusedTimeout,
			fmt.Errorf("request body not received in time (--otlp.http.read-timeout): %w", err)
	case err != nil:
		return nil, http.StatusBadRequest, refusedMalformed, fmt.Errorf("read body: %w", err)
	}
	return buf.Bytes(), 0, "", nil
}

// isTimeout tells whether err is a network timeout: the listener's read
// deadline passed.
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// initialBodyBuffer is the most a request body's buffer starts with; it
// doubles as the body arrives.
const initialBodyBuffer = 64 << 10

// writeStatus writes an OTLP error response: a google.rpc.Status in the
// request's encoding, as the OTLP/HTTP specification asks.
func writeStatus(w http.ResponseWriter, contentType string, httpStatus int, msg string) {
	writeRPCStatus(w, contentType, httpStatus, &spb.Status{Code: int32(grpcCode(httpStatus)), Message: msg})
}

// writeRPCStatus writes st, details included, as an OTLP error response.
func writeRPCStatus(w http.ResponseWriter, contentType string, httpStatus int, st *spb.Status) {
	marshal := proto.Marshal
	if contentType == contentJSON {
		marshal = protojson.Marshal
	}
	// A message quoting the request may hold invalid UTF-8, which neither
	// encoding of a protobuf string takes: the body would be empty.
	st.Message = strings.ToValidUTF8(st.GetMessage(), "\uFFFD")
	out, err := marshal(st)
	if err != nil || len(out) == 0 {
		// Never an empty body: the code and the HTTP status at least.
		out, _ = marshal(&spb.Status{Code: st.GetCode(), Message: "hopwatch/ingest: " + http.StatusText(httpStatus)})
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(httpStatus)
	_, _ = w.Write(out)
}

func grpcCode(httpStatus int) codes.Code {
	switch httpStatus {
	case http.StatusBadRequest, http.StatusUnsupportedMediaType, http.StatusMethodNotAllowed:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusServiceUnavailable:
		return codes.Unavailable
	case http.StatusRequestTimeout:
		return codes.DeadlineExceeded
	default:
		return codes.Internal
	}
}
