package alerting

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

// Errors of the rule store.
var (
	// ErrNotFound: no such namespace or group.
	ErrNotFound = errors.New("hopwatch/alerting: not found")
	// ErrInvalid wraps every validation failure; the message names the
	// line and column.
	ErrInvalid = errors.New("hopwatch/alerting: invalid rule group")
)

// validName is what a namespace may be called: it becomes a file name.
var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// store keeps the rule groups set through the API, one YAML file per
// tenant and namespace (in Prometheus's rule file format) under dir.
type store struct {
	dir    string
	parser parser.Parser
	logger *slog.Logger
	// replica, when set, holds the API's groups; dir is then its cache.
	replica Replica
	// check tells whether a rule's expression can be evaluated (nil: no
	// check beyond parsing).
	check func(expr string) error
	mtx   sync.Mutex
}

func (s *store) path(tenant, namespace string) string {
	return filepath.Join(s.dir, tenant, namespace+".yaml")
}

// parseGroup validates one rule group in YAML, as sent to the API.
func (s *store) parseGroup(body []byte) (rulefmt.RuleGroup, error) {
	// Validate it as a file of one group, so that errors carry lines of
	// the body: "groups:" and the indentation shift every line by one.
	var probe rulefmt.RuleGroup
	if err := yaml.Unmarshal(body, &probe); err != nil {
		return probe, fmt.Errorf("%w: %s", ErrInvalid, locate(body, err))
	}
	wrapped := "groups:\n" + indent(string(body))
	rgs, errs := rulefmt.Parse([]byte(wrapped), false, model.UTF8Validation, s.parser, s.logger)
	if len(errs) > 0 {
		msgs := make([]string, len(errs))
		for i, e := range errs {
			msgs[i] = shiftLines(e.Error())
			var re *rulefmt.Error
			if !strings.HasPrefix(msgs[i], "line ") && errors.As(e, &re) {
				if l := ruleLine(body, re.Rule); l > 0 {
					msgs[i] = fmt.Sprintf("line %d: %s", l, msgs[i])
				}
			}
		}
		return probe, fmt.Errorf("%w: %s", ErrInvalid, strings.Join(msgs, "; "))
	}
	if len(rgs.Groups) != 1 {
		return probe, fmt.Errorf("%w: want exactly one rule group, got %d", ErrInvalid, len(rgs.Groups))
	}
	if s.check != nil {
		var msgs []string
		for i, rule := range rgs.Groups[0].Rules {
			if err := s.check(rule.Expr); err != nil {
				msgs = append(msgs, fmt.Sprintf("line %d: %s %q cannot be evaluated: %v", ruleLine(body, i+1), ruleKind(rule), rule.Record+rule.Alert, err))
			}
		}
		if len(msgs) > 0 {
			return probe, fmt.Errorf("%w: %s", ErrInvalid, strings.Join(msgs, "; "))
		}
	}
	return rgs.Groups[0], nil
}

// locate adds the line to a decoding error that names a value but not
// where it is (yaml reports the errors of custom types, such as durations,
// without a line).
func locate(body []byte, err error) string {
	msg := err.Error()
	if strings.Contains(msg, "line ") {
		return msg
	}
	i := strings.Index(msg, `"`)
	j := strings.LastIndex(msg, `"`)
	if i < 0 || j <= i+1 {
		return msg
	}
	value := msg[i+1 : j]
	for n, l := range strings.Split(string(body), "\n") {
		if strings.Contains(l, value) {
			return fmt.Sprintf("line %d: %s", n+1, msg)
		}
	}
	return msg
}

// ruleLine returns the line where the n-th rule (1-based) of a group
// starts, or 0.
func ruleLine(body []byte, n int) int {
	seen := 0
	for i, l := range strings.Split(string(body), "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "- alert:") || strings.HasPrefix(t, "- record:") {
			if seen++; seen == n {
				return i + 1
			}
		}
	}
	return 0
}

func indent(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		if i == 0 {
			lines[i] = "- " + l
		} else {
			lines[i] = "  " + l
		}
	}
	return strings.Join(lines, "\n") + "\n"
}

