package query

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/timestamp"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
)

// What a request may ask before any query runs: bounds on its PromQL
// text, on the nesting of it, and on subquery steps; and a recovered
// panic answered as an error instead of a dropped connection.

// maxNesting bounds the depth of parentheses, brackets and braces in a
// PromQL text. The parser's cost grows with the square of the tree's
// depth (32,000 nested parentheses take 2 s); no real query nests 1,000
// levels.
const maxNesting = 1000

// maxOperators bounds the binary operators of a PromQL text. A chain of
// them (1+1+...+1) is a tree as deep as it is long, and the parser's cost
// grows with the square of that: 32,000 terms (64 KiB) take 6 s of CPU,
// 2,000 terms 35 ms. Queries written by people or dashboards have tens.
const maxOperators = 1000

// Refusal reasons of the request checks.
const (
	reasonExpressionSize = "max_expression_size"
	reasonNesting        = "max_nesting"
	reasonOperators      = "max_operators"
	reasonSubquerySteps  = "max_subquery_steps"
	reasonPanic          = "panic"
)

// checkText refuses PromQL texts (a query and its match[] selectors)
// longer together than --query.max-expression-size-bytes, nested deeper
// than maxNesting, or with more than maxOperators binary operators.
func (l *limiter) checkText(texts ...string) error {
	n := 0
	for _, s := range texts {
		n += len(s)
	}
	if l.maxExpressionBytes > 0 && n > l.maxExpressionBytes {
		return l.refuse(&limitError{http.StatusBadRequest, "bad_data", reasonExpressionSize,
			fmt.Sprintf("the query expression is %d bytes, over the limit of %d (--query.max-expression-size-bytes); shorten the query or its match[] selectors", n, l.maxExpressionBytes)})
	}
	for _, s := range texts {
		d, ops := shape(s)
		if d > maxNesting {
			return l.refuse(&limitError{http.StatusBadRequest, "bad_data", reasonNesting,
				fmt.Sprintf("the query nests parentheses, brackets or braces %d levels deep, over the limit of %d", d, maxNesting)})
		}
		if ops > maxOperators {
			return l.refuse(&limitError{http.StatusBadRequest, "bad_data", reasonOperators,
				fmt.Sprintf("the query has %d binary operators, over the limit of %d; split it into several queries or recording rules", ops, maxOperators)})
		}
	}
	return nil
}

// shape returns the deepest nesting of (), [] and {} in s, and (an upper
// bound of) its binary operators: arithmetic and comparison operators and
// the set operators and, or, unless, atan2, outside string literals and
// label matchers. A sign or an exponent's minus counts too: the bound is
// generous, not exact.
func shape(s string) (deepest, operators int) {
	depth, braces := 0, 0
	var quote byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if quote != 0 {
			switch {
			case c == '\\' && quote != '`':
				i++
			case c == quote:
				quote = 0
			}
			continue
		}
		switch c {
		case '"', '\'', '`':
			quote = c
		case '(', '[', '{':
			depth++
			deepest = max(deepest, depth)
			if c == '{' {
				braces++
			}
		case ')', ']', '}':
			depth--
			if c == '}' {
				braces--
			}
		case '#': // a comment runs to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case '+', '-', '*', '/', '%', '^', '<', '>':
			if braces <= 0 {
				operators++
			}
		case '=', '!':
			// ==, != between expressions; a matcher's =, =~, !=, !~ is
			// inside braces. The second character of <=, >=, == is not
			// another operator.
			if braces <= 0 && i+1 < len(s) && s[i+1] == '=' {
				operators++
				i++
			}
		default:
			if isWordStart(s, i) {
				j := i
				for j < len(s) && isWordByte(s[j]) {
					j++
				}
				switch strings.ToLower(s[i:j]) {
				case "and", "or", "unless", "atan2":
					if braces <= 0 {
						operators++
					}
				}
				i = j - 1
			}
		}
	}
	return deepest, operators
}

func isWordByte(c byte) bool {
	return c == '_' || c == ':' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// isWordStart tells whether an identifier starts at s[i].
func isWordStart(s string, i int) bool {
	return isWordByte(s[i]) && (i == 0 || !isWordByte(s[i-1]))
}

// parse parses qs within ctx: a text within the limits parses in bounded
// time, but that time can still exceed what is left of --query.timeout.
// The parse then finishes on its own in the background.
func (a *API) parse(ctx context.Context, qs string) (parser.Expr, error) {
	type result struct {
		expr parser.Expr
		err  error
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{err: fmt.Errorf("hopwatch/query: parsing panicked: %v", p)}
			}
		}()
		e, err := a.parser.ParseExpr(qs)
		done <- result{e, err}
	}()
	select {
	case r := <-done:
		return r.expr, r.err
	case <-ctx.Done():
		return nil, fastPathError(fmt.Errorf("parsing the query: %w", ctx.Err()))
	}
}

