package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

func mustSchedule(t testing.TB, expr string) *dag.Timetable {
	t.Helper()
	tt, err := dag.ParseSchedule(expr)
	if err != nil {
		t.Fatalf("ParseSchedule(%q): %v", expr, err)
	}
	return tt
}

// ts parses an RFC 3339 instant for table tests.
func ts(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t
}

func tsp(s string) *time.Time { t := ts(s); return &t }

func fmtIntervals(ivs []Interval) string {
	out := ""
	for i, iv := range ivs {
		if i > 0 {
			out += " "
		}
		out += "[" + iv.Start.UTC().Format(time.RFC3339) + "," + iv.End.UTC().Format(time.RFC3339) + ")"
	}
	return out
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "none"
	}
	return t.UTC().Format(time.RFC3339)
}

func TestDue(t *testing.T) {
	const day = "2026-01-01T"
	tests := []struct {
		name     string
		expr     string
		policy   Policy
		last     *time.Time
		now      string
		want     string // intervals as fmtIntervals prints them
		wantNext string // "none" for no further run
	}{
		{
			name:   "cron first interval starts at first activation at or after StartDate",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:30:00Z"), Catchup: true},
			now:    day + "02:00:00Z",
			want:   "[2026-01-01T01:00:00Z,2026-01-01T02:00:00Z)", wantNext: day + "03:00:00Z",
		},
		{
			name:   "nothing due before the first interval ends",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:30:00Z"), Catchup: true},
			now:    day + "01:59:59.999Z",
			want:   "", wantNext: day + "02:00:00Z",
		},
		{
			name:   "StartDate on an activation starts the first interval there",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), Catchup: true},
			now:    day + "01:00:00Z",
			want:   "[2026-01-01T00:00:00Z,2026-01-01T01:00:00Z)", wantNext: day + "02:00:00Z",
		},
		{
			name:   "catchup creates every missed interval oldest first",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), Catchup: true},
			now:    day + "03:30:00Z",
			want: "[2026-01-01T00:00:00Z,2026-01-01T01:00:00Z) [2026-01-01T01:00:00Z,2026-01-01T02:00:00Z) " +
				"[2026-01-01T02:00:00Z,2026-01-01T03:00:00Z)",
			wantNext: day + "04:00:00Z",
		},
		{
			name:   "without catchup only the latest interval",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z")},
			now:    day + "03:30:00Z",
			want:   "[2026-01-01T02:00:00Z,2026-01-01T03:00:00Z)", wantNext: day + "04:00:00Z",
		},
		{
			name:     "catchup resumes after the last interval",
			expr:     "0 * * * *",
			policy:   Policy{StartDate: ts(day + "00:00:00Z"), Catchup: true},
			last:     tsp(day + "01:00:00Z"),
			now:      day + "03:00:00Z",
			want:     "[2026-01-01T01:00:00Z,2026-01-01T02:00:00Z) [2026-01-01T02:00:00Z,2026-01-01T03:00:00Z)",
			wantNext: day + "04:00:00Z",
		},
		{
			name:   "without catchup after downtime only the latest interval",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z")},
			last:   tsp(day + "01:00:00Z"),
			now:    day + "05:10:00Z",
			want:   "[2026-01-01T04:00:00Z,2026-01-01T05:00:00Z)", wantNext: day + "06:00:00Z",
		},
		{
			name:   "without catchup nothing when the latest interval is done",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z")},
			last:   tsp(day + "03:00:00Z"),
			now:    day + "03:30:00Z",
			want:   "", wantNext: day + "04:00:00Z",
		},
		{
			name:   "last not on the schedule (schedule changed) resumes at the next activation",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), Catchup: true},
			last:   tsp(day + "01:20:00Z"),
			now:    day + "03:00:00Z",
			want:   "[2026-01-01T02:00:00Z,2026-01-01T03:00:00Z)", wantNext: day + "04:00:00Z",
		},
		{
			name:   "EndDate: an interval starting at EndDate is the last",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), EndDate: ts(day + "02:00:00Z"), Catchup: true},
			now:    day + "10:00:00Z",
			want: "[2026-01-01T00:00:00Z,2026-01-01T01:00:00Z) [2026-01-01T01:00:00Z,2026-01-01T02:00:00Z) " +
				"[2026-01-01T02:00:00Z,2026-01-01T03:00:00Z)",
			wantNext: "none",
		},
		{
			name:     "EndDate between activations",
			expr:     "0 * * * *",
			policy:   Policy{StartDate: ts(day + "00:00:00Z"), EndDate: ts(day + "01:30:00Z"), Catchup: true},
			now:      day + "10:00:00Z",
			want:     "[2026-01-01T00:00:00Z,2026-01-01T01:00:00Z) [2026-01-01T01:00:00Z,2026-01-01T02:00:00Z)",
			wantNext: "none",
		},
		{
			name:   "EndDate not yet reached keeps the next due",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), EndDate: ts(day + "01:30:00Z"), Catchup: true},
			now:    day + "01:10:00Z",
			want:   "[2026-01-01T00:00:00Z,2026-01-01T01:00:00Z)", wantNext: day + "02:00:00Z",
		},
		{
			name:   "EndDate passed during downtime without catchup: nothing (Airflow)",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), EndDate: ts(day + "01:30:00Z")},
			last:   tsp(day + "01:00:00Z"),
			now:    day + "10:00:00Z",
			want:   "", wantNext: "none",
		},
		{
			name:   "StartDate in the future",
			expr:   "0 * * * *",
			policy: Policy{StartDate: ts("2026-06-01T00:00:00Z"), Catchup: true},
			now:    day + "10:00:00Z",
			want:   "", wantNext: "2026-06-01T01:00:00Z",
		},
		{
			name:   "six fields with seconds",
			expr:   "*/2 * * * * *",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), Catchup: true},
			now:    day + "00:00:07Z",
			want: "[2026-01-01T00:00:00Z,2026-01-01T00:00:02Z) [2026-01-01T00:00:02Z,2026-01-01T00:00:04Z) " +
				"[2026-01-01T00:00:04Z,2026-01-01T00:00:06Z)",
			wantNext: day + "00:00:08Z",
		},
		{
			name:   "six fields without catchup",
			expr:   "*/2 * * * * *",
			policy: Policy{StartDate: ts(day + "00:00:01Z")},
			now:    day + "00:00:07Z",
			want:   "[2026-01-01T00:00:04Z,2026-01-01T00:00:06Z)", wantNext: day + "00:00:08Z",
		},
		{
			name:     "@every is anchored at StartDate",
			expr:     "@every 90m",
			policy:   Policy{StartDate: ts(day + "00:10:00Z"), Catchup: true},
			now:      day + "03:10:00Z",
			want:     "[2026-01-01T00:10:00Z,2026-01-01T01:40:00Z) [2026-01-01T01:40:00Z,2026-01-01T03:10:00Z)",
			wantNext: day + "04:40:00Z",
		},
		{
			name:   "@every without catchup takes the latest grid interval",
			expr:   "@every 90m",
			policy: Policy{StartDate: ts(day + "00:10:00Z")},
			now:    day + "05:00:00Z",
			want:   "[2026-01-01T03:10:00Z,2026-01-01T04:40:00Z)", wantNext: day + "06:10:00Z",
		},
		{
			name:   "@every last off the grid snaps to the next grid point",
			expr:   "@every 90m",
			policy: Policy{StartDate: ts(day + "00:10:00Z"), Catchup: true},
			last:   tsp(day + "01:00:00Z"),
			now:    day + "03:10:00Z",
			want:   "[2026-01-01T01:40:00Z,2026-01-01T03:10:00Z)", wantNext: day + "04:40:00Z",
		},
		{
			name:   "@every with EndDate",
			expr:   "@every 1h",
			policy: Policy{StartDate: ts(day + "00:00:00Z"), EndDate: ts(day + "00:59:59Z"), Catchup: true},
			now:    day + "05:00:00Z",
			want:   "[2026-01-01T00:00:00Z,2026-01-01T01:00:00Z)", wantNext: "none",
		},
		{
			name:   "@every 1s after a year down without catchup: one run",
			expr:   "@every 1s",
			policy: Policy{StartDate: ts("2025-01-01T00:00:00Z")},
			last:   tsp("2025-01-01T00:00:05Z"),
			now:    "2026-01-01T00:00:00.5Z",
			want:   "[2025-12-31T23:59:59Z,2026-01-01T00:00:00Z)", wantNext: "2026-01-01T00:00:01Z",
		},
		{
			name:   "no StartDate and no last: only the latest interval even with catchup",
			expr:   "0 0 * * *",
			policy: Policy{Catchup: true},
			now:    "2026-03-10T12:00:00Z",
			want:   "[2026-03-09T00:00:00Z,2026-03-10T00:00:00Z)", wantNext: "2026-03-11T00:00:00Z",
		},
		{
			name:   "yearly without catchup finds the latest year without walking",
			expr:   "@yearly",
			policy: Policy{StartDate: ts("1990-01-01T00:00:00Z")},
			now:    "2026-03-10T12:00:00Z",
			want:   "[2025-01-01T00:00:00Z,2026-01-01T00:00:00Z)", wantNext: "2027-01-01T00:00:00Z",
		},
		{
			name:     "day 31 skips short months",
			expr:     "0 0 31 * *",
			policy:   Policy{StartDate: ts("2026-01-01T00:00:00Z"), Catchup: true},
			now:      "2026-06-01T00:00:00Z",
			want:     "[2026-01-31T00:00:00Z,2026-03-31T00:00:00Z) [2026-03-31T00:00:00Z,2026-05-31T00:00:00Z)",
			wantNext: "2026-07-31T00:00:00Z",
		},
		{
			name:     "CRON_TZ: 09:00 in New York",
			expr:     "CRON_TZ=America/New_York 0 9 * * *",
			policy:   Policy{StartDate: ts("2026-01-05T00:00:00Z"), Catchup: true},
			now:      "2026-01-07T15:00:00Z",
			want:     "[2026-01-05T14:00:00Z,2026-01-06T14:00:00Z) [2026-01-06T14:00:00Z,2026-01-07T14:00:00Z)",
			wantNext: "2026-01-08T14:00:00Z",
		},
		{
			name:     "CRON_TZ: spring forward makes a 23-hour interval",
			expr:     "CRON_TZ=Europe/Berlin 0 12 * * *",
			policy:   Policy{StartDate: ts("2026-03-28T00:00:00Z"), Catchup: true},
			now:      "2026-03-30T11:00:00Z",
			want:     "[2026-03-28T11:00:00Z,2026-03-29T10:00:00Z) [2026-03-29T10:00:00Z,2026-03-30T10:00:00Z)",
			wantNext: "2026-03-31T10:00:00Z",
		},
		{
			name:   "CRON_TZ: fall back makes a 25-hour interval",
			expr:   "CRON_TZ=Europe/Berlin 0 12 * * *",
			policy: Policy{StartDate: ts("2026-10-24T00:00:00Z"), Catchup: true},
			now:    "2026-10-25T12:00:00Z",
			want:   "[2026-10-24T10:00:00Z,2026-10-25T11:00:00Z)", wantNext: "2026-10-26T11:00:00Z",
		},
		{
			name:     "CRON_TZ: 02:30 does not exist on spring-forward day; the run moves to 03:00 EDT",
			expr:     "CRON_TZ=America/New_York 30 2 * * *",
			policy:   Policy{StartDate: ts("2026-03-07T00:00:00Z"), Catchup: true},
			now:      "2026-03-09T12:00:00Z",
			want:     "[2026-03-07T07:30:00Z,2026-03-08T07:00:00Z) [2026-03-08T07:00:00Z,2026-03-09T06:30:00Z)",
			wantNext: "2026-03-10T06:30:00Z",
		},
		{
			name:     "CRON_TZ: 01:30 happens twice on fall-back day but runs once",
			expr:     "CRON_TZ=America/New_York 30 1 * * *",
			policy:   Policy{StartDate: ts("2026-10-31T00:00:00Z"), Catchup: true},
			now:      "2026-11-02T12:00:00Z",
			want:     "[2026-10-31T05:30:00Z,2026-11-01T05:30:00Z) [2026-11-01T05:30:00Z,2026-11-02T06:30:00Z)",
			wantNext: "2026-11-03T06:30:00Z",
		},
		{
			name:   "CRON_TZ without catchup across the DST gap",
			expr:   "CRON_TZ=America/New_York 30 2 * * *",
			policy: Policy{StartDate: ts("2026-01-01T00:00:00Z")},
			now:    "2026-03-09T00:00:00Z",
			want:   "[2026-03-07T07:30:00Z,2026-03-08T07:00:00Z)", wantNext: "2026-03-09T06:30:00Z",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ivs, next := Due(mustSchedule(t, tc.expr), tc.policy, tc.last, ts(tc.now), 0)
			if got := fmtIntervals(ivs); got != tc.want {
				t.Errorf("intervals:\n got %s\nwant %s", got, tc.want)
			}
			want := tc.wantNext
			if want != "none" {
				want = fmtTime(ts(want))
			}
			if got := fmtTime(next); got != want {
				t.Errorf("next due: got %s, want %s", got, want)
			}
		})
	}
}

