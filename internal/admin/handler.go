package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/hopwatch/hopwatch/cluster"
	"github.com/hopwatch/hopwatch/internal/auth"
	"github.com/hopwatch/hopwatch/internal/tenant"
)

// Prefix is the path the handler serves under: the server mounts it at
// Prefix and Prefix + "/".
const Prefix = "/api/v1/admin/tenants"

// maxAttempts bounds the read-modify-write of a change without If-Match
// when other changes of the same tenant keep getting in between.
const maxAttempts = 5

// Store is the tenant metadata the handler reads and changes; *cluster.Node
// implements it.
type Store interface {
	// State returns the metadata as applied on this node, possibly behind
	// the leader by the replication lag.
	State() *cluster.State
	// Linearizable returns once State includes every change committed
	// before the call.
	Linearizable(ctx context.Context) error
	// PutTenant creates or replaces a tenant; a non-zero Version makes it
	// conditional (cluster.ErrConflict unless the tenant is at it).
	PutTenant(ctx context.Context, t cluster.Tenant) (uint64, error)
	DeleteTenant(ctx context.Context, id string) (uint64, error)
}

var _ Store = (*cluster.Node)(nil)

type metrics struct {
	requests *prometheus.CounterVec // method, code
}

func newMetrics(reg prometheus.Registerer) *metrics {
	return &metrics{
		requests: promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
			Name: "hopwatch_admin_requests_total",
			Help: "Requests to the tenant admin API (/api/v1/admin/tenants), by method and status code.",
		}, []string{"method", "code"}),
	}
}

// handler serves the tenant admin API.
type handler struct {
	store   Store
	logger  *slog.Logger
	metrics *metrics
	// random feeds auth.NewToken; nil reads crypto/rand.
	random io.Reader
}

// NewHandler returns the tenant admin API over store, for the paths under
// Prefix (see docs/admin.md). It authenticates nobody: the server puts it
// behind its admin-token middleware. A nil registerer registers nothing; a
// nil logger discards, including the audit lines, one per change at info
// level.
func NewHandler(store Store, reg prometheus.Registerer, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &handler{store: store, logger: logger.With("component", "admin"), metrics: newMetrics(reg)}
}

// statusWriter records the status code for the request counter.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// methodLabel bounds the method label to the methods HTTP defines.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	sw := &statusWriter{ResponseWriter: w}
	defer func() {
		code := sw.code
		if code == 0 {
			code = http.StatusOK
		}
		h.metrics.requests.WithLabelValues(methodLabel(r.Method), strconv.Itoa(code)).Inc()
	}()
	if err := h.route(sw, r); err != nil {
		e := toAPIError(err)
		if e.code == http.StatusInternalServerError {
			h.logger.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		writeError(sw, e)
	}
}

// route dispatches on the path below Prefix:
//
//	""                      GET
//	"/{id}"                 GET PUT PATCH DELETE
//	"/{id}/tokens"          GET POST
//	"/{id}/tokens/{hash}"   DELETE
func (h *handler) route(w http.ResponseWriter, r *http.Request) error {
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	if !ok || rest != "" && rest[0] != '/' {
		return notFound("no admin endpoint at %s; tenants are under %s", r.URL.Path, Prefix)
	}
	rest = strings.TrimPrefix(rest, "/")
	if rest == "" {
		if r.Method != http.MethodGet {
			return methodNotAllowed(w, r, http.MethodGet)
		}
		return h.list(w, r)
	}
	parts := strings.Split(rest, "/")
	id := parts[0]
	if id == "" {
		return invalidField("id", "is empty; name the tenant in the path, "+Prefix+"/{id}")
	}
	if err := tenant.Validate(id); err != nil {
		return invalidField("id", strings.TrimPrefix(err.Error(), "hopwatch/tenant: "))
	}
	switch {
	case len(parts) == 1:
		switch r.Method {
		case http.MethodGet:
			return h.get(w, r, id)
		case http.MethodPut:
			return h.put(w, r, id)
		case http.MethodPatch:
			return h.patch(w, r, id)
		case http.MethodDelete:
			return h.delete(w, r, id)
		}
		return methodNotAllowed(w, r, http.MethodGet, http.MethodPut, http.MethodPatch, http.MethodDelete)
	case len(parts) == 2 && parts[1] == "tokens":
		switch r.Method {
		case http.MethodGet:
			return h.listTokens(w, r, id)
		case http.MethodPost:
			return h.createToken(w, r, id)
		}
		return methodNotAllowed(w, r, http.MethodGet, http.MethodPost)
	case len(parts) == 3 && parts[1] == "tokens" && parts[2] != "":
		if r.Method != http.MethodDelete {
			return methodNotAllowed(w, r, http.MethodDelete)
		}
		return h.revokeToken(w, r, id, parts[2])
	}
	return notFound("no admin endpoint at %s; see %s/{id} and %s/{id}/tokens", r.URL.Path, Prefix, Prefix)
}

