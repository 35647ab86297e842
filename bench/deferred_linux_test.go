package bench

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// The sensors' check is calibrated while its release file is missing;
// once the file exists the calibration refuses (the check no longer does
// the work it measures).
func TestSensorCheckCPU(t *testing.T) {
	release := filepath.Join(t.TempDir(), "release")
	d, err := sensorCheckCPU(release)
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > time.Millisecond {
		t.Errorf("sensorCheckCPU = %v, want a stat's cost (over 0, under 1 ms)", d)
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := sensorCheckCPU(release); err == nil || !strings.Contains(err.Error(), "answered true") {
		t.Errorf("sensorCheckCPU with the file released: %v, want an error saying the check answered true", err)
	}
}

// ThreadCPU grows with work done on the calling thread.
func TestThreadCPU(t *testing.T) {
	runtime.LockOSThread() // else the two reads may be of two threads
	defer runtime.UnlockOSThread()
	t0, err := ThreadCPU()
	if err != nil {
		t.Fatal(err)
	}
	x := 0
	for i := range 50_000_000 {
		x ^= i * 7
	}
	t1, err := ThreadCPU()
	if err != nil {
		t.Fatal(err)
	}
	if t1 <= t0 {
		t.Errorf("ThreadCPU did not grow over a busy loop (%v → %v, %d)", t0, t1, x)
	}
}
