package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/internal/auth"
)

// maxBodyBytes bounds a request body. The largest valid tenant (64 settings
// of a 128-byte key and a 4 KiB value) encodes in about 280 KB; the rest is
// slack for whitespace.
const maxBodyBytes = 512 << 10

// Tenant is a tenant as the API shows it.
type Tenant struct {
	ID     string `json:"id"`
	Limits Limits `json:"limits"`
	// Settings are per-tenant settings by flag name, stored for the
	// components that read them.
	Settings map[string]string `json:"settings"`
	// TokenHashes are the hashes of the tenant's API tokens as
	// auth.FormatHash writes them ("sha256:" and 64 hex digits).
	TokenHashes []string `json:"token_hashes"`
	// Version changes with every change of the tenant: the raft index of
	// its last change, sent back in If-Match to make a change conditional.
	Version uint64    `json:"version"`
	Created time.Time `json:"created,omitzero"`
	Updated time.Time `json:"updated,omitzero"`
}

// Limits are a tenant's overrides of the server's --limits.* flags of the
// same names; 0 keeps the flag's value.
type Limits struct {
	IngestionRateSpans  float64 `json:"ingestion_rate_spans"`
	IngestionBurstSpans int64   `json:"ingestion_burst_spans"`
	IngestionRateBytes  float64 `json:"ingestion_rate_bytes"`
	MaxSeriesPerTenant  int64   `json:"max_series_per_tenant"`
}

// TenantSpec is the body of a PUT: everything about a tenant that is not
// managed elsewhere (tokens have their own endpoints, versions and times
// are the cluster's). A field left out is zero: PUT replaces.
type TenantSpec struct {
	Limits   Limits            `json:"limits"`
	Settings map[string]string `json:"settings"`
}

// tenantPatch is the body of a PATCH, a JSON merge patch (RFC 7396) of a
// TenantSpec: a limit present replaces the tenant's (0 returns it to the
// flag's value), a setting set to null is removed.
type tenantPatch struct {
	Limits   *limitsPatch       `json:"limits"`
	Settings map[string]*string `json:"settings"`
}

type limitsPatch struct {
	IngestionRateSpans  *float64 `json:"ingestion_rate_spans"`
	IngestionBurstSpans *int64   `json:"ingestion_burst_spans"`
	IngestionRateBytes  *float64 `json:"ingestion_rate_bytes"`
	MaxSeriesPerTenant  *int64   `json:"max_series_per_tenant"`
}

func (p *tenantPatch) apply(t *cluster.Tenant) {
	if l := p.Limits; l != nil {
		set := func(dst *float64, src *float64) {
			if src != nil {
				*dst = *src
			}
		}
		setInt := func(dst *int64, src *int64) {
			if src != nil {
				*dst = *src
			}
		}
		set(&t.Limits.IngestionRateSpans, l.IngestionRateSpans)
		setInt(&t.Limits.IngestionBurstSpans, l.IngestionBurstSpans)
		set(&t.Limits.IngestionRateBytes, l.IngestionRateBytes)
		setInt(&t.Limits.MaxSeriesPerTenant, l.MaxSeriesPerTenant)
	}
	if len(p.Settings) > 0 {
		s := maps.Clone(t.Settings)
		if s == nil {
			s = map[string]string{}
		}
		for k, v := range p.Settings {
			if v == nil {
				delete(s, k)
			} else {
				s[k] = *v
			}
		}
		t.Settings = s
	}
}

// NewToken is the answer to a token's creation: the only time the token
// itself is shown.
type NewToken struct {
	Tenant  string `json:"tenant"`
	Token   string `json:"token"`
	Hash    string `json:"hash"`
	Version uint64 `json:"version"`
}

func fromCluster(t cluster.Tenant) Tenant {
	out := Tenant{
		ID:          t.ID,
		Limits:      Limits(t.Limits),
		Settings:    maps.Clone(t.Settings),
		TokenHashes: make([]string, len(t.TokenHashes)),
		Version:     t.Version,
		Created:     t.Created,
		Updated:     t.Updated,
	}
	if out.Settings == nil {
		out.Settings = map[string]string{}
	}
	for i, h := range t.TokenHashes {
		out.TokenHashes[i] = auth.FormatHash(h)
	}
	return out
}