// checkSubqueries refuses an expression any of whose subqueries would be
// evaluated at more than --query.max-subquery-steps steps on grid g, the
// way the engine lays out their steps.
func (l *limiter) checkSubqueries(expr parser.Expr, g evalGrid, noStep time.Duration) error {
	if l.maxSubquerySteps <= 0 {
		return nil
	}
	var err error
	walkGrids(expr, g, noStep.Milliseconds(), func(n parser.Node, g evalGrid) bool {
		if _, ok := n.(*parser.SubqueryExpr); !ok || err != nil {
			return err == nil
		}
		if steps := g.steps(); steps > int64(l.maxSubquerySteps) {
			sq := n.(*parser.SubqueryExpr)
			err = l.refuse(&limitError{http.StatusUnprocessableEntity, "execution", reasonSubquerySteps,
				fmt.Sprintf("the subquery %s would be evaluated at %d steps, over the limit of %d (--query.max-subquery-steps); use a larger subquery step or a shorter range", sq.String(), steps, l.maxSubquerySteps)})
			return false
		}
		return true
	})
	return err
}

// steps is the number of evaluation times of g.
func (g evalGrid) steps() int64 {
	if g.step <= 0 || g.end < g.start {
		return 1
	}
	return (g.end-g.start)/g.step + 1
}

// walkGrids calls f for every node of expr with the grid the engine
// evaluates it on (a subquery node gets the grid of its inner expression);
// f returns whether to descend.
func walkGrids(expr parser.Expr, g evalGrid, noStep int64, f func(parser.Node, evalGrid) bool) {
	var walk func(n parser.Node, g evalGrid)
	walk = func(n parser.Node, g evalGrid) {
		if sq, ok := n.(*parser.SubqueryExpr); ok {
			g = subqueryGrid(g, sq, noStep)
		}
		if !f(n, g) {
			return
		}
		for _, c := range parser.Children(n) {
			walk(c, g)
		}
	}
	walk(expr, g)
}

// subqueryGrid is the grid the engine evaluates sq's inner expression on
// when sq itself is evaluated on outer (promql's subqueryEvaluationTimes).
func subqueryGrid(outer evalGrid, sq *parser.SubqueryExpr, noStep int64) evalGrid {
	offset := sq.OriginalOffset.Milliseconds()
	rng := sq.Range.Milliseconds()
	step := noStep
	if sq.Step != 0 {
		step = sq.Step.Milliseconds()
	}
	step = max(step, 1)
	start, end := outer.start, outer.end
	switch {
	case sq.Timestamp != nil:
		start, end = *sq.Timestamp, *sq.Timestamp
	case sq.StartOrEnd == parser.START:
		end = start
	case sq.StartOrEnd == parser.END:
		start = end
	case outer.step > 0:
		end = start + ((end-start)/outer.step)*outer.step
	}
	subStart := step * ((start - offset - rng) / step)
	if subStart <= start-offset-rng {
		subStart += step
	}
	return evalGrid{start: subStart, end: end - offset, step: step}
}

// recoverPanics answers a request whose handling panicked with a 500 in
// Prometheus's error envelope, counts it and logs the stack, so that no
// query can end the connection without an answer.
func (a *API) recoverPanics(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler { //nolint:errorlint // net/http compares it the same way
				panic(p)
			}
			a.metrics.refused.WithLabelValues(reasonPanic).Inc()
			a.logger.Error("query panicked", "path", r.URL.Path, "query", r.Form.Get("query"), "panic", p, "stack", string(debug.Stack()))
			writeError(w, http.StatusInternalServerError, "internal", fmt.Sprintf("the query could not be evaluated (internal error: %v)", p))
		}()
		next.ServeHTTP(w, r)
	})
}

// guard applies the checks every request of the API gets before anything
// else: the bounds on its PromQL text, and --query.timeout over the whole
// request, parsing included.
func (a *API) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			writeError(w, http.StatusBadRequest, "bad_data", fmt.Sprintf("invalid form: %v", err))
			return
		}
		texts := append([]string{r.Form.Get("query")}, r.Form["match[]"]...)
		if err := a.limits.checkText(texts...); err != nil {
			a.writeLimitError(w, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), a.opts.Timeout)
		defer cancel()
		ctx = withQueryLimits(ctx, a.limits.forQuery())
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// errPanic is an evaluation that panicked.
var errPanic = errors.New("hopwatch/query: evaluation panicked")

// CheckRule tells whether a rule's expression can be evaluated: it parses
// it as the API does, applies the same bounds, and evaluates it once over
// no data with the same engine. The ruler refuses rules that fail it.
func (a *API) CheckRule(qs string) (err error) {
	if err := a.limits.checkText(qs); err != nil {
		return err
	}
	expr, err := a.parser.ParseExpr(qs)
	if err != nil {
		return err
	}
	now := timestamp.FromTime(time.Now())
	if err := a.limits.checkSubqueries(expr, evalGrid{start: now, end: now, step: 1}, a.opts.NoStepSubqueryInterval); err != nil {
		return err
	}
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: %v", errPanic, p)
		}
	}()
	empty := storage.QueryableFunc(func(int64, int64) (storage.Querier, error) { return storage.NoopQuerier(), nil })
	ctx, cancel := context.WithTimeout(context.Background(), a.opts.Timeout)
	defer cancel()
	q, err := a.engine.NewInstantQuery(ctx, empty, nil, qs, time.Now())
	if err != nil {
		return err
	}
	defer q.Close()
	return q.Exec(ctx).Err
}
