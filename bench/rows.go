package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Metric names of result rows (CONTRACT §4 names the first nine).
const (
	MetricTasksPerSecond     = "tasks_per_second"
	MetricEdgeLatencyP50     = "edge_latency_p50_ms"
	MetricEdgeLatencyP99     = "edge_latency_p99_ms"
	MetricEdgeLatencyMax     = "edge_latency_max_ms"
	MetricFireLagP50         = "fire_lag_p50_ms"
	MetricFireLagP99         = "fire_lag_p99_ms"
	MetricFireLagMax         = "fire_lag_max_ms"
	MetricRunsMissed         = "runs_missed"
	MetricRunsCreated        = "runs_created"
	MetricRunsExpected       = "runs_expected"
	MetricRunCreationSeconds = "run_creation_seconds"
	MetricTotalSeconds       = "total_seconds"
	MetricPeakRSSBytes       = "peak_rss_bytes"
	MetricPeakPSSBytes       = "peak_pss_bytes"
	MetricDAGSyncSeconds     = "dag_sync_seconds"
)

// Units of result rows.
const (
	UnitTasksPerSecond = "tasks/s"
	UnitMilliseconds   = "ms"
	UnitSeconds        = "s"
	UnitRuns           = "runs"
	UnitBytes          = "bytes"
	// UnitCores is CPU time per wall-clock time: 0.05 is 5 % of one core.
	UnitCores = "cores"
)