// parseHash reads a token hash from a path: "sha256:" and 64 hex digits as
// the API writes it, or the 64 hex digits alone.
func parseHash(s string) (cluster.TokenHash, error) {
	if !strings.HasPrefix(s, "sha256:") {
		var h cluster.TokenHash
		if err := h.UnmarshalText([]byte(s)); err != nil {
			return h, fmt.Errorf("%q is not a token hash: write it as the API lists it, sha256:<64 hex digits>", s)
		}
		return h, nil
	}
	h, err := auth.ParseHash(s)
	if err != nil {
		return cluster.TokenHash{}, fmt.Errorf("%q is not a token hash: %s", s, strings.TrimPrefix(err.Error(), "hopwatch/auth: "))
	}
	return h, nil
}

// envelope is the Prometheus API's answer.
type envelope struct {
	Status    string `json:"status"`
	Data      any    `json:"data,omitempty"`
	ErrorType string `json:"errorType,omitempty"`
	Error     string `json:"error,omitempty"`
}

// The error types of the envelope: Prometheus's, and conflict for a change
// that expected another version.
const (
	errBadData     = "bad_data"
	errNotFound    = "not_found"
	errConflict    = "conflict"
	errUnavailable = "unavailable"
	errTimeout     = "timeout"
	errCanceled    = "canceled"
	errInternal    = "internal"
)

// statusClientClosed is the status of a request its client gave up on
// (nginx's 499, as Prometheus answers a canceled query).
const statusClientClosed = 499

// retryAfter is the Retry-After of a 503: a leader election takes one to
// two heartbeat timeouts (1 s each by default).
const retryAfter = "2"

// apiError is a refusal as the API answers it.
type apiError struct {
	code int
	typ  string
	msg  string
	// fields are the fields a validation error names, in the data of the
	// answer.
	fields []FieldError
}

func (e *apiError) Error() string { return e.msg }

// FieldError is one problem with one field of a request, in the data of a
// 400 answer.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

func badData(format string, args ...any) *apiError {
	return &apiError{code: http.StatusBadRequest, typ: errBadData, msg: fmt.Sprintf(format, args...)}
}

func invalidField(field, reason string) *apiError {
	return &apiError{code: http.StatusBadRequest, typ: errBadData, msg: "invalid " + field + ": " + reason,
		fields: []FieldError{{Field: field, Reason: reason}}}
}

func notFound(format string, args ...any) *apiError {
	return &apiError{code: http.StatusNotFound, typ: errNotFound, msg: fmt.Sprintf(format, args...)}
}

func preconditionFailed(format string, args ...any) *apiError {
	return &apiError{code: http.StatusPreconditionFailed, typ: errConflict, msg: fmt.Sprintf(format, args...)}
}

// toAPIError maps an error to the API's answer: the one place where the
// cluster's error kinds become status codes.
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	msg := err.Error()
	switch {
	case errors.Is(err, cluster.ErrInvalid):
		return validationError(err)
	case errors.Is(err, cluster.ErrNotFound):
		return &apiError{code: http.StatusNotFound, typ: errNotFound, msg: msg}
	case errors.Is(err, cluster.ErrConflict):
		return &apiError{code: http.StatusConflict, typ: errConflict, msg: msg}
	case errors.Is(err, cluster.ErrNoLeader), errors.Is(err, cluster.ErrShutdown):
		return &apiError{code: http.StatusServiceUnavailable, typ: errUnavailable, msg: msg}
	case errors.Is(err, context.DeadlineExceeded):
		return &apiError{code: http.StatusServiceUnavailable, typ: errTimeout, msg: msg}
	case errors.Is(err, context.Canceled):
		return &apiError{code: statusClientClosed, typ: errCanceled, msg: msg}
	}
	return &apiError{code: http.StatusInternalServerError, typ: errInternal, msg: msg}
}

