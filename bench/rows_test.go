package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRowMaker(t *testing.T) {
	m := &rowMaker{scenario: "wide", store: "postgres", cpus: 2}
	m.rate(10002, 2*time.Second)
	m.seconds(MetricTotalSeconds, 1500*time.Millisecond)
	m.millis(MetricEdgeLatencyP50, 1250*time.Microsecond)
	m.rate(5, 0)
	want := []Row{
		{"wide", "postgres", MetricTasksPerSecond, 5001, UnitTasksPerSecond, 2},
		{"wide", "postgres", MetricTotalSeconds, 1.5, UnitSeconds, 2},
		{"wide", "postgres", MetricEdgeLatencyP50, 1.25, UnitMilliseconds, 2},
		{"wide", "postgres", MetricTasksPerSecond, 0, UnitTasksPerSecond, 2},
	}
	if len(m.rows) != len(want) {
		t.Fatalf("rows = %+v", m.rows)
	}
	for i := range want {
		if m.rows[i] != want[i] {
			t.Errorf("row %d = %+v, want %+v", i, m.rows[i], want[i])
		}
	}
}

func TestWriteJSONRowsOfTheContract(t *testing.T) {
	var b bytes.Buffer
	rows := []Row{{"wide", "sqlite", MetricTasksPerSecond, 1903.5, UnitTasksPerSecond, 2}}
	if err := WriteJSON(&b, rows); err != nil {
		t.Fatal(err)
	}
	var got []map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("output is not a JSON array: %v\n%s", err, b.String())
	}
	want := map[string]any{"scenario": "wide", "store": "sqlite", "metric": "tasks_per_second",
		"value": 1903.5, "unit": "tasks/s", "cpus": 2.0}
	if len(got) != 1 || len(got[0]) != len(want) {
		t.Fatalf("rows = %v, want one row with exactly %v", got, want)
	}
	for k, v := range want {
		if got[0][k] != v {
			t.Errorf("field %s = %v, want %v", k, got[0][k], v)
		}
	}
	b.Reset()
	if err := WriteJSON(&b, nil); err != nil || strings.TrimSpace(b.String()) != "[]" {
		t.Errorf("no rows = %q, %v; want []", b.String(), err)
	}
}

func TestCheckTargets(t *testing.T) {
	rows := []Row{
		{Scenario: "wide", Store: "postgres", Metric: MetricTasksPerSecond, Value: 6000, Unit: UnitTasksPerSecond},
		{Scenario: "wide", Store: "sqlite", Metric: MetricTasksPerSecond, Value: 1000, Unit: UnitTasksPerSecond},
		{Scenario: "chain", Store: "postgres", Metric: MetricEdgeLatencyP99, Value: 10, Unit: UnitMilliseconds},
		{Scenario: "cron", Store: "postgres", Metric: MetricRunsMissed, Value: 1, Unit: UnitRuns},
		{Scenario: "big", Store: "postgres", Metric: MetricTasksPerSecond, Value: 5500, Unit: UnitTasksPerSecond},
		{Scenario: "big", Store: "sqlite", Metric: MetricTasksPerSecond, Value: 5500, Unit: UnitTasksPerSecond},
		{Scenario: "big", Store: "postgres", Metric: MetricPeakRSSBytes, Value: 2 << 30, Unit: UnitBytes},
		{Scenario: "wide", Store: "postgres", Metric: MetricTotalSeconds, Value: 1, Unit: UnitSeconds},
		{Scenario: "scale_100000_2", Store: "postgres", Metric: MetricServePeakRSSBytes, Value: 150 << 20, Unit: UnitBytes},
		{Scenario: "scale_1000", Store: "postgres", Metric: MetricHOTRatio, Value: 0.5, Unit: UnitRatio},
		{Scenario: "scale_1000", Store: "sqlite", Metric: MetricServePeakRSSBytes, Value: 150 << 20, Unit: UnitBytes},
		{Scenario: "deferred", Store: "postgres", Metric: MetricCPUCoresTrellis, Value: 0.0504, Unit: UnitCores},
		{Scenario: "deferred", Store: "postgres", Metric: MetricCPUCores, Value: 0.07, Unit: UnitCores},
		{Scenario: "deferred", Store: "postgres", Metric: MetricCPUCoresIdle, Value: 0.05, Unit: UnitCores},
		{Scenario: "deferred", Store: "postgres", Metric: MetricCPUCoresWorkers, Value: 0.04, Unit: UnitCores},
		{Scenario: "deferred", Store: "sqlite", Metric: MetricCPUCores, Value: 0.04, Unit: UnitCores},
	}
	for i, want := range []struct {
		ok     bool
		target string
		met    bool
	}{
		{true, "≥ 5000", true},
		{true, "≥ 1500", false},
		{true, "≤ 10.00", true}, // the bound itself meets an "at most" target
		{true, "≤ 0", false},
		{true, "≥ wide (6000)", false},
		{false, "", false}, // no target for big on SQLite
		{true, "≤ 1 GiB", false},
		{false, "", false}, // no target for that metric
		{true, "≤ 200 MiB", true},
		{true, "≥ 0.90", false},
		{false, "", false},       // the scale targets are PostgreSQL's
		{true, "≤ 0.050", false}, // issue 14: 5 % of one core, Trellis's part of the poke cycle
		{false, "", false},       // the whole cycle, the checks' own work included, has no target
		{true, "≤ 0.050", true},
		{false, "", false}, // the workers' part has no target of its own
		{false, "", false}, // issue 14's targets are PostgreSQL's
	} {
		v, ok := Check(rows[i], rows)
		if ok != want.ok || v.Target != want.target || v.Met != want.met {
			t.Errorf("Check(%+v) = %+v, %v; want {%s %v}, %v", rows[i], v, ok, want.target, want.met, want.ok)
		}
	}
	// A relative target without its reference row does not apply.
	if _, ok := Check(rows[4], rows[4:5]); ok {
		t.Error("big ≥ wide applied without a wide row")
	}
}

func TestWriteTable(t *testing.T) {
	rows := []Row{
		{"wide", "postgres", MetricTasksPerSecond, 4999.6, UnitTasksPerSecond, 2},
		{"big", "postgres", MetricPeakRSSBytes, 512 << 20, UnitBytes, 2},
		{"chain", "sqlite", MetricEdgeLatencyP50, 0.384, UnitMilliseconds, 2},
	}
	var b bytes.Buffer
	if err := WriteTable(&b, rows, true); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimRight(b.String(), "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("table has %d lines, want a header and 3 rows:\n%s", len(lines), b.String())
	}
	for i, want := range [][]string{
		{"SCENARIO", "STORE", "METRIC", "VALUE", "UNIT", "TARGET"},
		{"wide", "postgres", "tasks_per_second", "5000", "tasks/s", "≥ 5000", "MISSED"},
		{"big", "postgres", "peak_rss_bytes", "536870912 (512.0 MiB)", "≤ 1 GiB", "ok"},
		{"chain", "sqlite", "edge_latency_p50_ms", "0.38", "ms"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i], w) {
				t.Errorf("line %d %q lacks %q", i, lines[i], w)
			}
		}
	}
	b.Reset()
	if err := WriteTable(&b, rows, false); err != nil || strings.Contains(b.String(), "TARGET") {
		t.Errorf("table without targets:\n%s (%v)", b.String(), err)
	}
}
