package cluster

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/stretchr/testify/require"
)

// raft logs configurations as `"servers", hclog.Fmt("%+v", servers)`: the
// adapter must print the formatted value, not "[%+v [...]]".
func TestHCLogFormatsValues(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLog(slog.New(slog.NewTextHandler(&buf, nil)), "raft")
	servers := []struct{ ID, Address string }{{"n1", "127.0.0.1:9801"}}
	l.Info("updating configuration", "servers", hclog.Fmt("%+v", servers), "mask", hclog.Hex(255), "q", hclog.Quote("a b"))
	l.With("progress", hclog.Fmt("%0.2f%%", 12.5)).Warn("restoring")

	out := buf.String()
	require.Contains(t, out, `servers="[{ID:n1 Address:127.0.0.1:9801}]"`)
	require.Contains(t, out, "mask=0xff")
	require.Contains(t, out, `q="\"a b\""`)
	require.Contains(t, out, `progress=12.50%`)
	require.NotContains(t, out, "%+v")
	require.NotContains(t, out, "%0.2f")
}