// validationError turns the cluster's validation errors into one answer
// naming every field as the API's body names it.
func validationError(err error) *apiError {
	var fields []FieldError
	var walk func(error)
	walk = func(err error) {
		var ve *cluster.ValidationError
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if errors.As(err, &ve) {
			fields = append(fields, FieldError{Field: apiField(ve.Field), Reason: ve.Reason})
		}
	}
	walk(err)
	if len(fields) == 0 {
		return &apiError{code: http.StatusBadRequest, typ: errBadData, msg: err.Error()}
	}
	msgs := make([]string, len(fields))
	for i, f := range fields {
		msgs[i] = "invalid " + f.Field + ": " + f.Reason
	}
	return &apiError{code: http.StatusBadRequest, typ: errBadData, msg: strings.Join(msgs, "; "), fields: fields}
}

// apiField names a field of the cluster's tenant command as the API names
// it: the tenant's fields are at the top of the body, its ID in the path.
func apiField(f string) string {
	return strings.TrimPrefix(f, "tenant.")
}

// writeJSON answers with v in the envelope.
func writeJSON(w http.ResponseWriter, code int, v envelope) {
	b, err := json.Marshal(v)
	if err != nil {
		code = http.StatusInternalServerError
		b, _ = json.Marshal(envelope{Status: "error", ErrorType: errInternal, Error: "encoding the answer: " + err.Error()})
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
}

func writeData(w http.ResponseWriter, code int, data any) {
	writeJSON(w, code, envelope{Status: "success", Data: data})
}

func writeError(w http.ResponseWriter, e *apiError) {
	if e.code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", retryAfter)
	}
	env := envelope{Status: "error", ErrorType: e.typ, Error: e.msg}
	if len(e.fields) > 0 {
		env.Data = map[string]any{"fields": e.fields}
	}
	writeJSON(w, e.code, env)
}

// tenantFields says what a tenant's body holds, for a refused field.
const tenantFields = `a tenant's body has "limits" ("ingestion_rate_spans", "ingestion_burst_spans", "ingestion_rate_bytes", "max_series_per_tenant") and "settings"`

// decodeBody decodes r's JSON body into v, strictly: one object, no field
// v does not have, at most maxBodyBytes. An empty body is an error unless
// emptyOK. fields says what the body may hold, for a refused field.
func decodeBody(w http.ResponseWriter, r *http.Request, v any, emptyOK bool, fields string) *apiError {
	body := http.MaxBytesReader(w, r.Body, maxBodyBytes)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil {
		// One object only.
		var extra json.RawMessage
		if err = dec.Decode(&extra); err == io.EOF {
			return nil
		} else if err == nil {
			return badData("the body holds data after its JSON object; send one object")
		}
	}
	if errors.Is(err, io.EOF) && emptyOK {
		return nil
	}
	return bodyError(err, fields)
}

func bodyError(err error, fields string) *apiError {
	var (
		tooLarge *http.MaxBytesError
		syntax   *json.SyntaxError
		typ      *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooLarge):
		return &apiError{code: http.StatusRequestEntityTooLarge, typ: errBadData,
			msg: fmt.Sprintf("the body is larger than the limit of %d bytes; a tenant's limits and settings take far less", tooLarge.Limit)}
	case err == io.EOF:
		return badData("the body is empty; send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badData("the body ends inside its JSON object")
	case errors.As(err, &syntax):
		return badData("the body is not JSON: %v (at byte %d)", syntax, syntax.Offset)
	case errors.As(err, &typ):
		if typ.Field == "" {
			return badData("the body is a JSON %s; send a JSON object", typ.Value)
		}
		return invalidField(typ.Field, fmt.Sprintf("is a JSON %s; want %s", typ.Value, jsonKind(typ.Type.Kind().String())))
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return badData("unknown field %s in the body; %s", name, fields)
	}
	return badData("reading the body: %v", err)
}

// jsonKind names a Go kind as JSON would.
func jsonKind(kind string) string {
	switch kind {
	case "int64", "int", "uint64":
		return "an integer"
	case "float64":
		return "a number"
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	}
	return kind
}
