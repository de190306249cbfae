package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	hopwatchv1 "github.com/hopwatch/hopwatch/gen/hopwatch/v1"
	"github.com/hopwatch/hopwatch/ingest/watermark"
	"github.com/hopwatch/hopwatch/internal/tenant"
)

// WritersPath is the root of the writer API on the web port:
//
//	GET  /api/v1/writers                    the tenant's watermark and writers
//	POST /api/v1/writers/{writer}/exclude   take a writer out of the watermark
//	POST /api/v1/writers/{writer}/include   put it back
//
// The tenant is X-Scope-OrgID, as for every other API. Answers use the
// Prometheus API's JSON envelope.
const WritersPath = "/api/v1/writers"

// writerJSON is a writer in the HTTP API; times in Unix seconds.
type writerJSON struct {
	Writer    string  `json:"writer"`
	State     string  `json:"state"`
	Position  float64 `json:"position"`
	LastWrite float64 `json:"lastWrite"`
}

func toWriterJSON(w watermark.Writer) writerJSON {
	return writerJSON{Writer: w.ID, State: w.State.String(), Position: float64(w.Position) / 1e9, LastWrite: float64(w.LastWrite) / 1e9}
}

// WritersHandler serves the writer API.
func (r *Receiver) WritersHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+WritersPath, func(w http.ResponseWriter, req *http.Request) {
		id, ok := r.apiTenant(w, req, "list")
		if !ok {
			return
		}
		r.metrics.writerChanges.WithLabelValues("list", "ok").Inc()
		mark, ws := r.marks.Writers(id, time.Now().UnixNano())
		out := struct {
			Watermark *float64     `json:"watermark"`
			Writers   []writerJSON `json:"writers"`
		}{Writers: []writerJSON{}}
		if ws != nil || mark != 0 {
			m := float64(mark) / 1e9
			out.Watermark = &m
		}
		for _, wr := range ws {
			out.Writers = append(out.Writers, toWriterJSON(wr))
		}
		writeAPI(w, http.StatusOK, out, "", "")
	})
	change := func(exclude bool) http.HandlerFunc {
		return func(w http.ResponseWriter, req *http.Request) {
			id, ok := r.apiTenant(w, req, action(exclude))
			if !ok {
				return
			}
			wr, err := r.setExcluded(req.Context(), id, req.PathValue("writer"), exclude)
			if err != nil {
				code, typ := http.StatusBadRequest, "bad_data"
				switch {
				case errors.Is(err, watermark.ErrUnknownWriter):
					code, typ = http.StatusNotFound, "not_found"
				case errors.Is(err, ErrExclusionsUnavailable):
					code, typ = http.StatusServiceUnavailable, "unavailable"
					w.Header().Set("Retry-After", "1")
				}
				writeAPI(w, code, nil, typ, err.Error())
				return
			}
			writeAPI(w, http.StatusOK, toWriterJSON(wr), "", "")
		}
	}
	mux.HandleFunc("POST "+WritersPath+"/{writer}/exclude", change(true))
	mux.HandleFunc("POST "+WritersPath+"/{writer}/include", change(false))
	mux.HandleFunc(WritersPath, func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Allow", http.MethodGet)
		writeAPI(w, http.StatusMethodNotAllowed, nil, "bad_data", "method "+req.Method+" not allowed on "+WritersPath+"; use GET")
	})
	for _, act := range []string{"exclude", "include"} {
		mux.HandleFunc(WritersPath+"/{writer}/"+act, func(w http.ResponseWriter, req *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			writeAPI(w, http.StatusMethodNotAllowed, nil, "bad_data", "method "+req.Method+" not allowed on "+req.URL.Path+"; use POST")
		})
	}
	mux.HandleFunc(WritersPath+"/", func(w http.ResponseWriter, req *http.Request) {
		writeAPI(w, http.StatusNotFound, nil, "not_found",
			"unknown writer API path "+req.URL.Path+"; use GET "+WritersPath+" or POST "+WritersPath+"/{writer}/exclude|include")
	})
	return mux
}

func action(exclude bool) string {
	if exclude {
		return "exclude"
	}
	return "include"
}

func (r *Receiver) apiTenant(w http.ResponseWriter, req *http.Request, act string) (string, bool) {
	id, err := r.resolver.FromHTTP(req)
	if err != nil {
		r.metrics.writerChanges.WithLabelValues(act, "invalid_tenant").Inc()
		code := http.StatusBadRequest
		if errors.Is(err, tenant.ErrMissing) {
			code = http.StatusUnauthorized
		}
		writeAPI(w, code, nil, "bad_data", err.Error())
		return "", false
	}
	return id, true
}

