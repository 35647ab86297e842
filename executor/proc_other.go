//go:build unix && !linux

package executor

import (
	"errors"
	"syscall"
)

// childSysProcAttr puts a worker child in its own process group. Without
// Pdeathsig, a child notices its supervisor died by its parent pid
// changing (checked every second).
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// becomeSubreaper does nothing on this platform: orphans go to init.
func becomeSubreaper() error { return nil }

// childrenOf lists no processes on this platform: orphan cleanup is
// Linux-only.
func childrenOf(int) ([]procInfo, error) { return nil, nil }

// processEnvironHas is false on this platform.
func processEnvironHas(int, string) bool { return false }

// killAndReap SIGKILLs p's process group and p and reaps p if it has
// exited.
func killAndReap(p procInfo) {
	if p.PGID > 0 && p.PGID != syscall.Getpgrp() {
		_ = syscall.Kill(-p.PGID, syscall.SIGKILL)
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	var ws syscall.WaitStatus
	_, _ = syscall.Wait4(p.PID, &ws, syscall.WNOHANG, nil)
}

// killProcessGroup sends sig to the process group pgid.
func killProcessGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}

// limitMemory is not supported on this platform.
func limitMemory(int, int64) error {
	return errors.New("a worker memory limit is supported on Linux only")
}
