package state

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestRetryDelayTable(t *testing.T) {
	const max = time.Duration(math.MaxInt64)
	cases := []struct {
		name       string
		base, cap  time.Duration
		try        int
		jitter     float64
		want       time.Duration
		wantAtMost time.Duration // when non-zero: want ≤ got ≤ wantAtMost
	}{
		{"constant", 10 * time.Second, 0, 1, 0.5, 10 * time.Second, 0},
		{"constant ignores try", 10 * time.Second, 0, 50, 0.9, 10 * time.Second, 0},
		{"first try", time.Second, time.Hour, 1, 0, time.Second, 0},
		{"second try doubles", time.Second, time.Hour, 2, 0, 2 * time.Second, 0},
		{"fifth try", time.Second, time.Hour, 5, 0, 16 * time.Second, 0},
		{"half jitter", time.Second, time.Hour, 3, 0.5, 6 * time.Second, 0},
		{"jitter just below 1", time.Second, time.Hour, 1, 0.999999, time.Second, 2 * time.Second},
		{"capped", time.Second, 10 * time.Second, 5, 0, 10 * time.Second, 0},
		{"jitter capped", time.Second, 10 * time.Second, 4, 0.9, 10 * time.Second, 0},
		{"base above cap", time.Minute, time.Second, 1, 0, time.Second, 0},
		{"try zero is the first", time.Second, time.Hour, 0, 0, time.Second, 0},
		{"negative try", time.Second, time.Hour, -5, 0, time.Second, 0},
		{"zero base", 0, time.Hour, 3, 0.5, 0, 0},
		{"negative base", -time.Second, time.Hour, 3, 0.5, 0, 0},
		{"negative base constant", -time.Second, 0, 3, 0.5, 0, 0},
		{"negative jitter clamped", time.Second, time.Hour, 2, -3, 2 * time.Second, 0},
		{"NaN jitter clamped", time.Second, time.Hour, 2, math.NaN(), 2 * time.Second, 0},
		{"jitter above one clamped", time.Second, time.Hour, 1, 7, time.Second, 2 * time.Second},
		{"try 63", time.Nanosecond, max, 63, 0, 1 << 62, 0},
		{"try 64 overflows to the cap", time.Nanosecond, max, 64, 0, max, 0},
		{"huge try", time.Second, time.Hour, math.MaxInt, 0.5, time.Hour, 0},
		{"max cap with jitter", max / 2, max, 1, 0.99, max / 2, max},
		{"max cap, doubled", max / 2, max, 2, 0.99, max - 1, max},
	}
	for _, c := range cases {
		got := RetryDelay(c.base, c.cap, c.try, c.jitter)
		if c.wantAtMost == 0 && got != c.want {
			t.Errorf("%s: RetryDelay(%v, %v, %d, %v) = %v, want %v", c.name, c.base, c.cap, c.try, c.jitter, got, c.want)
		}
		if c.wantAtMost != 0 && (got < c.want || got > c.wantAtMost) {
			t.Errorf("%s: RetryDelay(%v, %v, %d, %v) = %v, want in [%v, %v]", c.name, c.base, c.cap, c.try, c.jitter, got, c.want, c.wantAtMost)
		}
	}
}

// TestRetryDelayProperties checks, on random inputs, that the delay lies in
// [min(b·2^(try−1), cap), min(2·b·2^(try−1), cap)], never exceeds the cap
// and never shrinks from one try to the next for a fixed jitter.
func TestRetryDelayProperties(t *testing.T) {
	r := rand.New(rand.NewPCG(42, 7))
	for range 20000 {
		base := time.Duration(r.Int64N(int64(time.Hour))) + 1
		capD := time.Duration(r.Int64N(int64(48 * time.Hour)))
		if r.IntN(10) == 0 {
			capD = time.Duration(math.MaxInt64 - r.Int64N(1000))
		}
		try := 1 + r.IntN(80)
		jitter := r.Float64()
		got := RetryDelay(base, capD, try, jitter)
		if got < 0 {
			t.Fatalf("RetryDelay(%v, %v, %d, %v) = %v < 0", base, capD, try, jitter, got)
		}
		if capD == 0 {
			if got != base {
				t.Fatalf("constant RetryDelay(%v, 0, %d) = %v, want base", base, try, got)
			}
			continue
		}
		if got > capD {
			t.Fatalf("RetryDelay(%v, %v, %d, %v) = %v above the cap", base, capD, try, jitter, got)
		}
		// Bounds computed in float64, independently of the integer code.
		exp := float64(base) * math.Pow(2, float64(try-1))
		lo := math.Min(exp, float64(capD))
		hi := math.Min(2*exp, float64(capD))
		if float64(got) < lo*(1-1e-9)-1 || float64(got) > hi*(1+1e-9)+1 {
			t.Fatalf("RetryDelay(%v, %v, %d, %v) = %v, want in [%.0f, %.0f]", base, capD, try, jitter, got, lo, hi)
		}
		if next := RetryDelay(base, capD, try+1, jitter); next < got {
			t.Fatalf("RetryDelay shrinks from try %d (%v) to %d (%v) for base %v cap %v jitter %v",
				try, got, try+1, next, base, capD, jitter)
		}
	}
}

func TestRunOutcome(t *testing.T) {
	cases := []struct {
		leaves []TaskState
		want   RunState
	}{
		{nil, RunSuccess},
		{[]TaskState{Success}, RunSuccess},
		{[]TaskState{Success, Skipped}, RunSuccess},
		{[]TaskState{Skipped, Skipped}, RunSuccess},
		{[]TaskState{Success, Removed}, RunSuccess},
		{[]TaskState{Success, Failed}, RunFailed},
		{[]TaskState{Skipped, UpstreamFailed}, RunFailed},
		{[]TaskState{Failed}, RunFailed},
	}
	for _, c := range cases {
		if got := RunOutcome(c.leaves); got != c.want {
			t.Errorf("RunOutcome(%v) = %s, want %s", c.leaves, got, c.want)
		}
	}
}