func methodNotAllowed(w http.ResponseWriter, r *http.Request, allowed ...string) error {
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	return &apiError{code: http.StatusMethodNotAllowed, typ: errBadData,
		msg: fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, strings.Join(allowed, ", "))}
}

// state returns the state to read from: with ?consistent=true, one that
// includes every change committed before the request.
func (h *handler) state(r *http.Request) (*cluster.State, error) {
	consistent := false
	if v := r.URL.Query().Get("consistent"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return nil, invalidField("consistent", fmt.Sprintf("is %q; use true or false", v))
		}
		consistent = b
	}
	if consistent {
		if err := h.store.Linearizable(r.Context()); err != nil {
			return nil, err
		}
	}
	return h.store.State(), nil
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) error {
	s, err := h.state(r)
	if err != nil {
		return err
	}
	ts := s.Tenants()
	out := make([]Tenant, len(ts))
	for i, t := range ts {
		out[i] = fromCluster(t)
	}
	writeData(w, http.StatusOK, out)
	return nil
}

func (h *handler) get(w http.ResponseWriter, r *http.Request, id string) error {
	t, err := h.tenant(r, id)
	if err != nil {
		return err
	}
	setETag(w, t.Version)
	writeData(w, http.StatusOK, fromCluster(t))
	return nil
}

// tenant reads a tenant from the state the request asks for.
func (h *handler) tenant(r *http.Request, id string) (cluster.Tenant, error) {
	s, err := h.state(r)
	if err != nil {
		return cluster.Tenant{}, err
	}
	t, ok := s.Tenant(id)
	if !ok {
		return cluster.Tenant{}, errNoTenant(id)
	}
	return t, nil
}

func errNoTenant(id string) *apiError {
	return notFound("tenant %q does not exist; create it with PUT %s/%s", id, Prefix, id)
}

func setETag(w http.ResponseWriter, version uint64) {
	w.Header().Set("ETag", `"`+strconv.FormatUint(version, 10)+`"`)
}

func (h *handler) put(w http.ResponseWriter, r *http.Request, id string) error {
	var spec TenantSpec
	if err := decodeBody(w, r, &spec, false, tenantFields); err != nil {
		return err
	}
	pre, err := parseIfMatch(r)
	if err != nil {
		return err
	}
	ch, err := h.update(r.Context(), id, pre, func(cur cluster.Tenant, _ bool) (cluster.Tenant, error) {
		cur.Limits = cluster.Limits(spec.Limits)
		cur.Settings = spec.Settings
		return cur, nil
	})
	if err != nil {
		h.refused(r, "tenant.put", id, err)
		return err
	}
	h.audit(r, "tenant.put", id, ch.version, diff(ch.old, ch.next))
	code := http.StatusOK
	if !ch.existed {
		code = http.StatusCreated
	}
	return h.answerTenant(w, r, code, ch)
}

func (h *handler) patch(w http.ResponseWriter, r *http.Request, id string) error {
	var p tenantPatch
	if err := decodeBody(w, r, &p, false, tenantFields); err != nil {
		return err
	}
	pre, err := parseIfMatch(r)
	if err != nil {
		return err
	}
	ch, err := h.update(r.Context(), id, pre, func(cur cluster.Tenant, exists bool) (cluster.Tenant, error) {
		if !exists {
			return cur, errNoTenant(id)
		}
		p.apply(&cur)
		return cur, nil
	})
	if err != nil {
		h.refused(r, "tenant.patch", id, err)
		return err
	}
	h.audit(r, "tenant.patch", id, ch.version, diff(ch.old, ch.next))
	return h.answerTenant(w, r, http.StatusOK, ch)
}

// answerTenant answers with the tenant as the change left it: from this
// node's state once it has applied the change (at once on the leader).
func (h *handler) answerTenant(w http.ResponseWriter, r *http.Request, code int, ch change) error {
	t := ch.next
	if s := h.store.State(); s.Index() < ch.version {
		// A follower that has not applied its own change yet. A failure
		// here says nothing about the change, which is committed.
		_ = h.store.Linearizable(r.Context())
	}
	if cur, ok := h.store.State().Tenant(ch.next.ID); ok && cur.Version == ch.version {
		t = cur
	}
	setETag(w, ch.version)
	writeData(w, code, fromCluster(t))
	return nil
}