func TestDueLimit(t *testing.T) {
	// A year of "@every 1s" with catchup: 31,536,000 intervals. Due hands
	// them out in batches and says the next batch is due at once.
	tt := mustSchedule(t, "@every 1s")
	p := Policy{StartDate: ts("2025-01-01T00:00:00Z"), Catchup: true}
	now := ts("2026-01-01T00:00:00Z")
	ivs, next := Due(tt, p, nil, now, 1000)
	if len(ivs) != 1000 {
		t.Fatalf("got %d intervals, want 1000", len(ivs))
	}
	if !ivs[999].Start.Equal(ts("2025-01-01T00:16:39Z")) {
		t.Errorf("last of batch starts %s", ivs[999].Start)
	}
	if !next.Equal(ts("2025-01-01T00:16:41Z")) || next.After(now) {
		t.Errorf("next = %s, want 2025-01-01T00:16:41Z (due at once)", next)
	}
	// The following batch continues exactly where this one ended.
	last := ivs[999].End
	ivs2, _ := Due(tt, p, &last, now, 1000)
	if len(ivs2) != 1000 || !ivs2[0].Start.Equal(last) {
		t.Fatalf("second batch starts %v (len %d), want %s", ivs2[0].Start, len(ivs2), last)
	}
	// The final batch is short and the next due is in the future.
	last = now.Add(-1500 * time.Millisecond)
	ivs3, next3 := Due(tt, p, &last, now, 1000)
	if fmtIntervals(ivs3) != "[2025-12-31T23:59:59Z,2026-01-01T00:00:00Z)" || !next3.Equal(now.Add(time.Second)) {
		t.Errorf("final batch %s next %s", fmtIntervals(ivs3), next3)
	}
}

