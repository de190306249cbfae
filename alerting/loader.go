package alerting

import (
	"errors"
	"fmt"
	"os"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"gopkg.in/yaml.v3"
)

// checkedLoader loads rule files for the rules managers so that one bad
// rule never takes the others down: a file that does not parse as a whole
// loads group by group, a group that does not parse is skipped, and a rule
// whose expression fails Options.CheckExpr is skipped; each skip is logged
// and counted. Stored rules were checked when they were accepted, but a
// file edited by hand, or a rule stored by an older version, must not
// keep a node from starting.
type checkedLoader struct{ r *Ruler }

var _ interface {
	Load(string, bool, model.ValidationScheme) (*rulefmt.RuleGroups, []error)
	Parse(string) (parser.Expr, error)
} = checkedLoader{}

func (l checkedLoader) Load(file string, ignoreUnknownFields bool, scheme model.ValidationScheme) (*rulefmt.RuleGroups, []error) {
	rgs, errs := rulefmt.ParseFile(file, ignoreUnknownFields, scheme, l.r.parser, l.r.logger)
	if len(errs) > 0 {
		rgs = l.byGroup(file, ignoreUnknownFields, scheme, errors.Join(errs...))
	}
	for gi := range rgs.Groups {
		g := &rgs.Groups[gi]
		kept := g.Rules[:0]
		for _, rule := range g.Rules {
			if err := l.r.checkExpr(rule.Expr); err != nil {
				l.skip("rule", file, "group", g.Name, "rule", rule.Record+rule.Alert, "err", err)
				continue
			}
			kept = append(kept, rule)
		}
		g.Rules = kept
	}
	return rgs, nil
}

// byGroup loads the groups of a file that does not load as a whole.
func (l checkedLoader) byGroup(file string, ignoreUnknownFields bool, scheme model.ValidationScheme, fileErr error) *rulefmt.RuleGroups {
	out := &rulefmt.RuleGroups{}
	b, err := os.ReadFile(file)
	if err != nil {
		l.skip("rule file", file, "err", err)
		return out
	}
	var doc struct {
		Groups []yaml.Node `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &doc); err != nil {
		l.skip("rule file", file, "err", fmt.Errorf("%w (%w)", err, fileErr))
		return out
	}
	for i := range doc.Groups {
		one, err := yaml.Marshal(map[string][]*yaml.Node{"groups": {&doc.Groups[i]}})
		if err != nil {
			l.skip("rule group", file, "index", i, "err", err)
			continue
		}
		rgs, errs := rulefmt.Parse(one, ignoreUnknownFields, scheme, l.r.parser, l.r.logger)
		if len(errs) > 0 {
			l.skip("rule group", file, "index", i, "err", errors.Join(errs...))
			continue
		}
		out.Groups = append(out.Groups, rgs.Groups...)
	}
	return out
}

func (l checkedLoader) skip(what, file string, args ...any) {
	l.r.own.skipped.Inc()
	l.r.logger.Error("skipping a "+what+" that cannot be loaded; the rest load", append([]any{"file", file}, args...)...)
}

func (l checkedLoader) Parse(query string) (parser.Expr, error) { return l.r.parser.ParseExpr(query) }

// checkExpr applies Options.CheckExpr, a panic of which is a failure.
func (r *Ruler) checkExpr(expr string) (err error) {
	if r.opts.CheckExpr == nil {
		return nil
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("checking the expression panicked: %v", p)
		}
	}()
	return r.opts.CheckExpr(expr)
}
