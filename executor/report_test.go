package executor

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
)

// TestReportCodec: appendReport writes what json.Unmarshal reads back
// as the same report — run ids with quotes, backslashes, control
// characters, HTML characters and non-ASCII included — and parseReport
// reads both its lines and encoding/json's (escaped strings go through
// json.Unmarshal) as json.Unmarshal does, reusing its finishes without
// keeping old ones.
func TestReportCodec(t *testing.T) {
	f := func(run string, try int, st state.TaskState, dur, queued time.Duration) Finish {
		return Finish{DAGID: "d.x-1", RunID: run, TaskID: "t_2", Try: try, State: st, Duration: dur, Queued: queued}
	}
	reports := []report{
		{Running: 0},
		{Running: 3, Dropped: 17},
		{Finishes: []Finish{f("manual__2026-12-04T22:00:00+00:00", 1, state.Success, 1500*time.Microsecond, 42*time.Millisecond)}, Running: 16},
		{Finishes: []Finish{
			f(`quote " and back\slash`, 2, state.Failed, time.Hour, -1),
			f("tab\tnew\nline\x00", 3, state.UpForRetry, 0, 0),
			f("<b>&amp;</b> é ü 日本 \u2028", 12, state.Skipped, 1<<40, 5),
			f("", 1, state.Success, -3, 1),
		}, Running: 1, Dropped: 1 << 40},
	}
	var r report
	for i, want := range reports {
		line := appendReport(nil, want)
		var viaJSON report
		if err := json.Unmarshal(line, &viaJSON); err != nil || !reflect.DeepEqual(viaJSON, want) {
			t.Errorf("report %d: json.Unmarshal(%s) = %+v, %v; want %+v", i, line, viaJSON, err, want)
		}
		if err := parseReport(line, &r); err != nil || !reflect.DeepEqual(r, want) {
			t.Errorf("report %d: parseReport(%s) = %+v, %v; want %+v", i, line, r, err, want)
		}
		marshaled, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		if err := parseReport(marshaled, &r); err != nil || !reflect.DeepEqual(r, want) {
			t.Errorf("report %d: parseReport(%s) = %+v, %v; want %+v", i, marshaled, r, err, want)
		}
	}
	for _, bad := range []string{"", "not json", `{"f":[{"dag":"d"`, `{"running":1`, `{"running":"x"}`, `{"f":[{"dag":"d","run":"r","task":"t","try":1,"state":"success","dur":1,"queued":1}],"running":1}x`} {
		if err := parseReport([]byte(bad), &r); err == nil {
			t.Errorf("parseReport(%q) = %+v, want an error", bad, r)
		}
	}
	// Other valid JSON (keys reordered, spaces) reads as
	// encoding/json reads it.
	odd := `{ "running": 2, "f": [ {"queued": 1, "dur": 2000, "try": 1, "state": "success", "task": "t", "run": "r", "dag": "d"} ] }`
	want := report{Finishes: []Finish{{DAGID: "d", RunID: "r", TaskID: "t", Try: 1, State: state.Success, Duration: 2000, Queued: 1}}, Running: 2}
	if err := parseReport([]byte(odd), &r); err != nil || !reflect.DeepEqual(r, want) {
		t.Errorf("parseReport(%s) = %+v, %v; want %+v", odd, r, err, want)
	}
}

// BenchmarkReportCodec writes and reads reports of 64 finishes as a
// child and its pool do, with encoding/json (as before) and with
// appendReport and parseReport; b.N counts finishes.
func BenchmarkReportCodec(b *testing.B) {
	rep := report{Running: 16}
	for i := range 64 {
		rep.Finishes = append(rep.Finishes, Finish{DAGID: "bench_wide", RunID: "run_1", TaskID: fmt.Sprintf("t%05d", i),
			Try: 1, State: state.Success, Duration: 1234567, Queued: 7654321})
	}
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for done := 0; done < b.N; done += len(rep.Finishes) {
			line, err := json.Marshal(rep)
			if err != nil {
				b.Fatal(err)
			}
			var r report
			if err := json.Unmarshal(line, &r); err != nil || len(r.Finishes) != len(rep.Finishes) {
				b.Fatal(err)
			}
		}
	})
	b.Run("direct", func(b *testing.B) {
		b.ReportAllocs()
		var line []byte
		var r report
		for done := 0; done < b.N; done += len(rep.Finishes) {
			line = appendReport(line[:0], rep)
			if err := parseReport(line, &r); err != nil || len(r.Finishes) != len(rep.Finishes) {
				b.Fatal(err)
			}
		}
	})
}
