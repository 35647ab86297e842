//go:build !linux

package bench

import (
	"errors"
	"runtime"
	"time"
)

// TreeCPU needs /proc; on other systems the deferred scenario cannot
// measure its CPU.
func TreeCPU(int) (time.Duration, error) {
	return 0, errors.New("CPU time of a process tree is only measured on Linux, not on " + runtime.GOOS)
}

// ProcCPU needs /proc too.
func ProcCPU(int) (time.Duration, error) {
	return 0, errors.New("CPU time of a process is only measured on Linux, not on " + runtime.GOOS)
}

// ThreadCPU needs Linux's RUSAGE_THREAD.
func ThreadCPU() (time.Duration, error) {
	return 0, errors.New("CPU time of a thread is only measured on Linux, not on " + runtime.GOOS)
}