// Row is one measurement: the JSON rows `trellis bench --json` writes.
type Row struct {
	Scenario string  `json:"scenario"`
	Store    string  `json:"store"`
	Metric   string  `json:"metric"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	// CPUs is the number of CPUs of the machine (runtime.NumCPU).
	CPUs int `json:"cpus"`
}

// rowMaker makes the rows of one scenario on one store.
type rowMaker struct {
	scenario, store string
	cpus            int
	rows            []Row
}

func (m *rowMaker) add(metric string, value float64, unit string) {
	m.rows = append(m.rows, Row{Scenario: m.scenario, Store: m.store, Metric: metric, Value: value, Unit: unit, CPUs: m.cpus})
}

func (m *rowMaker) seconds(metric string, d time.Duration) { m.add(metric, d.Seconds(), UnitSeconds) }

func (m *rowMaker) millis(metric string, d time.Duration) {
	m.add(metric, float64(d)/float64(time.Millisecond), UnitMilliseconds)
}

// rate adds tasks_per_second for n tasks in d (0 when d is not positive).
func (m *rowMaker) rate(n int, d time.Duration) {
	v := 0.0
	if d > 0 {
		v = float64(n) / d.Seconds()
	}
	m.add(MetricTasksPerSecond, v, UnitTasksPerSecond)
}

// WriteJSON writes rows as an indented JSON array (an empty array for no
// rows).
func WriteJSON(w io.Writer, rows []Row) error {
	if rows == nil {
		rows = []Row{}
	}
	b, err := json.MarshalIndent(rows, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result rows: %w", err)
	}
	b = append(b, '\n')
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("write result rows: %w", err)
	}
	return nil
}

// WriteTable writes rows as an aligned table. With targets, two columns
// show the target of issue 7 that applies to a row and whether it holds.
func WriteTable(w io.Writer, rows []Row, targets bool) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := "SCENARIO\tSTORE\tMETRIC\tVALUE\tUNIT"
	if targets {
		header += "\tTARGET\t"
	}
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s", r.Scenario, r.Store, r.Metric, FormatValue(r.Value, r.Unit), r.Unit)
		if targets {
			if v, ok := Check(r, rows); ok {
				mark := "ok"
				if !v.Met {
					mark = "MISSED"
				}
				line += fmt.Sprintf("\t%s\t%s", v.Target, mark)
			} else {
				line += "\t\t"
			}
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write result table: %w", err)
	}
	return nil
}

// FormatValue renders a value for the table: whole numbers for rates,
// run counts and bytes, seconds with three decimals, anything else
// (milliseconds, ratios) with two.
func FormatValue(v float64, unit string) string {
	switch unit {
	case UnitTasksPerSecond, UnitRuns, UnitRequestsPerSecond:
		return strconv.FormatFloat(math.Round(v), 'f', 0, 64)
	case UnitSeconds, UnitCores:
		return strconv.FormatFloat(v, 'f', 3, 64)
	case UnitBytes:
		return fmt.Sprintf("%.0f (%.1f MiB)", v, v/(1<<20))
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}

// target is a goal of issue 7 for one metric of one scenario on one store.
type target struct {
	scenario, store, metric string
	prefix                  bool    // scenario is a prefix of the rows' scenario
	atLeast                 bool    // value ≥ bound (else ≤)
	bound                   float64 // the bound, unless relative
	// relative, when set, is the scenario whose value of the same metric
	// on the same store is the bound.
	relative string
}

// targets are the goals of issue 7 on this kind of machine.
var targets = []target{
	{scenario: "wide", store: "postgres", metric: MetricTasksPerSecond, atLeast: true, bound: 5000},
	{scenario: "wide", store: "sqlite", metric: MetricTasksPerSecond, atLeast: true, bound: 1500},
	{scenario: "chain", store: "postgres", metric: MetricEdgeLatencyP50, bound: 2},
	{scenario: "chain", store: "postgres", metric: MetricEdgeLatencyP99, bound: 10},
	{scenario: "shell", store: "postgres", metric: MetricTasksPerSecond, atLeast: true, bound: 500},
	{scenario: "shell_chain", store: "postgres", metric: MetricTotalSeconds, bound: 0.5},
	{scenario: "cron", store: "postgres", metric: MetricFireLagP99, bound: 50},
	{scenario: "cron", store: "postgres", metric: MetricRunsMissed, bound: 0},
	{scenario: "big", store: "postgres", metric: MetricRunCreationSeconds, bound: 3},
	{scenario: "big", store: "postgres", metric: MetricTasksPerSecond, atLeast: true, relative: "wide"},
	{scenario: "big", store: "postgres", metric: MetricPeakRSSBytes, bound: 1 << 30},
	{scenario: "big", store: "postgres", metric: MetricPeakPSSBytes, bound: 1 << 30},
	// Issue 6: GET …/taskInstances of a 100-task run while a 10,000-task
	// run executes.
	{scenario: ScenarioAPIFinished, store: "postgres", metric: MetricAPIRequestsPerSecond, atLeast: true, bound: 3000},
	{scenario: ScenarioAPIRunning, store: "postgres", metric: MetricAPIRequestsPerSecond, atLeast: true, bound: 3000},
	{scenario: ScenarioAPIFinished, store: "sqlite", metric: MetricAPIRequestsPerSecond, atLeast: true, bound: 3000},
	{scenario: ScenarioAPIRunning, store: "sqlite", metric: MetricAPIRequestsPerSecond, atLeast: true, bound: 3000},
	// Issue 12: tasks that call tasks.
	{scenario: ScenarioFib, store: "postgres", metric: MetricTotalSeconds, bound: 2},
	{scenario: ScenarioCallsWide, store: "postgres", metric: MetricCallsPerSecond, atLeast: true, bound: 3000},
	{scenario: ScenarioFibNoDedup, store: "postgres", metric: MetricTotalSeconds, bound: 15},
	// Issue 14: 10,000 sensors deferred at once with a 1 s poke use ≤ 5 %
	// of one core between their pokes (Trellis's CPU while they cycle, the
	// checks' own work not counted: cpu_cores_while_deferred has it) and
	// no slot; waiting with nothing due likewise; an event resumes its
	// task within p50 20 ms, p99 100 ms.
	{scenario: ScenarioDeferred, store: "postgres", metric: MetricCPUCoresTrellis, bound: 0.05},
	{scenario: ScenarioDeferred, store: "postgres", metric: MetricRunningMax, bound: 0},
	{scenario: ScenarioDeferred, store: "postgres", metric: MetricCPUCoresIdle, bound: 0.05},
	{scenario: ScenarioDeferred, store: "postgres", metric: MetricSlotsIdle, bound: 0},
	{scenario: ScenarioDeferred, store: "postgres", metric: MetricEventResumeP50, bound: 20},
	{scenario: ScenarioDeferred, store: "postgres", metric: MetricEventResumeP99, bound: 100},
	// Issue 17: every run of the scale scenario on PostgreSQL.
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricServePeakRSSBytes, bound: 200 << 20},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricTreePeakRSSBytes, bound: 350 << 20},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricMetricsBytes, bound: 1 << 20},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricMetricsScrapeMS, bound: 50},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricRunCreationSeconds, bound: 1},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricHOTRatio, atLeast: true, bound: 0.9},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricVsPgbench, atLeast: true, bound: 2.5},
	{scenario: "scale_", prefix: true, store: "postgres", metric: MetricVsFirst, atLeast: true, bound: 0.9},
}

// Verdict says whether a row meets its target.
type Verdict struct {
	// Target is the goal as text, e.g. "≥ 5000" or "≤ wide".
	Target string
	Met    bool
}

// Check returns the verdict on row r against its target; ok is false
// when no target applies (or a relative target's reference row is not in
// all).
func Check(r Row, all []Row) (v Verdict, ok bool) {
	for _, t := range targets {
		scenarioOK := t.scenario == r.Scenario || t.prefix && strings.HasPrefix(r.Scenario, t.scenario)
		if !scenarioOK || t.store != r.Store || t.metric != r.Metric {
			continue
		}
		bound, text := t.bound, FormatValue(t.bound, r.Unit)
		switch {
		case r.Unit == UnitBytes && t.bound >= 1<<30:
			text = fmt.Sprintf("%.0f GiB", t.bound/(1<<30))
		case r.Unit == UnitBytes:
			text = fmt.Sprintf("%.0f MiB", t.bound/(1<<20))
		}
		if t.relative != "" {
			found := false
			for _, o := range all {
				if o.Scenario == t.relative && o.Store == r.Store && o.Metric == r.Metric {
					bound, found = o.Value, true
					break
				}
			}
			if !found {
				return Verdict{}, false
			}
			text = t.relative + " (" + FormatValue(bound, r.Unit) + ")"
		}
		if t.atLeast {
			return Verdict{Target: "≥ " + text, Met: r.Value >= bound}, true
		}
		return Verdict{Target: "≤ " + text, Met: r.Value <= bound}, true
	}
	return Verdict{}, false
}
