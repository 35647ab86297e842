package scheduler

import (
	"context"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestTriggerRun exercises manual runs on a scheduler that was never
// started, as the command line uses it.
func TestTriggerRun(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		now := time.Date(2026, 1, 1, 5, 20, 0, 123456789, time.UTC)
		clk := clock.NewFake(now)
		st := b.open(t, clk)
		manual := dag.New("m", dag.Params(map[string]any{"a": 1, "b": "x"}))
		manual.Shell("t", "true")
		hourly := shellDAG("h", "0 * * * *", ts("2026-01-01T00:00:00Z"), dag.MaxActiveRuns(1))
		s := New(Config{Store: st, Registry: registry(manual, hourly), Clock: clk})

		// Defaults: run id from now (to the microsecond), conf {}, admitted at once.
		r, err := s.TriggerRun(ctx, "m", TriggerOptions{Note: "by hand"})
		if err != nil {
			t.Fatal(err)
		}
		logical := now.Truncate(time.Microsecond)
		if r.RunID != "manual__2026-01-01T05:20:00.123456Z" || r.RunType != store.RunManual || r.State != state.RunRunning ||
			!r.LogicalDate.Equal(logical) || !r.IntervalStart.Equal(logical) || !r.IntervalEnd.Equal(logical) || r.Note != "by hand" {
			t.Fatalf("manual run: %+v", r)
		}
		if string(r.Conf) != "{}" {
			t.Errorf("conf %s, want {}", r.Conf)
		}

		// A scheduled DAG's manual run gets the latest complete interval.
		ld := ts("2026-01-01T03:20:00Z")
		r, err = s.TriggerRun(ctx, "h", TriggerOptions{LogicalDate: &ld, RunID: "my-run_1", Conf: json.RawMessage(` {"b": "y", "c": [1]} `)})
		if err != nil {
			t.Fatal(err)
		}
		if r.RunID != "my-run_1" || !r.LogicalDate.Equal(ld) || !r.IntervalStart.Equal(ts("2026-01-01T02:00:00Z")) ||
			!r.IntervalEnd.Equal(ts("2026-01-01T03:00:00Z")) || r.State != state.RunRunning {
			t.Fatalf("manual run of a scheduled DAG: %+v", r)
		}
		params, err := RunParams(hourly.Params(), r.Conf)
		if err != nil || !reflect.DeepEqual(params, map[string]any{"b": "y", "c": []any{1.0}}) {
			t.Errorf("params %v %v", params, err)
		}

		// MaxActiveRuns(1): a second run waits in queued.
		ld2 := ts("2026-01-01T04:00:00Z")
		r2, err := s.TriggerRun(ctx, "h", TriggerOptions{LogicalDate: &ld2})
		if err != nil {
			t.Fatal(err)
		}
		if r2.RunID != "manual__2026-01-01T04:00:00Z" || r2.State != state.RunQueued {
			t.Fatalf("second run %s is %s, want manual__2026-01-01T04:00:00Z queued", r2.RunID, r2.State)
		}

		// Conflicts.
		if _, err := s.TriggerRun(ctx, "h", TriggerOptions{RunID: "my-run_1", LogicalDate: &ld}); !errors.Is(err, store.ErrConflict) ||
			!strings.Contains(err.Error(), `run "my-run_1" exists already`) {
			t.Errorf("same run id: %v, want ErrConflict", err)
		}
		if _, err := s.TriggerRun(ctx, "h", TriggerOptions{RunID: "other", LogicalDate: &ld}); !errors.Is(err, store.ErrConflict) ||
			!strings.Contains(err.Error(), `taken by run "my-run_1"`) {
			t.Errorf("same logical date: %v, want ErrConflict naming the run", err)
		}

		// Bad input.
		bad := []struct {
			dagID string
			opts  TriggerOptions
			want  string
			is    error
		}{
			{"nope", TriggerOptions{}, `trigger DAG "nope": not found: no DAG "nope" in this binary`, store.ErrNotFound},
			{"m", TriggerOptions{Conf: json.RawMessage(`[1, 2]`)}, "conf must be a JSON object", nil},
			{"m", TriggerOptions{Conf: json.RawMessage(`"s"`)}, `got a string`, nil},
			{"m", TriggerOptions{Conf: json.RawMessage(`{"a":`)}, "conf is not valid JSON", nil},
			{"m", TriggerOptions{RunID: "a/b"}, `run id "a/b" must match`, nil},
			{"m", TriggerOptions{LogicalDate: &time.Time{}}, "logical date is the zero time", nil},
		}
		for _, c := range bad {
			_, err := s.TriggerRun(ctx, c.dagID, c.opts)
			if err == nil || !strings.Contains(err.Error(), c.want) || (c.is != nil && !errors.Is(err, c.is)) {
				t.Errorf("TriggerRun(%s, %+v) = %v, want error containing %q", c.dagID, c.opts, err, c.want)
			}
		}
		if runs := listRuns(t, st, "m"); len(runs) != 1 {
			t.Errorf("bad triggers created runs: %v", runIDs(runs))
		}
	})
}

