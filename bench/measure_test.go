package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func ms(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func TestPercentileNearestRank(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(float64(i + 1))
	}
	for _, tc := range []struct {
		in   []time.Duration
		p    float64
		want time.Duration
	}{
		{nil, 50, 0},
		{[]time.Duration{ms(7)}, 50, ms(7)},
		{[]time.Duration{ms(7)}, 99, ms(7)},
		{[]time.Duration{ms(1), ms(2)}, 50, ms(1)},
		{[]time.Duration{ms(1), ms(2), ms(3)}, 50, ms(2)},
		{[]time.Duration{ms(1), ms(2), ms(3), ms(4)}, 50, ms(2)},
		{hundred, 50, ms(50)},
		{hundred, 99, ms(99)},
		{hundred, 100, ms(100)},
		{hundred, 0.5, ms(1)},
	} {
		if got := Percentile(tc.in, tc.p); got != tc.want {
			t.Errorf("Percentile(%d values, %v) = %v, want %v", len(tc.in), tc.p, got, tc.want)
		}
	}
}

func TestSummarizeDoesNotReorderItsInput(t *testing.T) {
	in := []time.Duration{ms(5), ms(1), ms(3), ms(2), ms(4)}
	d := Summarize(in)
	want := Distribution{N: 5, P50: ms(3), P99: ms(5), Max: ms(5), Mean: ms(3)}
	if d != want {
		t.Errorf("Summarize = %+v, want %+v", d, want)
	}
	if in[0] != ms(5) || in[1] != ms(1) {
		t.Errorf("Summarize sorted its input: %v", in)
	}
	if (Summarize(nil) != Distribution{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", Summarize(nil))
	}
}

var t0 = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

func at(msec float64) *time.Time { v := t0.Add(ms(msec)); return &v }

func TestEdgeLatencies(t *testing.T) {
	tis := []store.TaskInstance{
		{TaskID: "c2", StartedAt: at(30), EndedAt: at(31)},
		{TaskID: "c0", StartedAt: at(0), EndedAt: at(10)},
		{TaskID: "c1", StartedAt: at(12), EndedAt: at(20)},
	}
	got, err := EdgeLatencies(tis, []string{"c0", "c1", "c2"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0] != ms(2) || got[1] != ms(10) {
		t.Errorf("EdgeLatencies = %v, want [2ms 10ms]", got)
	}

	for _, tc := range []struct {
		tis  []store.TaskInstance
		want string
	}{
		{tis[1:2], "c0 -> c1: task instance missing"},
		{[]store.TaskInstance{{TaskID: "c0", StartedAt: at(0)}, {TaskID: "c1", StartedAt: at(1), EndedAt: at(2)}}, "upstream has no recorded end"},
		{[]store.TaskInstance{{TaskID: "c0", EndedAt: at(0)}, {TaskID: "c1"}}, "downstream has no recorded start"},
	} {
		if _, err := EdgeLatencies(tc.tis, []string{"c0", "c1"}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("EdgeLatencies = %v, want an error containing %q", err, tc.want)
		}
	}
}

func TestTimingOf(t *testing.T) {
	r := store.Run{DAGID: "d", RunID: "r", State: state.RunSuccess, QueuedAt: t0, StartedAt: at(100), EndedAt: at(1100)}
	tm, err := TimingOf(r)
	if err != nil {
		t.Fatal(err)
	}
	if tm.Creation() != ms(100) || tm.Execution() != time.Second || tm.Total() != ms(1100) {
		t.Errorf("timing %v %v %v, want 100ms 1s 1.1s", tm.Creation(), tm.Execution(), tm.Total())
	}
	failed := r
	failed.State = state.RunFailed
	if _, err := TimingOf(failed); err == nil || !strings.Contains(err.Error(), "is failed, want success") {
		t.Errorf("failed run: %v", err)
	}
	noEnd := r
	noEnd.EndedAt = nil
	if _, err := TimingOf(noEnd); err == nil {
		t.Error("a run without end time was accepted")
	}
	backwards := r
	backwards.StartedAt = at(-5)
	if _, err := TimingOf(backwards); err == nil || !strings.Contains(err.Error(), "out of order") {
		t.Errorf("times out of order: %v", err)
	}
}

func TestCheckSucceeded(t *testing.T) {
	ok := []store.TaskInstance{{State: state.Success}, {State: state.Success}}
	if err := CheckSucceeded(ok, 2); err != nil {
		t.Errorf("all succeeded: %v", err)
	}
	if err := CheckSucceeded(ok, 3); err == nil || !strings.Contains(err.Error(), "2 task instances (want 3") {
		t.Errorf("too few: %v", err)
	}
	mixed := []store.TaskInstance{{State: state.Success}, {State: state.Failed}}
	if err := CheckSucceeded(mixed, 2); err == nil || !strings.Contains(err.Error(), "failed:1") {
		t.Errorf("one failed: %v", err)
	}
}

func TestFireWindow(t *testing.T) {
	w := NewFireWindow(t0.Add(ms(300)), time.Second, 30)
	if !w.From.Equal(t0.Add(time.Second)) || !w.To.Equal(t0.Add(30*time.Second)) {
		t.Fatalf("window [%v, %v], want [t0+1s, t0+30s]", w.From, w.To)
	}
	if w.Ends() != 30 {
		t.Errorf("Ends = %d, want 30", w.Ends())
	}
	if exact := NewFireWindow(t0, time.Second, 3); !exact.From.Equal(t0) || exact.Ends() != 3 {
		t.Errorf("a window starting on the grid moved: %+v (%d ends)", exact, exact.Ends())
	}
	if (FireWindow{From: t0, To: t0.Add(-time.Second), Every: time.Second}).Ends() != 0 {
		t.Error("an empty window has ends")
	}
	if (FireWindow{From: t0.Add(ms(1)), To: t0.Add(ms(999)), Every: time.Second}).Ends() != 0 {
		t.Error("a window between two grid instants has ends")
	}

	run := func(end time.Time, lag time.Duration, typ store.RunType) store.Run {
		return store.Run{RunType: typ, IntervalStart: end.Add(-time.Second), IntervalEnd: end, QueuedAt: end.Add(lag)}
	}
	runs := []store.Run{
		run(w.From.Add(-time.Second), ms(900), store.RunScheduled), // before the window: catch-up at start
		run(w.From, ms(3), store.RunScheduled),
		run(w.From.Add(time.Second), ms(7), store.RunScheduled),
		run(w.To, ms(40), store.RunScheduled),
		run(w.To.Add(time.Second), ms(1), store.RunScheduled), // after the window
		run(w.From.Add(2*time.Second), 0, store.RunManual),    // not a scheduled run
	}
	lags := FireLags(runs, w)
	if len(lags) != 3 || lags[0] != ms(3) || lags[1] != ms(7) || lags[2] != ms(40) {
		t.Errorf("FireLags = %v, want [3ms 7ms 40ms]", lags)
	}
}
