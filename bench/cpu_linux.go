package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"syscall"
	"time"
)

// clockTicks is the unit of utime and stime in /proc/PID/stat (USER_HZ).
const clockTicks = 100

// TreeCPU returns the CPU time (user and system) used so far by root and
// its descendants alive now, read from /proc.
func TreeCPU(root int) (time.Duration, error) {
	pids, err := tree(root)
	if err != nil {
		return 0, err
	}
	var ticks uint64
	for _, pid := range pids {
		ticks += procTicks(pid)
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// ProcCPU returns the CPU time (user and system) used so far by process
// pid alone, read from /proc.
func ProcCPU(pid int) (time.Duration, error) {
	if _, err := os.Stat(fmt.Sprintf("/proc/%d/stat", pid)); err != nil {
		return 0, err
	}
	return time.Duration(procTicks(pid)) * time.Second / clockTicks, nil
}

// procTicks returns utime + stime of pid (0 when it exited meanwhile).
func procTicks(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0
	}
	u, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	s, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return u + s
}

// ThreadCPU returns the CPU time (user and system) used so far by the
// calling thread; lock the goroutine to its thread around two reads.
func ThreadCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0, fmt.Errorf("getrusage(RUSAGE_THREAD): %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// rusageThread is Linux's RUSAGE_THREAD, which package syscall does not name.
const rusageThread = 1
