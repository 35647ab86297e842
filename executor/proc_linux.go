//go:build linux

package executor

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// childSysProcAttr puts a worker child in its own process group (so a
// terminal's Ctrl-C reaches only the supervisor, which then stops the
// children in order) and has the kernel send it SIGTERM when the thread
// that started it dies, which the child takes as "supervisor gone: halt".
func childSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// becomeSubreaper makes orphaned descendants of this process its children
// instead of init's, so the supervisor can kill what dead workers and
// finished tasks left behind.
func becomeSubreaper() error {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_CHILD_SUBREAPER): %w", err)
	}
	return nil
}

// childrenOf lists the processes whose parent is ppid: from the kernel's
// list of each of its threads' children (/proc/PID/task/TID/children) when
// the kernel keeps them, a few small reads; else by reading the stat of
// every process of the machine. A child that starts or exits during the
// call may be missed (the lists are not a snapshot); the supervisor scans
// again every ReapInterval.
func childrenOf(ppid int) ([]procInfo, error) {
	if out, ok := childrenFromTasks(ppid); ok {
		return out, nil
	}
	return childrenByScan(ppid)
}

// childrenFromTasks reads the children of ppid from the lists of its
// threads (a process re-parented to a subreaper goes to one of its
// threads); ok is false when the kernel has no such lists
// (CONFIG_PROC_CHILDREN) or ppid is gone.
func childrenFromTasks(ppid int) (out []procInfo, ok bool) {
	dir := filepath.Join("/proc", strconv.Itoa(ppid), "task")
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, false
	}
	listed := false
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join(dir, task.Name(), "children"))
		if err != nil {
			continue // the thread exited meanwhile, or no lists at all (below)
		}
		listed = true
		for _, f := range strings.Fields(string(b)) {
			if p, ok := childStat(f, ppid); ok {
				out = append(out, p)
			}
		}
	}
	return out, listed
}

// childrenByScan finds the children of ppid in the stat of every process.
func childrenByScan(ppid int) ([]procInfo, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var out []procInfo
	for _, e := range entries {
		if p, ok := childStat(e.Name(), ppid); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// childStat reads the stat of process name (a /proc entry); ok is false
// when name is not a process, it exited meanwhile or ppid is not its
// parent.
func childStat(name string, ppid int) (procInfo, bool) {
	pid, err := strconv.Atoi(name)
	if err != nil {
		return procInfo{}, false
	}
	b, err := os.ReadFile(filepath.Join("/proc", name, "stat"))
	if err != nil {
		return procInfo{}, false
	}
	p, err := parseStat(b)
	if err != nil || p.PID != pid || p.PPID != ppid {
		return procInfo{}, false
	}
	return p, true
}

// processEnvironHas reports whether process pid was started with the
// environment entry kv.
func processEnvironHas(pid int, kv string) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
	return err == nil && environHas(b, kv)
}

// killAndReap SIGKILLs process p and its process group (unless that is
// the caller's own group) and reaps p, which must be a child of the
// caller. It waits at most 200 ms for p to exit: one stuck in the kernel
// stays a zombie until the next scan reaps it.
func killAndReap(p procInfo) {
	if p.State != 'Z' {
		if p.PGID > 0 && p.PGID != syscall.Getpgrp() {
			_ = syscall.Kill(-p.PGID, syscall.SIGKILL)
		}
		_ = syscall.Kill(p.PID, syscall.SIGKILL)
	}
	deadline := time.Now().Add(200 * time.Millisecond)
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(p.PID, &ws, syscall.WNOHANG, nil)
		if pid == p.PID || (err != nil && err != syscall.EINTR) || time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

// killProcessGroup sends sig to the process group pgid.
func killProcessGroup(pgid int, sig syscall.Signal) error {
	return syscall.Kill(-pgid, sig)
}

// limitMemory caps the data segment of process pid (RLIMIT_DATA: its
// heap and other private writable mappings) at bytes. Processes it starts
// afterwards, such as Shell tasks, inherit the limit.
func limitMemory(pid int, bytes int64) error {
	lim := unix.Rlimit{Cur: uint64(bytes), Max: uint64(bytes)}
	return unix.Prlimit(pid, unix.RLIMIT_DATA, &lim, nil)
}
