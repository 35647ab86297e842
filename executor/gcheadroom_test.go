package executor

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		live, headroom uint64
		want           int
	}{
		{4 * mib, 16 * mib, 400}, // a worker's live heap: goal 20 MiB, not 8
		{5 * mib, 16 * mib, 320},
		{3 * mib, 16 * mib, 534}, // rounded up: at least the headroom
		{16 * mib, 16 * mib, 100},
		{64 * mib, 16 * mib, 100}, // a large live heap: the default, never less
		{0, 16 * mib, 1600},       // under 1 MiB counts as 1 MiB
		{4 * mib, 0, 100},
	} {
		if got := gcPercentFor(tc.live, tc.headroom); got != tc.want {
			t.Errorf("gcPercentFor(live %d, headroom %d) = %d, want %d", tc.live, tc.headroom, got, tc.want)
		}
	}
}

// gcPercent reads GOGC (setting it back).
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

func TestKeepGCHeadroom(t *testing.T) {
	before := gcPercent()
	defer debug.SetGCPercent(before)
	debug.SetGCPercent(100)
	unset := func(string) (string, bool) { return "", false }

	// A headroom far above this test binary's live heap: the first
	// collection sets GOGC above 100, as gcPercentFor says.
	adjusted := make(chan int, 1)
	stop := keepGCHeadroom(1<<40, unset, func(p int) {
		select {
		case adjusted <- p:
		default:
		}
	})
	runtime.GC()
	p := <-adjusted
	stop()
	if p <= 100 || gcPercent() != p {
		t.Fatalf("after a collection GOGC = %d (adjusted to %d), want the percent for a 1 TiB headroom, far above 100", gcPercent(), p)
	}
	runtime.GC() // the stopped tuner's last finalizer runs and changes nothing
	runtime.GC()
	debug.SetGCPercent(100)

	// GOGC in the environment wins: nothing is changed.
	stop = keepGCHeadroom(1<<40, func(k string) (string, bool) { return "100", k == "GOGC" }, func(int) {
		t.Error("GOGC adjusted although GOGC is in the environment")
	})
	defer stop()
	runtime.GC()
	runtime.GC()
	if got := gcPercent(); got != 100 {
		t.Fatalf("with GOGC in the environment GOGC = %d, want 100 left alone", got)
	}
}
