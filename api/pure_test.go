package api

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

func TestAppendTaskInstanceMatchesJSON(t *testing.T) {
	t0 := time.Date(2026, 2, 3, 4, 5, 6, 123456789, time.FixedZone("X", 3600))
	t1 := t0.Add(1500*time.Millisecond + 7*time.Microsecond)
	t2 := t0.Add(36 * time.Hour)
	cases := []struct {
		ti   store.TaskInstance
		kind dag.Kind
	}{
		{store.TaskInstance{TaskID: "a", DAGID: "d", DAGRunID: "r", State: state.None, MaxTries: 1}, ""},
		{store.TaskInstance{TaskID: "a", DAGID: "d", DAGRunID: "r", State: ""}, dag.KindFunc},
		{store.TaskInstance{TaskID: "t.1-x", DAGID: "d_2", DAGRunID: "manual__2026-01-01T00:00:00+00:00",
			State: state.Success, TryNumber: 3, MaxTries: 4, Priority: -7, QueuedAt: &t0, StartedAt: &t1, EndedAt: &t2,
			Hostname: `h<&>"\é` + "\x01\u2028", PID: 99}, dag.KindShell},
		{store.TaskInstance{TaskID: "b", DAGID: "d", DAGRunID: "ünï", State: state.Running, StartedAt: &t1,
			TryNumber: 1, MaxTries: 1}, dag.KindBranch},
		{store.TaskInstance{TaskID: "c", DAGID: "d", DAGRunID: "r", State: state.UpForRetry, StartedAt: &t0, EndedAt: &t0}, dag.KindHTTP},
		{store.TaskInstance{TaskID: "e", DAGID: "d", DAGRunID: "r", State: state.Failed, StartedAt: &t0, EndedAt: &t1,
			PID: -1}, "custom"},
		{store.TaskInstance{TaskID: "s", DAGID: "d", DAGRunID: "r", State: state.Deferred, StartedAt: &t0, TryNumber: 1,
			NextCheckAt: &t1, TriggerTimeout: &t2, WaitEvent: "copy-done:\"7\""}, dag.KindSensor},
		{store.TaskInstance{TaskID: "a", DAGID: "d", DAGRunID: "r", State: state.Deferred, TryNumber: 1}, dag.KindApproval},
		{store.TaskInstance{TaskID: "q", DAGID: "d", DAGRunID: "r", State: state.Queued, NextCheckAt: &t1, WaitEvent: "k"}, dag.KindResumable},
	}
	for _, c := range cases {
		for _, ld := range []time.Time{t0, {}} {
			want, err := json.Marshal(toTaskInstance(c.ti, ld, c.kind))
			if err != nil {
				t.Fatal(err)
			}
			got := appendTaskInstance(nil, c.ti, ld, c.kind)
			if string(got) != string(want) {
				t.Errorf("appendTaskInstance differs from encoding/json:\n got %s\nwant %s", got, want)
			}
		}
	}
}

