//go:build unix

// Package cputime reads the CPU time of this process, for benchmarks that
// report CPU per operation beside wall time (cpu-ns/op): a batch of work
// spread over goroutines, the collector and the kernel shows there.
package cputime

import (
	"syscall"
	"testing"
	"time"
)

// Process is the CPU time (user and system) this process has used so far.
func Process() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// Meter measures a benchmark's CPU from Start to Report.
type Meter struct {
	b     *testing.B
	start time.Duration
}

// Start reads the process's CPU time for b.
func Start(b *testing.B) Meter {
	d, err := Process()
	if err != nil {
		b.Fatal(err)
	}
	return Meter{b: b, start: d}
}

// Report stops b's timer and reports the CPU used since Start per
// operation, as cpu-ns/op.
func (m Meter) Report() {
	m.b.StopTimer()
	d, err := Process()
	if err != nil {
		m.b.Fatal(err)
	}
	m.b.ReportMetric(float64((d-m.start).Nanoseconds())/float64(m.b.N), "cpu-ns/op")
}