func (h *handler) delete(w http.ResponseWriter, r *http.Request, id string) error {
	if r.Header.Get("If-Match") != "" {
		return badData("DELETE of a tenant takes no If-Match: the cluster deletes unconditionally")
	}
	old, _ := h.store.State().Tenant(id)
	v, err := h.store.DeleteTenant(r.Context(), id)
	if err != nil {
		h.refused(r, "tenant.delete", id, err)
		return err
	}
	h.audit(r, "tenant.delete", id, v, diff(old, cluster.Tenant{}))
	writeData(w, http.StatusOK, map[string]any{"id": id, "deleted": true, "version": v})
	return nil
}

func (h *handler) listTokens(w http.ResponseWriter, r *http.Request, id string) error {
	t, err := h.tenant(r, id)
	if err != nil {
		return err
	}
	setETag(w, t.Version)
	writeData(w, http.StatusOK, fromCluster(t).TokenHashes)
	return nil
}

func (h *handler) createToken(w http.ResponseWriter, r *http.Request, id string) error {
	var req struct{}
	if err := decodeBody(w, r, &req, true, "a token is created from an empty body or {}"); err != nil {
		return err
	}
	pre, err := parseIfMatch(r)
	if err != nil {
		return err
	}
	tok, err := auth.NewToken(h.random)
	if err != nil {
		return err
	}
	hash := cluster.HashToken(tok)
	ch, err := h.update(r.Context(), id, pre, func(cur cluster.Tenant, exists bool) (cluster.Tenant, error) {
		if !exists {
			return cur, errNoTenant(id)
		}
		cur.TokenHashes = append(slices.Clone(cur.TokenHashes), hash)
		return cur, nil
	})
	if err != nil {
		h.refused(r, "token.create", id, err)
		return err
	}
	h.audit(r, "token.create", id, ch.version, diff(ch.old, ch.next))
	// The answer carries a secret: no cache may keep it.
	w.Header().Set("Cache-Control", "no-store")
	setETag(w, ch.version)
	writeData(w, http.StatusCreated, NewToken{Tenant: id, Token: tok, Hash: auth.FormatHash(hash), Version: ch.version})
	return nil
}

func (h *handler) revokeToken(w http.ResponseWriter, r *http.Request, id, hashText string) error {
	hash, err := parseHash(hashText)
	if err != nil {
		return invalidField("hash", err.Error())
	}
	pre, err := parseIfMatch(r)
	if err != nil {
		return err
	}
	ch, err := h.update(r.Context(), id, pre, func(cur cluster.Tenant, exists bool) (cluster.Tenant, error) {
		if !exists {
			return cur, errNoTenant(id)
		}
		i := slices.Index(cur.TokenHashes, hash)
		if i < 0 {
			return cur, notFound("tenant %q has no token with hash %s; list them with GET %s/%s/tokens", id, auth.FormatHash(hash), Prefix, id)
		}
		cur.TokenHashes = slices.Delete(slices.Clone(cur.TokenHashes), i, i+1)
		return cur, nil
	})
	if err != nil {
		h.refused(r, "token.revoke", id, err)
		return err
	}
	h.audit(r, "token.revoke", id, ch.version, diff(ch.old, ch.next))
	setETag(w, ch.version)
	writeData(w, http.StatusOK, map[string]any{"tenant": id, "hash": auth.FormatHash(hash), "revoked": true, "version": ch.version})
	return nil
}

// precondition is a request's If-Match.
type precondition struct {
	set bool
	// any is If-Match: *, the tenant exists at whatever version.
	any     bool
	version uint64
}