// TestBackfill creates the runs of a range on a scheduler that was never
// started, respecting MaxActiveRuns and skipping existing runs.
func TestBackfill(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		clk := clock.NewFake(ts("2026-02-01T00:00:00Z"))
		st := b.open(t, clk)
		daily := shellDAG("daily", "0 0 * * *", ts("2026-01-01T00:00:00Z"), dag.MaxActiveRuns(2))
		manual := dag.New("manual")
		manual.Shell("t", "true")
		s := New(Config{Store: st, Registry: registry(daily, manual), Clock: clk, MaxBackfillRuns: 20})

		runs, err := s.Backfill(ctx, "daily", ts("2026-01-02T00:00:00Z"), ts("2026-01-06T12:00:00Z"))
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"backfill__2026-01-02T00:00:00Z", "backfill__2026-01-03T00:00:00Z", "backfill__2026-01-04T00:00:00Z",
			"backfill__2026-01-05T00:00:00Z", "backfill__2026-01-06T00:00:00Z"}
		if got := runIDs(runs); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("backfill runs %v, want %v", got, want)
		}
		for i, r := range runs {
			wantState := state.RunQueued
			if i < 2 {
				wantState = state.RunRunning
			}
			if r.RunType != store.RunBackfill || r.State != wantState || !r.IntervalEnd.Equal(r.IntervalStart.AddDate(0, 0, 1)) {
				t.Errorf("run %s: type %s state %s interval [%s, %s), want backfill %s one day", r.RunID, r.RunType, r.State,
					r.IntervalStart, r.IntervalEnd, wantState)
			}
		}
		if c := states(listRuns(t, st, "daily")); c[state.RunRunning] != 2 || c[state.RunQueued] != 3 {
			t.Errorf("stored states %v, want 2 running 3 queued", c)
		}

		// Overlapping range: only the new intervals get runs.
		runs, err = s.Backfill(ctx, "daily", ts("2026-01-05T00:00:00Z"), ts("2026-01-07T00:00:00Z"))
		if err != nil {
			t.Fatal(err)
		}
		if got := runIDs(runs); len(got) != 1 || got[0] != "backfill__2026-01-07T00:00:00Z" {
			t.Errorf("overlapping backfill created %v, want only 2026-01-07", got)
		}
		// An empty range is not an error.
		if runs, err := s.Backfill(ctx, "daily", ts("2026-01-05T00:00:01Z"), ts("2026-01-05T12:00:00Z")); err != nil || len(runs) != 0 {
			t.Errorf("empty range: %v %v", runs, err)
		}

		bad := []struct {
			dagID    string
			from, to time.Time
			want     string
		}{
			{"nope", ts("2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:00Z"), "not found"},
			{"manual", ts("2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:00Z"), "has no schedule"},
			{"daily", ts("2026-01-03T00:00:00Z"), ts("2026-01-02T00:00:00Z"), "ends (2026-01-02T00:00:00Z) before it starts"},
			{"daily", time.Time{}, ts("2026-01-02T00:00:00Z"), "both ends"},
			{"daily", ts("2025-01-01T00:00:00Z"), ts("2026-01-01T00:00:00Z"), "more than 20 intervals"},
		}
		for _, c := range bad {
			if _, err := s.Backfill(ctx, c.dagID, c.from, c.to); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Backfill(%s, %s, %s) = %v, want error containing %q", c.dagID, c.from, c.to, err, c.want)
			}
		}
		if _, err := s.Backfill(ctx, "nope", ts("2026-01-01T00:00:00Z"), ts("2026-01-02T00:00:00Z")); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("unknown DAG: %v, want ErrNotFound", err)
		}
		if n := len(listRuns(t, st, "daily")); n != 6 {
			t.Errorf("%d runs after the failed calls, want 6", n)
		}
	})
}

