package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/hopwatch/hopwatch/internal/bench"
)

// runBench runs `hopwatch bench <what>`.
func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "storage" {
		return errors.New("usage: hopwatch bench storage [flags]")
	}
	o := bench.DefaultStorageOptions()
	fs := flag.NewFlagSet("hopwatch bench storage", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.Samples, "samples", o.Samples, "samples per dataset")
	fs.IntVar(&o.ChunkSize, "chunk-size", o.ChunkSize, "samples per chunk")
	fs.IntVar(&o.Runs, "runs", o.Runs, "timing repetitions (the median is reported)")
	fs.Uint64Var(&o.Seed, "seed", o.Seed, "dataset seed")
	fs.Var(int32Value{&o.Schema}, "schema", "native histogram schema of the chunk summaries")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.Samples <= 0 || o.ChunkSize <= 0 || o.Runs <= 0 {
		return fmt.Errorf("samples, chunk-size and runs must be positive")
	}
	_, err := bench.Storage(stdout, o)
	return err
}
