//go:build !linux

package bench

import (
	"errors"
	"runtime"
)

// TreeMemory needs /proc; on other systems it reports that it cannot
// measure, and the benchmark leaves out its memory rows.
func TreeMemory(int) (Memory, error) {
	return Memory{}, errors.New("resident memory is only measured on Linux, not on " + runtime.GOOS)
}

// ProcessMemory needs /proc too.
func ProcessMemory(pid int) (Memory, error) { return TreeMemory(pid) }

// askHeapProfile needs /proc to find the worker processes: no profile.
func askHeapProfile(int) {}
