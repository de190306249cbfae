package main

import (
	"bytes"
	"flag"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/hopwatch/hopwatch/internal/server"
)

// TestEveryFlagIsDocumented keeps docs/configuration.md complete: each
// flag has a row naming it.
func TestEveryFlagIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	require.NoError(t, err)
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	cfg := server.DefaultConfig()
	var lo logOptions
	var file string
	registerFlags(fs, &cfg, &lo, &file)
	fs.SetOutput(&bytes.Buffer{})
	fs.VisitAll(func(f *flag.Flag) {
		require.True(t, strings.Contains(string(doc), "| `"+f.Name+"` |"), "flag %s is missing from docs/configuration.md", f.Name)
	})
}