func TestManualInterval(t *testing.T) {
	p := Policy{StartDate: ts("2026-01-01T00:00:00Z")}
	tests := []struct {
		expr, logical, want string
	}{
		{"0 * * * *", "2026-01-01T05:20:00Z", "[2026-01-01T04:00:00Z,2026-01-01T05:00:00Z)"},
		{"0 * * * *", "2026-01-01T05:00:00Z", "[2026-01-01T04:00:00Z,2026-01-01T05:00:00Z)"},
		{"@every 2h", "2026-01-01T05:20:00Z", "[2026-01-01T02:00:00Z,2026-01-01T04:00:00Z)"},
		{"", "2026-01-01T05:20:00Z", "[2026-01-01T05:20:00Z,2026-01-01T05:20:00Z)"},
		{"@yearly", "1900-06-01T00:00:00Z", "[1899-01-01T00:00:00Z,1900-01-01T00:00:00Z)"},
	}
	for _, tc := range tests {
		var tt Timetable
		if tc.expr != "" {
			tt = mustSchedule(t, tc.expr)
		}
		got := fmtIntervals([]Interval{ManualInterval(tt, p, ts(tc.logical))})
		if got != tc.want {
			t.Errorf("ManualInterval(%q, %s) = %s, want %s", tc.expr, tc.logical, got, tc.want)
		}
	}
}

