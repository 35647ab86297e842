package cli

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/executor"
)

// TestSystemdUnit: the shipped unit signals only the main process on stop
// (KillMode=mixed) and gives it time for the default grace periods before
// systemd SIGKILLs what is left.
func TestSystemdUnit(t *testing.T) {
	b, err := os.ReadFile("../deploy/trellis.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && !strings.HasPrefix(k, "#") {
			keys[k] = v
		}
	}
	if keys["KillMode"] != "mixed" {
		t.Errorf("KillMode = %q, want mixed", keys["KillMode"])
	}
	if !strings.Contains(keys["ExecStart"], "trellis serve") {
		t.Errorf("ExecStart = %q, want trellis serve", keys["ExecStart"])
	}
	stop, err := time.ParseDuration(keys["TimeoutStopSec"] + "s")
	if err != nil {
		t.Fatalf("TimeoutStopSec = %q: %v", keys["TimeoutStopSec"], err)
	}
	if need := executor.DefaultGrace + executor.DefaultKillGrace + 5*time.Second; stop < need {
		t.Errorf("TimeoutStopSec = %v, want at least %v (grace + kill grace + a margin)", stop, need)
	}
}
