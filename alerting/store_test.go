package alerting

import (
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"
)

func TestParseGroupNamesTheLine(t *testing.T) {
	s := &store{dir: t.TempDir(), parser: parser.NewParser(parser.Options{})}
	for _, tc := range []struct{ body, want string }{
		{"name: g\nrules:\n  - alert: A\n    expr: sum(rate(x[5m])\n", "line 4"},
		{"name: g\nrules:\n  - record: r\n    expr: up\n    for: 1m\n", "line 3"},
		{"name: g\nrules:\n  - alert: A\n    expr: up\n    for: forever\n", "line 5"},
		{"name: [\n", "yaml"},
		{"name: g\nrules:\n  - alert: A\n    expr: up\n    labels:\n      severity: '{{ .Bad'\n", "line 3"},
	} {
		_, err := s.parseGroup([]byte(tc.body))
		require.ErrorIs(t, err, ErrInvalid, tc.body)
		require.ErrorContains(t, err, tc.want, tc.body)
	}
	g, err := s.parseGroup([]byte("name: g\ninterval: 5s\nrules:\n  - alert: A\n    expr: up == 0\n    for: 1m\n"))
	require.NoError(t, err)
	require.Equal(t, "g", g.Name)
}