// shiftLines turns "L:C: ..." of the wrapped document back into the
// body's line (one less) and column (two less).
func shiftLines(msg string) string {
	var line, col int
	if n, _ := fmt.Sscanf(msg, "%d:%d:", &line, &col); n == 2 {
		rest := strings.TrimPrefix(msg, fmt.Sprintf("%d:%d:", line, col))
		return fmt.Sprintf("line %d, column %d:%s", line-1, max(1, col-2), rest)
	}
	return msg
}

// readNamespace loads a namespace file; a missing file is an empty one.
func (s *store) readNamespace(tenant, namespace string) (*rulefmt.RuleGroups, error) {
	b, err := os.ReadFile(s.path(tenant, namespace))
	if errors.Is(err, os.ErrNotExist) {
		return &rulefmt.RuleGroups{}, nil
	}
	if err != nil {
		return nil, err
	}
	var rgs rulefmt.RuleGroups
	if err := yaml.Unmarshal(b, &rgs); err != nil {
		return nil, fmt.Errorf("%s: %w", s.path(tenant, namespace), err)
	}
	return &rgs, nil
}

func (s *store) writeNamespace(tenant, namespace string, rgs *rulefmt.RuleGroups) error {
	p := s.path(tenant, namespace)
	if len(rgs.Groups) == 0 {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	b, err := yaml.Marshal(rgs)
	if err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// set adds or replaces a group of a namespace.
func (s *store) set(tenant, namespace string, g rulefmt.RuleGroup) error {
	if !validName.MatchString(namespace) {
		return fmt.Errorf("%w: namespace %q: use letters, digits, '.', '_' and '-' (at most 128)", ErrInvalid, namespace)
	}
	s.mtx.Lock()
	defer s.mtx.Unlock()
	rgs, err := s.readNamespace(tenant, namespace)
	if err != nil {
		return err
	}
	i := slices.IndexFunc(rgs.Groups, func(x rulefmt.RuleGroup) bool { return x.Name == g.Name })
	if i >= 0 {
		rgs.Groups[i] = g
	} else {
		rgs.Groups = append(rgs.Groups, g)
	}
	return s.writeNamespace(tenant, namespace, rgs)
}

// get returns one group.
func (s *store) get(tenant, namespace, group string) (rulefmt.RuleGroup, error) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	if !validName.MatchString(namespace) {
		return rulefmt.RuleGroup{}, ErrNotFound
	}
	rgs, err := s.readNamespace(tenant, namespace)
	if err != nil {
		return rulefmt.RuleGroup{}, err
	}
	for _, g := range rgs.Groups {
		if g.Name == group {
			return g, nil
		}
	}
	return rulefmt.RuleGroup{}, ErrNotFound
}

// delete removes one group, or the whole namespace when group is "".
func (s *store) delete(tenant, namespace, group string) error {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	if !validName.MatchString(namespace) {
		return ErrNotFound
	}
	rgs, err := s.readNamespace(tenant, namespace)
	if err != nil {
		return err
	}
	if len(rgs.Groups) == 0 {
		return ErrNotFound
	}
	if group == "" {
		rgs.Groups = nil
	} else {
		n := len(rgs.Groups)
		rgs.Groups = slices.DeleteFunc(rgs.Groups, func(x rulefmt.RuleGroup) bool { return x.Name == group })
		if len(rgs.Groups) == n {
			return ErrNotFound
		}
	}
	return s.writeNamespace(tenant, namespace, rgs)
}

// list returns a tenant's namespaces with their groups.
func (s *store) list(tenant string) (map[string][]rulefmt.RuleGroup, error) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	out := map[string][]rulefmt.RuleGroup{}
	files, err := filepath.Glob(filepath.Join(s.dir, tenant, "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		ns := strings.TrimSuffix(filepath.Base(f), ".yaml")
		rgs, err := s.readNamespace(tenant, ns)
		if err != nil {
			return nil, err
		}
		out[ns] = rgs.Groups
	}
	return out, nil
}

// files returns the namespace files of every tenant, by tenant.
func (s *store) files() (map[string][]string, error) {
	s.mtx.Lock()
	defer s.mtx.Unlock()
	out := map[string][]string{}
	files, err := filepath.Glob(filepath.Join(s.dir, "*", "*.yaml"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		t := filepath.Base(filepath.Dir(f))
		out[t] = append(out[t], f)
	}
	return out, nil
}

func ruleKind(r rulefmt.Rule) string {
	if r.Alert != "" {
		return "alert"
	}
	return "recording rule"
}