func TestIntervals(t *testing.T) {
	tt := mustSchedule(t, "0 0 * * *")
	p := Policy{StartDate: ts("2026-01-01T00:00:00Z")}
	ivs, more := Intervals(tt, p, ts("2025-12-30T12:00:00Z"), ts("2026-01-02T00:00:00Z"), 0)
	want := "[2025-12-31T00:00:00Z,2026-01-01T00:00:00Z) [2026-01-01T00:00:00Z,2026-01-02T00:00:00Z) " +
		"[2026-01-02T00:00:00Z,2026-01-03T00:00:00Z)"
	if got := fmtIntervals(ivs); got != want || more {
		t.Errorf("Intervals = %s (more %v), want %s", got, more, want)
	}
	ivs, more = Intervals(tt, p, ts("2026-01-01T00:00:00Z"), ts("2026-12-31T00:00:00Z"), 10)
	if len(ivs) != 10 || !more {
		t.Errorf("capped Intervals: %d intervals, more=%v; want 10, true", len(ivs), more)
	}
	ivs, _ = Intervals(mustSchedule(t, "@every 6h"), Policy{StartDate: ts("2026-01-01T01:00:00Z")},
		ts("2026-01-01T00:00:00Z"), ts("2026-01-01T13:00:00Z"), 0)
	want = "[2026-01-01T01:00:00Z,2026-01-01T07:00:00Z) [2026-01-01T07:00:00Z,2026-01-01T13:00:00Z) " +
		"[2026-01-01T13:00:00Z,2026-01-01T19:00:00Z)"
	if got := fmtIntervals(ivs); got != want {
		t.Errorf("@every Intervals = %s, want %s", got, want)
	}
	if ivs, _ := Intervals(tt, p, ts("2026-01-02T00:00:01Z"), ts("2026-01-02T12:00:00Z"), 0); len(ivs) != 0 {
		t.Errorf("range without activation gave %s", fmtIntervals(ivs))
	}
}

