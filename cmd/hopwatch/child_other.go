//go:build !linux

package main

import "os/exec"

// setPdeathsig does nothing outside Linux: children are killed by the
// defers of whoever started them.
func setPdeathsig(*exec.Cmd) {}