// TestSetPaused covers the errors and the unpause admission of SetPaused
// without a running loop.
func TestSetPaused(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(ts("2026-01-01T00:00:00Z"))
	st := openSQLite(t, clk)
	d := dag.New("d", dag.MaxActiveRuns(1))
	d.Shell("t", "true")
	s := New(Config{Store: st, Registry: registry(d), Clock: clk})
	// Pausing a DAG the store has not recorded yet records it first.
	if err := s.SetPaused(ctx, "d", true); err != nil {
		t.Fatal(err)
	}
	if row, err := st.GetDAG(ctx, "d"); err != nil || !row.Paused {
		t.Fatalf("after pause: %+v %v", row, err)
	}
	r, err := s.TriggerRun(ctx, "d", TriggerOptions{})
	if err != nil || r.State != state.RunQueued {
		t.Fatalf("trigger while paused: %v %v, want queued", r.State, err)
	}
	if err := s.SetPaused(ctx, "d", false); err != nil {
		t.Fatal(err)
	}
	if r, err := st.GetRun(ctx, "d", r.RunID); err != nil || r.State != state.RunRunning {
		t.Fatalf("after unpause the queued run is %v %v, want running", r.State, err)
	}
	if err := s.SetPaused(ctx, "ghost", true); !errors.Is(err, store.ErrNotFound) || !strings.Contains(err.Error(), `pause DAG "ghost"`) {
		t.Errorf("pause of an unknown DAG: %v", err)
	}
}

func TestRunParams(t *testing.T) {
	defaults := map[string]any{"a": 1, "b": "x"}
	tests := []struct {
		conf string
		want map[string]any
		err  string
	}{
		{"", map[string]any{"a": 1, "b": "x"}, ""},
		{"null", map[string]any{"a": 1, "b": "x"}, ""},
		{`{"b": "y", "n": {"k": true}}`, map[string]any{"a": 1, "b": "y", "n": map[string]any{"k": true}}, ""},
		{`[]`, nil, "got an array"},
		{`3`, nil, "got a number"},
		{`true`, nil, "got a boolean"},
		{`{`, nil, "not valid JSON"},
		{`{} {}`, nil, "data after"},
		{`{"n": 1e400}`, nil, "conf.n: the number (5 characters) is beyond the range"},
		{`{"a": [1, {"b c": -` + strings.Repeat("9", 400) + `}]}`, nil, `conf.a[1]["b c"]: the number (401 characters)`},
		{`{"big": 123456789012345678901234567890, "tiny": 1e-400}`, map[string]any{"a": 1, "b": "x", "big": 1.2345678901234568e29, "tiny": 0.0}, ""},
	}
	for _, tc := range tests {
		got, err := RunParams(defaults, json.RawMessage(tc.conf))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("RunParams(%q) error %v, want %q", tc.conf, err, tc.err)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("RunParams(%q) = %v, %v; want %v", tc.conf, got, err, tc.want)
		}
	}
	if defaults["b"] != "x" {
		t.Error("RunParams changed the defaults")
	}
}

// TestLookupReusesStartsDAGs: before Start every lookup derives the DAG
// afresh; after it, a DAG of the registry is the one Start validated and
// fingerprinted (not derived again on every trigger), and a DAG registered
// after Start is still derived and recorded on its first trigger.
func TestLookupReusesStartsDAGs(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		clk := clock.NewFake(time.Date(2026, 1, 1, 5, 20, 0, 0, time.UTC))
		st := b.open(t, clk)
		m := dag.New("m")
		m.Shell("t", "true")
		reg := registry(m)
		s := New(Config{Store: st, Registry: reg, Clock: clk})

		a, err := s.lookup("m")
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := s.lookup("m"); again == a {
			t.Fatal("before Start, lookup returned the same derivation twice")
		}
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		started, err := s.lookup("m")
		if err != nil {
			t.Fatal(err)
		}
		if started != s.infos["m"] || started.fingerprint != m.Fingerprint() {
			t.Fatalf("after Start, lookup derived the DAG again (%p, Start's %p)", started, s.infos["m"])
		}
		if _, err := s.TriggerRun(ctx, "m", TriggerOptions{RunID: "r1"}); err != nil {
			t.Fatal(err)
		}

		late := dag.New("late")
		late.Shell("t", "true")
		reg.Register(late)
		info, err := s.lookup("late")
		if err != nil {
			t.Fatal(err)
		}
		if info.d != late || info.fingerprint != late.Fingerprint() {
			t.Fatalf("a DAG registered after Start: %+v", info)
		}
		if r, err := s.TriggerRun(ctx, "late", TriggerOptions{RunID: "r1"}); err != nil || r.DAGID != "late" {
			t.Fatalf("trigger a DAG registered after Start: %+v, %v", r, err)
		}
	})
}