func TestParseTime(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			t.Fatal(err)
		}
		return v.UTC()
	}
	for in, want := range map[string]time.Time{
		"2026-01-02T03:04:05Z":              utc("2026-01-02T03:04:05Z"),
		"2026-01-02T03:04:05+02:00":         utc("2026-01-02T01:04:05Z"),
		"2026-01-02T03:04:05.1234567-01:00": utc("2026-01-02T04:04:05.123456Z"),
		"2026-01-02T03:04:05":               utc("2026-01-02T03:04:05Z"),
		"2026-01-02T03:04:05.5":             utc("2026-01-02T03:04:05.5Z"),
		"2026-01-02":                        utc("2026-01-02T00:00:00Z"),
		"0001-01-01T00:00:00Z":              utc("0001-01-01T00:00:00Z"),
	} {
		got, err := parseTime(in)
		if err != nil || !got.Equal(want) || got.Location() != time.UTC {
			t.Errorf("parseTime(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "yesterday", "2026-13-01", "2026-01-02 03:04:05", "0000-12-31T23:00:00Z",
		"0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "1767225600"} {
		if _, err := parseTime(in); err == nil {
			t.Errorf("parseTime(%q) succeeded", in)
		}
	}
}

func TestWantsText(t *testing.T) {
	for accept, want := range map[string]bool{
		"":                                       false,
		"*/*":                                    true,
		"text/plain":                             true,
		"application/json":                       false,
		"application/json, text/plain":           true, // tie: text/plain, as Airflow
		"application/json;q=1, text/plain;q=0.5": false,
		"text/plain;q=0.5, application/json":     false,
		"text/*;q=0.9, application/json;q=0.8":   true,
		"application/*, text/plain;q=0.1":        false,
		"text/plain;q=0, */*":                    false,
		"image/png":                              false,
		"text/html, */*;q=0.1":                   true,
		"garbage;;;":                             false,
	} {
		if got := wantsText(accept); got != want {
			t.Errorf("wantsText(%q) = %v, want %v", accept, got, want)
		}
	}
}

func TestReverseWindow(t *testing.T) {
	for _, c := range []struct{ total, limit, offset, lo, hi int }{
		{10, 3, 0, 7, 10}, {10, 3, 8, 0, 2}, {10, 3, 10, 0, 0}, {10, 3, 50, 0, 0}, {0, 5, 0, 0, 0}, {5, 100, 0, 0, 5},
	} {
		lo, hi := reverseWindow(c.total, page{limit: c.limit, offset: c.offset})
		if lo != c.lo || hi != c.hi {
			t.Errorf("reverseWindow(%d, limit %d offset %d) = [%d,%d), want [%d,%d)", c.total, c.limit, c.offset, lo, hi, c.lo, c.hi)
		}
	}
}

func TestRelatives(t *testing.T) {
	d := dag.New("g")
	noop := func(*dag.Context) error { return nil }
	a, b, c, x, y := d.Func("a", noop), d.Func("b", noop), d.Func("c", noop), d.Func("x", noop), d.Func("y", noop)
	a.SetDownstream(b)
	b.SetDownstream(c)
	x.SetDownstream(b)
	c.SetDownstream(y)
	for _, tc := range []struct {
		ids      []string
		up, down bool
		want     []string
	}{
		{[]string{"b"}, false, false, []string{"b"}},
		{[]string{"b"}, true, false, []string{"a", "x", "b"}},
		{[]string{"b"}, false, true, []string{"b", "c", "y"}},
		{[]string{"c"}, true, true, []string{"a", "b", "x", "c", "y"}},
		{[]string{"y", "zz"}, false, true, []string{"y", "zz"}},
	} {
		got := relatives(d, tc.ids, tc.up, tc.down)
		want := topoSorted(d, tc.want)
		if !slices.Equal(got, want) {
			t.Errorf("relatives(%v, up=%v, down=%v) = %v, want %v", tc.ids, tc.up, tc.down, got, want)
		}
	}
}

// topoSorted orders ids as the DAG's topological order, unknown ids last.
func topoSorted(d *dag.DAG, ids []string) []string {
	order, _ := d.TopologicalOrder()
	var out []string
	for _, t := range order {
		if slices.Contains(ids, t.ID()) {
			out = append(out, t.ID())
		}
	}
	for _, id := range ids {
		if !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

func TestScheduleJSON(t *testing.T) {
	iv, desc := scheduleJSON("@every 1h30m")
	td, ok := iv.(timeDeltaJSON)
	if !ok || td.Seconds != 5400 || td.Days != 0 || *desc != "every 1h30m0s" {
		t.Errorf("@every 1h30m = %#v %v", iv, desc)
	}
	if iv, _ := scheduleJSON("@every 49h"); iv.(timeDeltaJSON).Days != 2 || iv.(timeDeltaJSON).Seconds != 3600 {
		t.Errorf("@every 49h = %#v", iv)
	}
	iv, desc = scheduleJSON("CRON_TZ=Europe/Paris 0 3 * * *")
	if c, ok := iv.(cronJSON); !ok || c.Value != "CRON_TZ=Europe/Paris 0 3 * * *" || c.Type != "CronExpression" || desc == nil {
		t.Errorf("cron = %#v", iv)
	}
	if iv, desc := scheduleJSON(""); iv != nil || desc != nil {
		t.Errorf("manual = %#v %v", iv, desc)
	}
}

func TestNextIntervalStart(t *testing.T) {
	last := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	next := last.Add(24 * time.Hour)
	d := store.DAG{Schedule: "@daily", LastIntervalEnd: &last, NextDueAt: &next}
	if got := nextIntervalStart(d); got == nil || !got.Equal(last) {
		t.Errorf("@daily after %v: %v, want %v", last, got, last)
	}
	out := toDAG(d)
	if out.NextDagrun == nil || !time.Time(*out.NextDagrun).Equal(last) ||
		out.NextDagrunCreateAfter == nil || !time.Time(*out.NextDagrunCreateAfter).Equal(next) {
		t.Errorf("toDAG next fields = %v %v", out.NextDagrun, out.NextDagrunCreateAfter)
	}
	far := next.Add(72 * time.Hour)
	d.NextDueAt = &far
	if got := nextIntervalStart(d); got != nil {
		t.Errorf("cron with a gap: %v, want unknown", got)
	}
	every := store.DAG{Schedule: "@every 10m", NextDueAt: &next}
	if got := nextIntervalStart(every); got == nil || !got.Equal(next.Add(-10*time.Minute)) {
		t.Errorf("@every 10m: %v", got)
	}
}

func TestCheckJSONText(t *testing.T) {
	for in, ok := range map[string]bool{
		`{"a": "b"}`:                   true,
		`{"a": "\\u0000"}`:             true, // an escaped backslash, not a NUL
		`{"a": "\u0000"}`:              false,
		`{"\u0000": 1}`:                false,
		`{"a": [1, {"b": "x\u0000"}]}`: false,
	} {
		err := checkJSONText("conf", json.RawMessage(in))
		if (err == nil) != ok {
			t.Errorf("checkJSONText(%s) = %v, want ok=%v", in, err, ok)
		}
	}
	if err := checkText("note", "a\x00b"); err == nil || !strings.Contains(err.Error(), "NUL") {
		t.Errorf("checkText with NUL = %v", err)
	}
	if err := checkText("note", "a\xffb"); err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Errorf("checkText with bad UTF-8 = %v", err)
	}
}

func TestAppendTimeText(t *testing.T) {
	zone := time.FixedZone("Z2", -5*3600-30*60)
	for _, tm := range []time.Time{
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 6, 7, 8, 9, 10, 120000000, zone),
		time.Date(1, 1, 1, 0, 0, 0, 1000, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 100, time.UTC),
		time.Date(2026, 3, 4, 5, 6, 7, 500, zone),
		{},
	} {
		want := tm.UTC().Format(timeLayout)
		if got := string(appendTimeText(nil, tm)); got != want {
			t.Errorf("appendTimeText(%v) = %s, want %s", tm, got, want)
		}
	}
}