// setExcluded excludes or includes a writer, logging the change.
func (r *Receiver) setExcluded(ctx context.Context, tenantID, writer string, exclude bool) (watermark.Writer, error) {
	if writer == "" || strings.TrimSpace(writer) != writer || len(writer) > maxWriterLength {
		r.metrics.writerChanges.WithLabelValues(action(exclude), "invalid_writer").Inc()
		return watermark.Writer{}, errors.New("invalid writer id: it must be 1 to 256 bytes without surrounding spaces")
	}
	now := time.Now().UnixNano()
	var (
		w   watermark.Writer
		err error
	)
	switch ref := r.exclusions.Load(); {
	case ref != nil:
		w, err = r.setReplicated(ctx, ref.rep, tenantID, writer, exclude)
	case exclude:
		w, err = r.marks.Exclude(tenantID, writer, now)
	default:
		w, err = r.marks.Include(tenantID, writer, now)
	}
	switch {
	case errors.Is(err, watermark.ErrUnknownWriter):
		r.metrics.writerChanges.WithLabelValues(action(exclude), "unknown_writer").Inc()
		return w, err
	case err != nil:
		r.metrics.writerChanges.WithLabelValues(action(exclude), "unavailable").Inc()
		return w, fmt.Errorf("%w: %v", ErrExclusionsUnavailable, err)
	}
	r.metrics.writerChanges.WithLabelValues(action(exclude), "ok").Inc()
	r.logger.Info("writer state changed", "tenant", tenantID, "writer", writer, "state", w.State.String())
	return w, nil
}

// writeAPI answers in the Prometheus API envelope.
func writeAPI(w http.ResponseWriter, code int, data any, errType, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	env := struct {
		Status    string `json:"status"`
		Data      any    `json:"data,omitempty"`
		ErrorType string `json:"errorType,omitempty"`
		Error     string `json:"error,omitempty"`
	}{Status: "success", Data: data, ErrorType: errType, Error: msg}
	if msg != "" {
		env.Status = "error"
	}
	_ = json.NewEncoder(w).Encode(env)
}

// writerService is hopwatch.v1.WriterService.
type writerService struct {
	hopwatchv1.UnimplementedWriterServiceServer
	r *Receiver
}

func (s writerService) tenant(ctx context.Context, act string) (string, error) {
	id, err := s.r.resolver.FromGRPC(ctx)
	if err != nil {
		s.r.metrics.writerChanges.WithLabelValues(act, "invalid_tenant").Inc()
		code := codes.InvalidArgument
		if errors.Is(err, tenant.ErrMissing) {
			code = codes.Unauthenticated
		}
		return "", status.Error(code, err.Error())
	}
	return id, nil
}

func toWriterPB(w watermark.Writer) *hopwatchv1.Writer {
	return &hopwatchv1.Writer{Writer: w.ID, State: hopwatchv1.WriterState(w.State), PositionUnixNano: w.Position, LastWriteUnixNano: w.LastWrite}
}

func (s writerService) ListWriters(ctx context.Context, _ *hopwatchv1.ListWritersRequest) (*hopwatchv1.ListWritersResponse, error) {
	id, err := s.tenant(ctx, "list")
	if err != nil {
		return nil, err
	}
	s.r.metrics.writerChanges.WithLabelValues("list", "ok").Inc()
	mark, ws := s.r.marks.Writers(id, time.Now().UnixNano())
	out := &hopwatchv1.ListWritersResponse{WatermarkUnixNano: mark}
	for _, w := range ws {
		out.Writers = append(out.Writers, toWriterPB(w))
	}
	return out, nil
}

func (s writerService) change(ctx context.Context, writer string, exclude bool) (*hopwatchv1.Writer, error) {
	id, err := s.tenant(ctx, action(exclude))
	if err != nil {
		return nil, err
	}
	w, err := s.r.setExcluded(ctx, id, writer, exclude)
	switch {
	case errors.Is(err, watermark.ErrUnknownWriter):
		return nil, status.Error(codes.NotFound, err.Error())
	case errors.Is(err, ErrExclusionsUnavailable):
		return nil, status.Error(codes.Unavailable, err.Error())
	case err != nil:
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return toWriterPB(w), nil
}

func (s writerService) ExcludeWriter(ctx context.Context, req *hopwatchv1.ExcludeWriterRequest) (*hopwatchv1.ExcludeWriterResponse, error) {
	w, err := s.change(ctx, req.GetWriter(), true)
	if err != nil {
		return nil, err
	}
	return &hopwatchv1.ExcludeWriterResponse{Writer: w}, nil
}

func (s writerService) IncludeWriter(ctx context.Context, req *hopwatchv1.IncludeWriterRequest) (*hopwatchv1.IncludeWriterResponse, error) {
	w, err := s.change(ctx, req.GetWriter(), false)
	if err != nil {
		return nil, err
	}
	return &hopwatchv1.IncludeWriterResponse{Writer: w}, nil
}

// registerWriterService registers hopwatch.v1.WriterService on s.
func (r *Receiver) registerWriterService(s *grpc.Server) {
	hopwatchv1.RegisterWriterServiceServer(s, writerService{r: r})
}