func TestRunID(t *testing.T) {
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		typ  store.RunType
		at   time.Time
		want string
	}{
		{store.RunScheduled, time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), "scheduled__2026-01-01T00:00:00Z"},
		{store.RunManual, time.Date(2026, 1, 1, 1, 0, 0, 0, berlin), "manual__2026-01-01T00:00:00Z"},
		{store.RunBackfill, time.Date(2026, 1, 1, 0, 0, 0, 500_000_000, time.UTC), "backfill__2026-01-01T00:00:00.5Z"},
	}
	for _, tc := range tests {
		if got := RunID(tc.typ, tc.at); got != tc.want {
			t.Errorf("RunID(%s, %s) = %q, want %q", tc.typ, tc.at, got, tc.want)
		}
	}
}

// TestCronPrevMatchesWalk checks the bisection against a plain forward walk
// over activations, for assorted schedules and instants.
func TestCronPrevMatchesWalk(t *testing.T) {
	// Each schedule with a look-back that surely holds an activation.
	exprs := []struct {
		expr     string
		lookback time.Duration
	}{
		{"*/7 * * * * *", time.Minute}, {"0 */5 * * * *", time.Hour}, {"13 2,14 * * *", 48 * time.Hour},
		{"0 0 1 * *", 62 * 24 * time.Hour}, {"0 0 * * 1-5", 7 * 24 * time.Hour},
		{"CRON_TZ=America/New_York 30 2 * * *", 72 * time.Hour}, {"CRON_TZ=Europe/Berlin 0 0/3 * * *", 24 * time.Hour},
		{"0 0 29 2 *", 5 * 366 * 24 * time.Hour}, {"45 23 * * 0", 8 * 24 * time.Hour},
	}
	rng := rand.New(rand.NewPCG(1, 2))
	base := ts("2024-01-01T00:00:00Z")
	for _, e := range exprs {
		expr := e.expr
		tt := mustSchedule(t, expr)
		g := newGrid(tt, time.Time{})
		for range 40 {
			at := base.Add(time.Duration(rng.Int64N(int64(2 * 365 * 24 * time.Hour))))
			// Reference: walk from well before at.
			var want time.Time
			for f := tt.Next(at.Add(-e.lookback)); !f.IsZero() && !f.After(at); f = tt.Next(f) {
				want = f
			}
			got, ok := g.cronPrev(at)
			if ok != !want.IsZero() || !got.Equal(want) {
				t.Fatalf("%s: cronPrev(%s) = %s, %v; walk says %s", expr, at, got, ok, want)
			}
		}
	}
}

