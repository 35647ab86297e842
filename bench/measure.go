package bench

import (
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Distribution summarises durations.
type Distribution struct {
	N             int
	P50, P99, Max time.Duration
	Mean          time.Duration
}

// Summarize returns the distribution of ds (nearest-rank percentiles; the
// zero Distribution for no durations). ds is not modified.
func Summarize(ds []time.Duration) Distribution {
	if len(ds) == 0 {
		return Distribution{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Distribution{
		N:    len(s),
		P50:  Percentile(s, 50),
		P99:  Percentile(s, 99),
		Max:  s[len(s)-1],
		Mean: sum / time.Duration(len(s)),
	}
}

// Percentile returns the p-th percentile (0 < p ≤ 100) of sorted by the
// nearest-rank method: the smallest value with at least p% of the values
// at or below it. It returns 0 for an empty slice.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// RunTiming holds the times the store recorded for a finished run.
type RunTiming struct {
	Queued, Started, Ended time.Time
}

// Creation is how long the run took from being queued (the trigger) to
// being started, which for a manual run is creating it with all its task
// instances and admitting it.
func (t RunTiming) Creation() time.Duration { return t.Started.Sub(t.Queued) }

// Execution is from the run's start to its end.
func (t RunTiming) Execution() time.Duration { return t.Ended.Sub(t.Started) }

// Total is from the trigger to the run's end.
func (t RunTiming) Total() time.Duration { return t.Ended.Sub(t.Queued) }

// TimingOf returns the recorded times of run r, which must have
// succeeded.
func TimingOf(r store.Run) (RunTiming, error) {
	if r.State != state.RunSuccess {
		return RunTiming{}, fmt.Errorf("run %q of DAG %q is %s, want success", r.RunID, r.DAGID, r.State)
	}
	if r.StartedAt == nil || r.EndedAt == nil {
		return RunTiming{}, fmt.Errorf("run %q of DAG %q succeeded without a recorded start and end", r.RunID, r.DAGID)
	}
	t := RunTiming{Queued: r.QueuedAt, Started: *r.StartedAt, Ended: *r.EndedAt}
	if t.Started.Before(t.Queued) || t.Ended.Before(t.Started) {
		return RunTiming{}, fmt.Errorf("run %q of DAG %q: recorded times out of order (queued %s, started %s, ended %s)",
			r.RunID, r.DAGID, stamp(t.Queued), stamp(t.Started), stamp(t.Ended))
	}
	return t, nil
}

// CheckSucceeded reports task instances that did not succeed, and a count
// other than want, in one error that counts the instances by state.
func CheckSucceeded(tis []store.TaskInstance, want int) error {
	byState := map[state.TaskState]int{}
	for _, ti := range tis {
		byState[ti.State]++
	}
	if len(tis) == want && byState[state.Success] == want {
		return nil
	}
	return fmt.Errorf("%d task instances (want %d all success), by state: %v", len(tis), want, byState)
}

// EdgeLatencies returns, for each consecutive pair of line (task ids in
// order along a chain), the downstream task's recorded start minus the
// upstream task's recorded end.
func EdgeLatencies(tis []store.TaskInstance, line []string) ([]time.Duration, error) {
	byID := make(map[string]store.TaskInstance, len(tis))
	for _, ti := range tis {
		byID[ti.TaskID] = ti
	}
	out := make([]time.Duration, 0, max(len(line)-1, 0))
	for i := 1; i < len(line); i++ {
		up, ok1 := byID[line[i-1]]
		down, ok2 := byID[line[i]]
		switch {
		case !ok1 || !ok2:
			return nil, fmt.Errorf("edge %s -> %s: task instance missing", line[i-1], line[i])
		case up.EndedAt == nil:
			return nil, fmt.Errorf("edge %s -> %s: upstream has no recorded end", line[i-1], line[i])
		case down.StartedAt == nil:
			return nil, fmt.Errorf("edge %s -> %s: downstream has no recorded start", line[i-1], line[i])
		}
		out = append(out, down.StartedAt.Sub(*up.EndedAt))
	}
	return out, nil
}

// FireWindow is the span of data-interval ends a cron measurement counts:
// [From, To], both on the grid of Every (multiples of Every since the
// Unix epoch; the cron DAGs' start date lies on that grid).
type FireWindow struct {
	From, To time.Time
	Every    time.Duration
}

// NewFireWindow returns the window of n interval ends of every starting
// at the first grid instant at or after notBefore.
func NewFireWindow(notBefore time.Time, every time.Duration, n int) FireWindow {
	from := notBefore.Truncate(every)
	if from.Before(notBefore) {
		from = from.Add(every)
	}
	return FireWindow{From: from, To: from.Add(time.Duration(n-1) * every), Every: every}
}

// Ends returns how many grid instants lie in the window.
func (w FireWindow) Ends() int {
	if w.Every <= 0 || w.To.Before(w.From) {
		return 0
	}
	first := w.From.Truncate(w.Every)
	if first.Before(w.From) {
		first = first.Add(w.Every)
	}
	if first.After(w.To) {
		return 0
	}
	return int(w.To.Sub(first)/w.Every) + 1
}

// Contains reports whether t lies in [From, To].
func (w FireWindow) Contains(t time.Time) bool { return !t.Before(w.From) && !t.After(w.To) }

// FireLags returns, for every scheduled run whose data interval ends in
// w, its recorded queued time minus the end of its interval.
func FireLags(runs []store.Run, w FireWindow) []time.Duration {
	var out []time.Duration
	for _, r := range runs {
		if r.RunType == store.RunScheduled && w.Contains(r.IntervalEnd) {
			out = append(out, r.QueuedAt.Sub(r.IntervalEnd))
		}
	}
	return out
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
