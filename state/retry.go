package state

import (
	"math"
	"time"
)

// RetryDelay returns how long to wait before the try after try number try
// (1-based: the try that just failed) of a task with base delay base and
// exponential-backoff cap maxBackoff.
//
//   - maxBackoff == 0: backoff is off and the delay is base on every try;
//     jitter is not applied.
//   - maxBackoff > 0: d = base·2^(try−1), then spread by jitter like
//     Airflow's exponential backoff, which picks a value in [d, 2d):
//     delay = min(d + d·jitter, maxBackoff).
//
// jitter is a random number in [0, 1); values outside are clamped into it.
// The result is never negative (a negative base gives 0), never above
// maxBackoff when backoff is on, and does not overflow for any try number.
// A try below 1 is treated as 1.
func RetryDelay(base, maxBackoff time.Duration, try int, jitter float64) time.Duration {
	if base <= 0 {
		return 0
	}
	if maxBackoff <= 0 {
		return base
	}
	if try < 1 {
		try = 1
	}
	if !(jitter >= 0) { // also catches NaN
		jitter = 0
	}
	if jitter >= 1 {
		jitter = math.Nextafter(1, 0)
	}
	shift := try - 1
	if shift >= 63 || base > maxBackoff>>uint(shift) {
		return maxBackoff
	}
	d := base << uint(shift)
	// d ≤ maxBackoff here; add the jitter without overflowing.
	extra := float64(d) * jitter
	if extra >= float64(maxBackoff-d) {
		return maxBackoff
	}
	return d + time.Duration(extra)
}

// RunOutcome returns the final state of a DAG run whose task instances have
// all finished, from the states of its leaf tasks (tasks without
// downstream tasks). Airflow's rule: failed when any leaf is failed or
// upstream_failed, success otherwise (leaves that succeeded, were skipped
// or were removed). A run without tasks succeeds.
func RunOutcome(leaves []TaskState) RunState {
	for _, s := range leaves {
		if s == Failed || s == UpstreamFailed {
			return RunFailed
		}
	}
	return RunSuccess
}
