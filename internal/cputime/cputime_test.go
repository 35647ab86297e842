//go:build unix

package cputime

import (
	"testing"
	"time"
)

// TestProcessGrows: a busy loop shows in the process's CPU time.
func TestProcessGrows(t *testing.T) {
	t0, err := Process()
	if err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
	}
	t1, err := Process()
	if err != nil {
		t.Fatal(err)
	}
	if d := t1 - t0; d < 20*time.Millisecond {
		t.Fatalf("50 ms of busy loop added %v of CPU time, want at least 20 ms", d)
	}
}