// TestDueProperties checks invariants of Due on random schedules and
// instants: intervals are consecutive activations, within the bounds, all
// due; the next due instant is the end of the following interval.
func TestDueProperties(t *testing.T) {
	exprs := []string{"*/3 * * * * *", "*/10 * * * *", "0 * * * *", "0 0 * * *", "@every 7m", "@every 1h13m",
		"CRON_TZ=Asia/Kolkata 30 */2 * * *", "CRON_TZ=America/New_York 0 1-3 * * *"}
	rng := rand.New(rand.NewPCG(3, 4))
	base := ts("2026-03-01T00:00:00Z")
	for _, expr := range exprs {
		tt := mustSchedule(t, expr)
		for i := range 30 {
			start := base.Add(time.Duration(rng.Int64N(int64(20 * 24 * time.Hour))))
			now := start.Add(time.Duration(rng.Int64N(int64(30 * time.Hour))))
			p := Policy{StartDate: start, Catchup: i%2 == 0}
			var last *time.Time
			if i%3 == 0 {
				l := start.Add(time.Duration(rng.Int64N(int64(now.Sub(start) + 1))))
				last = &l
			}
			name := fmt.Sprintf("%s start=%s now=%s catchup=%v last=%v", expr, start, now, p.Catchup, last)
			ivs, next := Due(tt, p, last, now, 0)
			if !p.Catchup && len(ivs) > 1 {
				t.Fatalf("%s: %d intervals without catchup", name, len(ivs))
			}
			prevEnd := time.Time{}
			for _, iv := range ivs {
				if iv.Start.Before(start) || iv.End.After(now) || !iv.End.After(iv.Start) {
					t.Fatalf("%s: interval %v out of bounds", name, iv)
				}
				if last != nil && iv.Start.Before(*last) {
					t.Fatalf("%s: interval %v before last %s", name, iv, last)
				}
				if tt.Every() == 0 && (!tt.Next(iv.Start.Add(-time.Nanosecond)).Equal(iv.Start) || !tt.Next(iv.Start).Equal(iv.End)) {
					t.Fatalf("%s: interval %v is not between consecutive activations", name, iv)
				}
				if tt.Every() > 0 && (iv.Start.Sub(start)%tt.Every() != 0 || iv.End.Sub(iv.Start) != tt.Every()) {
					t.Fatalf("%s: interval %v off the @every grid", name, iv)
				}
				if !prevEnd.IsZero() && !iv.Start.Equal(prevEnd) {
					t.Fatalf("%s: gap between intervals at %v", name, iv)
				}
				prevEnd = iv.End
			}
			if !next.After(now) {
				t.Fatalf("%s: next %s not after now", name, next)
			}
			if len(ivs) > 0 && p.Catchup && last == nil && !ivs[0].Start.Equal(newGrid(tt, start).alignNext(start)) {
				t.Fatalf("%s: catchup did not start at the first activation", name)
			}
			// Firing at next with this result as last yields exactly one interval ending at next.
			newLast := last
			if len(ivs) > 0 {
				newLast = &ivs[len(ivs)-1].End
			}
			if newLast != nil {
				ivs2, _ := Due(tt, p, newLast, next, 0)
				if len(ivs2) != 1 || !ivs2[0].End.Equal(next) {
					t.Fatalf("%s: firing at next %s gave %s", name, next, fmtIntervals(ivs2))
				}
			}
		}
	}
}

func BenchmarkDueCatchupFalseAfterYear(b *testing.B) {
	tt := mustSchedule(b, "*/5 * * * * *")
	p := Policy{StartDate: ts("2025-01-01T00:00:00Z")}
	last := ts("2025-01-01T00:00:05Z")
	now := ts("2026-01-01T00:00:02Z")
	for b.Loop() {
		ivs, _ := Due(tt, p, &last, now, 1000)
		if len(ivs) != 1 {
			b.Fatal(len(ivs))
		}
	}
}
