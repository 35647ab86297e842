package state

import "testing"

func TestSummary(t *testing.T) {
	for _, c := range []struct {
		name   string
		counts map[TaskState]int
		want   TaskState
	}{
		{"empty", nil, None},
		{"all succeeded", map[TaskState]int{Success: 12}, Success},
		{"success and skipped", map[TaskState]int{Success: 3, Skipped: 1}, Success},
		{"one running", map[TaskState]int{Success: 30, Running: 1, Queued: 4}, Running},
		{"waiting callers", map[TaskState]int{Success: 3, Deferred: 2, Queued: 1}, Deferred},
		{"queued only", map[TaskState]int{Queued: 2, Success: 0}, Queued},
		{"any failed", map[TaskState]int{Success: 30, Running: 2, Failed: 1}, Failed},
		{"retrying beats running", map[TaskState]int{Running: 2, UpForRetry: 1}, UpForRetry},
		{"zero counts ignored", map[TaskState]int{Failed: 0, Success: 1}, Success},
	} {
		if got := Summary(c.counts); got != c.want {
			t.Errorf("%s: Summary(%v) = %s, want %s", c.name, c.counts, got, c.want)
		}
	}
}

// TestSummaryProperties: the summary is a state of the group, and adding
// a failed instance to any group makes it failed.
func TestSummaryProperties(t *testing.T) {
	for mask := 1; mask < 1<<len(TaskStates); mask++ {
		counts := map[TaskState]int{}
		for i, s := range TaskStates {
			if mask&(1<<i) != 0 {
				counts[s] = i + 1
			}
		}
		if got := Summary(counts); counts[got] == 0 {
			t.Fatalf("Summary(%v) = %s, not a state of the group", counts, got)
		}
		counts[Failed]++
		if got := Summary(counts); got != Failed {
			t.Fatalf("Summary(%v) = %s with a failed instance", counts, got)
		}
	}
}