// parseIfMatch reads If-Match: a version as the API shows it (the ETag,
// quoted or not), or *.
func parseIfMatch(r *http.Request) (precondition, error) {
	vals := r.Header.Values("If-Match")
	if len(vals) == 0 {
		return precondition{}, nil
	}
	if len(vals) > 1 {
		return precondition{}, badData("%d If-Match headers; send one, with the tenant's version", len(vals))
	}
	v := strings.TrimSpace(vals[0])
	if v == "*" {
		return precondition{set: true, any: true}, nil
	}
	if strings.HasPrefix(v, "W/") {
		return precondition{}, invalidField("If-Match", fmt.Sprintf("%q is a weak tag; send the version as the ETag shows it", v))
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n == 0 {
		return precondition{}, invalidField("If-Match", fmt.Sprintf("%q is not a version; send the tenant's \"version\" (its ETag), a number from 1", vals[0]))
	}
	return precondition{set: true, version: n}, nil
}

// check refuses a tenant that does not meet the precondition.
func (p precondition) check(cur cluster.Tenant, exists bool) error {
	switch {
	case !p.set:
		return nil
	case !exists:
		return preconditionFailed("tenant %q does not exist, If-Match expected it to; create it with PUT without If-Match", cur.ID)
	case !p.any && cur.Version != p.version:
		return preconditionFailed("tenant %q is at version %d, If-Match expected version %d; read it again and reapply", cur.ID, cur.Version, p.version)
	}
	return nil
}

// change is a tenant before and after a write.
type change struct {
	old, next cluster.Tenant
	existed   bool
	version   uint64
}

// update writes modify(current tenant) as a read-modify-write that never
// loses a concurrent change: it reads the tenant as of every committed
// change, and writes on condition that the tenant is still at the version
// read. Without If-Match a conflict (another change in between) is retried
// up to maxAttempts times; with it, the client decides (412).
func (h *handler) update(ctx context.Context, id string, pre precondition, modify func(cur cluster.Tenant, exists bool) (cluster.Tenant, error)) (change, error) {
	for attempt := 1; ; attempt++ {
		if err := h.store.Linearizable(ctx); err != nil {
			return change{}, err
		}
		cur, exists := h.store.State().Tenant(id)
		cur.ID = id
		if err := pre.check(cur, exists); err != nil {
			return change{}, err
		}
		next, err := modify(cur, exists)
		if err != nil {
			return change{}, err
		}
		// Version 0 creates unconditionally: the tenant did not exist as of
		// the linearizable read.
		next.ID, next.Version = id, cur.Version
		v, err := h.store.PutTenant(ctx, next)
		if err == nil {
			return change{old: cur, next: next, existed: exists, version: v}, nil
		}
		if !errors.Is(err, cluster.ErrConflict) {
			return change{}, err
		}
		if pre.set {
			return change{}, preconditionFailed("tenant %q changed after the If-Match check: %v", id, err)
		}
		if attempt == maxAttempts {
			return change{}, fmt.Errorf("%w (after %d attempts, each overtaken by another change of the tenant; try again)", err, attempt)
		}
		h.logger.Debug("tenant changed meanwhile; reading it again", "tenant", id, "attempt", attempt, "err", err)
	}
}

// audit logs one change: who (the client's address), what, and the
// version it made.
func (h *handler) audit(r *http.Request, op, id string, version uint64, changed []string) {
	h.logger.Info("tenant changed", "op", op, "tenant", id, "version", version, "changed", changed, "remote_addr", r.RemoteAddr)
}

// refused logs a change that was not made, for the audit trail.
func (h *handler) refused(r *http.Request, op, id string, err error) {
	h.logger.Info("tenant change refused", "op", op, "tenant", id, "err", err, "remote_addr", r.RemoteAddr)
}

// diff lists what differs between two versions of a tenant, for the audit
// log: limits and settings with old and new values, token hashes added
// and removed (hashes only; a token never reaches the log).
func diff(old, next cluster.Tenant) []string {
	out := []string{}
	num := func(name string, a, b float64) {
		if a != b {
			out = append(out, fmt.Sprintf("limits.%s: %v -> %v", name, a, b))
		}
	}
	num("ingestion_rate_spans", old.Limits.IngestionRateSpans, next.Limits.IngestionRateSpans)
	num("ingestion_burst_spans", float64(old.Limits.IngestionBurstSpans), float64(next.Limits.IngestionBurstSpans))
	num("ingestion_rate_bytes", old.Limits.IngestionRateBytes, next.Limits.IngestionRateBytes)
	num("max_series_per_tenant", float64(old.Limits.MaxSeriesPerTenant), float64(next.Limits.MaxSeriesPerTenant))
	keys := slices.Sorted(maps.Keys(old.Settings))
	for k := range next.Settings {
		if _, ok := old.Settings[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		a, inOld := old.Settings[k]
		b, inNext := next.Settings[k]
		switch {
		case !inOld:
			out = append(out, fmt.Sprintf("settings.%s: set %q", k, b))
		case !inNext:
			out = append(out, fmt.Sprintf("settings.%s: removed (was %q)", k, a))
		case a != b:
			out = append(out, fmt.Sprintf("settings.%s: %q -> %q", k, a, b))
		}
	}
	for _, hsh := range next.TokenHashes {
		if !slices.Contains(old.TokenHashes, hsh) {
			out = append(out, "token_hashes: added "+auth.FormatHash(hsh))
		}
	}
	for _, hsh := range old.TokenHashes {
		if !slices.Contains(next.TokenHashes, hsh) {
			out = append(out, "token_hashes: removed "+auth.FormatHash(hsh))
		}
	}
	return out
}
