package main

import (
	"os/exec"
	"syscall"
)

// setPdeathsig has the kernel SIGKILL the child when this process dies, so
// that a killed benchmark or test leaves no node running. Linux ties it to
// the thread that started the child; Go ends a thread only when a goroutine
// locked to it exits, which hopwatch's commands never do.
func setPdeathsig(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
