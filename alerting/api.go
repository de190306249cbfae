package alerting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/rules"
	"gopkg.in/yaml.v3"

	"github.com/hopwatch/hopwatch/internal/tenant"
)

// maxRuleGroupBytes bounds a rule group sent to the API.
const maxRuleGroupBytes = 1 << 20

// ConfigHandler serves the ruler configuration API in Mimir's shape, under
// /api/v1/rules/:
//
//	GET    /api/v1/rules/{namespace}           the namespace's groups (YAML)
//	GET    /api/v1/rules/{namespace}/{group}   one group (YAML)
//	POST   /api/v1/rules/{namespace}           add or replace a group (YAML body): 202
//	DELETE /api/v1/rules/{namespace}/{group}   delete a group: 202
//	DELETE /api/v1/rules/{namespace}           delete the namespace: 202
//
// The request's tenant comes from resolver. A change takes effect at once:
// the tenant's rules are reloaded before the answer.
func (r *Ruler) ConfigHandler(resolver tenant.Resolver) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		id, err := resolver.FromHTTP(req)
		if err != nil {
			status := http.StatusBadRequest
			if errors.Is(err, tenant.ErrMissing) {
				status = http.StatusUnauthorized
			}
			writeErr(w, status, "bad_data", err.Error())
			return
		}
		rest := strings.TrimPrefix(req.URL.Path, "/api/v1/rules/")
		parts := strings.Split(strings.Trim(rest, "/"), "/")
		if len(parts) == 0 || parts[0] == "" || len(parts) > 2 {
			writeErr(w, http.StatusNotFound, "not_found", "want /api/v1/rules/{namespace}[/{group}]")
			return
		}
		ns, group := parts[0], ""
		if len(parts) == 2 {
			group = parts[1]
		}
		switch {
		case req.Method == http.MethodGet && group == "":
			all, err := r.store.list(id)
			if err != nil {
				writeErr(w, http.StatusInternalServerError, "internal", err.Error())
				return
			}
			groups, ok := all[ns]
			if !ok {
				writeErr(w, http.StatusNotFound, "not_found", fmt.Sprintf("no rule namespace %q", ns))
				return
			}
			writeYAML(w, map[string][]rulefmt.RuleGroup{ns: groups})
		case req.Method == http.MethodGet:
			g, err := r.store.get(id, ns, group)
			if err != nil {
				r.storeError(w, err, ns, group)
				return
			}
			writeYAML(w, g)
		case req.Method == http.MethodPost && group == "":
			body, err := io.ReadAll(io.LimitReader(req.Body, maxRuleGroupBytes+1))
			if err != nil {
				writeErr(w, http.StatusBadRequest, "bad_data", err.Error())
				return
			}
			if len(body) > maxRuleGroupBytes {
				writeErr(w, http.StatusRequestEntityTooLarge, "bad_data", fmt.Sprintf("rule group larger than %d bytes", maxRuleGroupBytes))
				return
			}
			g, err := r.store.parseGroup(body)
			if err != nil {
				r.storeError(w, err, ns, "")
				return
			}
			set := func() error { return r.store.set(id, ns, g) }
			if r.store.replica != nil {
				set = func() error { return r.store.putReplicated(req.Context(), id, ns, g) }
			}
			if err := set(); err != nil {
				r.storeError(w, err, ns, g.Name)
				return
			}
			r.accepted(w)
		case req.Method == http.MethodDelete:
			del := r.store.delete
			if r.store.replica != nil {
				del = func(id, ns, group string) error { return r.store.deleteReplicated(req.Context(), id, ns, group) }
			}
			if err := del(id, ns, group); err != nil {
				r.storeError(w, err, ns, group)
				return
			}
			r.accepted(w)
		default:
			w.Header().Set("Allow", "GET, POST, DELETE")
			writeErr(w, http.StatusMethodNotAllowed, "bad_data", "use GET, POST (namespace) or DELETE")
		}
	})
}

func (r *Ruler) accepted(w http.ResponseWriter) {
	if err := r.Sync(); err != nil {
		// The store changed; the tenant's previous rules stay in force.
		writeErr(w, http.StatusInternalServerError, "internal", fmt.Sprintf("stored, but reloading failed: %v", err))
		return
	}
	writeJSONStatus(w, http.StatusAccepted, map[string]string{"status": "success"})
}

func (r *Ruler) storeError(w http.ResponseWriter, err error, ns, group string) {
	switch {
	case errors.Is(err, ErrInvalid):
		writeErr(w, http.StatusBadRequest, "bad_data", err.Error())
	case errors.Is(err, ErrNotFound):
		what := fmt.Sprintf("namespace %q", ns)
		if group != "" {
			what = fmt.Sprintf("group %q in namespace %q", group, ns)
		}
		writeErr(w, http.StatusNotFound, "not_found", "no rule "+what)
	case errors.Is(err, ErrUnavailable):
		w.Header().Set("Retry-After", "1")
		writeErr(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	default:
		writeErr(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

func writeYAML(w http.ResponseWriter, v any) {
	b, err := yaml.Marshal(v)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, "internal", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(b)
}

func writeJSONStatus(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, typ, msg string) {
	writeJSONStatus(w, status, map[string]string{"status": "error", "errorType": typ, "error": msg})
}

// RulesRetriever returns what /api/v1/rules and /api/v1/alerts show for
// the tenant in ctx.
func (r *Ruler) RulesRetriever(ctx context.Context) RulesSource {
	id, _ := tenant.From(ctx)
	if m := r.Manager(id); m != nil {
		return m
	}
	return noRules{}
}

// RulesSource is what Prometheus's API reads rules and alerts from.
type RulesSource interface {
	RuleGroups() []*rules.Group
	AlertingRules() []*rules.AlertingRule
}

type noRules struct{}

func (noRules) RuleGroups() []*rules.Group           { return nil }
func (noRules) AlertingRules() []*rules.AlertingRule { return nil }
