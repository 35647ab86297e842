package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/trellis-dag/trellis/clock"
)

// contractMetrics are the metrics of CONTRACT §6 with their label names
// and types.
var contractMetrics = map[string]struct {
	labels []string
	typ    dto.MetricType
}{
	"trellis_scheduler_heartbeat_total":       {nil, dto.MetricType_COUNTER},
	"trellis_scheduler_loop_duration_seconds": {nil, dto.MetricType_HISTOGRAM},
	"trellis_dag_runs_created_total":          {[]string{"dag_id", "run_type"}, dto.MetricType_COUNTER},
	"trellis_dag_run_duration_seconds":        {[]string{"dag_id", "state"}, dto.MetricType_HISTOGRAM},
	"trellis_dag_run_schedule_delay_seconds":  {[]string{"dag_id"}, dto.MetricType_HISTOGRAM},
	"trellis_task_instances_finished_total":   {[]string{"dag_id", "state", "task_id"}, dto.MetricType_COUNTER},
	"trellis_task_duration_seconds":           {[]string{"dag_id", "task_id"}, dto.MetricType_HISTOGRAM},
	"trellis_task_queued_seconds":             {[]string{"dag_id"}, dto.MetricType_HISTOGRAM},
	"trellis_task_instances":                  {[]string{"state"}, dto.MetricType_GAUGE},
	"trellis_executor_workers":                {nil, dto.MetricType_GAUGE},
	"trellis_executor_slots":                  {[]string{"state"}, dto.MetricType_GAUGE},
	"trellis_zombie_tasks_total":              {nil, dto.MetricType_COUNTER},
	"trellis_task_events_dropped_total":       {nil, dto.MetricType_COUNTER},
	"trellis_api_requests_total":              {[]string{"code", "method", "route"}, dto.MetricType_COUNTER},
	"trellis_api_request_duration_seconds":    {[]string{"method", "route"}, dto.MetricType_HISTOGRAM},
	"go_goroutines":                           {nil, dto.MetricType_GAUGE},
	"process_cpu_seconds_total":               {nil, dto.MetricType_COUNTER},
}

func TestMetricsFedByEvents(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	m := NewMetrics(clk)
	m.SetTaskSeries(func(dagID string) bool { return dagID == "etl" })
	m.SchedulerHeartbeat()
	m.SchedulerHeartbeat()
	m.ObserveSchedulerLoop(3 * time.Millisecond)
	m.RunCreated("etl", "scheduled")
	m.RunCreated("etl", "manual")
	m.RunCreated("etl", "manual")
	m.RunFinished("etl", "success", 90*time.Second)
	m.ScheduleDelay("etl", 4*time.Millisecond)
	m.TaskFinished("etl", "extract", "success", 2*time.Second)
	m.TaskFinished("etl", "extract", "failed", time.Second)
	m.TaskQueued("etl", 5*time.Millisecond)
	m.SetTaskInstances("running", 7)
	m.AddTaskInstances("queued", 3)
	m.AddTaskInstances("queued", -1)
	m.SetWorkers(4)
	m.SetSlots(30, 2)
	m.ZombieDetected()
	m.ZombiesDetected(2)
	m.TaskEventsDropped(5)
	m.apiRequest("/api/v1/dags", "GET", 200, time.Millisecond)
	m.apiRequest("/api/v1/dags", "BREW", 405, time.Millisecond)

	families, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, f := range families {
		byName[f.GetName()] = f
	}
	for name, want := range contractMetrics {
		f := byName[name]
		if f == nil {
			t.Errorf("metric %s is missing", name)
			continue
		}
		if f.GetType() != want.typ {
			t.Errorf("%s is %v, want %v", name, f.GetType(), want.typ)
		}
		if f.GetHelp() == "" {
			t.Errorf("%s has no help text", name)
		}
		if !strings.HasPrefix(name, "trellis_") {
			continue
		}
		for _, metric := range f.GetMetric() {
			var labels []string
			for _, l := range metric.GetLabel() {
				labels = append(labels, l.GetName())
			}
			if !slices.Equal(labels, want.labels) {
				t.Errorf("%s has labels %v, want %v", name, labels, want.labels)
			}
		}
	}

	value := func(name string, labels ...string) float64 {
		t.Helper()
		f := byName[name]
		if f == nil {
			t.Fatalf("no metric %s", name)
		}
	next:
		for _, metric := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, l := range metric.GetLabel() {
					if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			switch f.GetType() {
			case dto.MetricType_COUNTER:
				return metric.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				return metric.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				return float64(metric.GetHistogram().GetSampleCount())
			}
		}
		t.Fatalf("no series %s%v", name, labels)
		return 0
	}
	checks := []struct {
		name   string
		labels []string
		want   float64
	}{
		{"trellis_scheduler_heartbeat_total", nil, 2},
		{"trellis_scheduler_loop_duration_seconds", nil, 1},
		{"trellis_dag_runs_created_total", []string{"run_type", "manual"}, 2},
		{"trellis_dag_runs_created_total", []string{"run_type", "scheduled"}, 1},
		{"trellis_dag_run_duration_seconds", []string{"state", "success"}, 1},
		{"trellis_dag_run_schedule_delay_seconds", []string{"dag_id", "etl"}, 1},
		{"trellis_task_instances_finished_total", []string{"state", "failed"}, 1},
		{"trellis_task_duration_seconds", []string{"task_id", "extract"}, 2},
		{"trellis_task_queued_seconds", nil, 1},
		{"trellis_task_instances", []string{"state", "running"}, 7},
		{"trellis_task_instances", []string{"state", "queued"}, 2},
		{"trellis_executor_workers", nil, 4},
		{"trellis_executor_slots", []string{"state", "open"}, 30},
		{"trellis_executor_slots", []string{"state", "running"}, 2},
		{"trellis_zombie_tasks_total", nil, 3},
		{"trellis_task_events_dropped_total", nil, 5},
		{"trellis_api_requests_total", []string{"method", "other", "code", "405"}, 1},
	}
	for _, c := range checks {
		if got := value(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if h := byName["trellis_dag_run_duration_seconds"].GetMetric()[0].GetHistogram(); h.GetSampleSum() != 90 {
		t.Errorf("run duration sum = %v, want 90", h.GetSampleSum())
	}

	at, ok, err := m.LatestSchedulerHeartbeat(context.Background())
	if err != nil || !ok || !at.Equal(clk.Now()) {
		t.Errorf("LatestSchedulerHeartbeat = %v %v %v, want %v", at, ok, err, clk.Now())
	}
}

func TestNilMetricsIsANoOp(t *testing.T) {
	var m *Metrics
	m.SchedulerHeartbeat()
	m.ObserveSchedulerLoop(time.Second)
	m.RunCreated("d", "manual")
	m.RunFinished("d", "success", time.Second)
	m.ScheduleDelay("d", time.Second)
	m.TaskFinished("d", "t", "success", time.Second)
	m.TaskQueued("d", time.Second)
	m.SetTaskInstances("running", 1)
	m.AddTaskInstances("running", 1)
	m.SetWorkers(1)
	m.SetSlots(1, 1)
	m.ZombieDetected()
	m.apiRequest("/", "GET", 200, time.Second)
	if _, ok, err := m.LatestSchedulerHeartbeat(context.Background()); ok || err != nil {
		t.Errorf("nil metrics reported a heartbeat: %v %v", ok, err)
	}
}

func TestMetricsEndpoint(t *testing.T) {
	e := newEnv(t, "sqlite")
	e.metrics.RunCreated("etl", "scheduled")
	e.ok(200, "GET", "/api/v1/dags", nil)
	e.trigger("etl", nil)
	r := e.do("GET", "/metrics", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("/metrics: %d %s", r.status, r.header.Get("Content-Type"))
	}
	text := string(r.body)
	for _, want := range []string{
		`trellis_dag_runs_created_total{dag_id="etl",run_type="scheduled"} 1`,
		// The API counts the manual run triggered through it.
		`trellis_dag_runs_created_total{dag_id="etl",run_type="manual"} 1`,
		`trellis_api_requests_total{code="200",method="GET",route="/api/v1/dags"} 1`,
		`trellis_executor_slots{state="open"} 0`,
		"# TYPE trellis_scheduler_loop_duration_seconds histogram",
		"go_goroutines ",
		"process_cpu_seconds_total ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestMetricsDocumented checks docs/metrics.md names every trellis metric
// the registry has, and the Grafana dashboard only uses metrics that exist.
func TestMetricsDocumented(t *testing.T) {
	families, err := NewMetrics(nil).Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	for _, f := range families {
		known[f.GetName()] = true
	}
	for name := range contractMetrics {
		known[name] = true // vectors without series yet are not gathered
	}
	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for name := range known {
		if strings.HasPrefix(name, "trellis_") && !strings.Contains(string(doc), "`"+name+"`") {
			t.Errorf("docs/metrics.md does not describe %s", name)
		}
	}
	dash, err := os.ReadFile("../docs/grafana-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(dash, &v); err != nil {
		t.Fatalf("dashboard is not JSON: %v", err)
	}
	for _, m := range regexp.MustCompile(`\b(trellis|process|go)_[a-z_]+`).FindAllString(string(dash), -1) {
		base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(m, "_bucket"), "_sum"), "_count")
		if !known[base] {
			t.Errorf("dashboard uses unknown metric %s", m)
		}
	}
}

// TestTaskSeriesBounded: the task metrics of a DAG have one series
// whatever its number of tasks, unless it opted in; then the first
// MaxTaskSeries task ids have their own and the rest share TaskOther. A
// scrape after 100,000 tries of 100,000 distinct tasks stays small.
func TestTaskSeriesBounded(t *testing.T) {
	m := NewMetrics(nil)
	m.SetTaskSeries(func(dagID string) bool { return dagID == "per_task" })
	const wide, perTask = 100000, 250
	for i := range wide {
		m.TaskFinished("wide", fmt.Sprintf("t%06d", i), "success", time.Millisecond)
	}
	for i := range perTask {
		m.TaskFinished("per_task", fmt.Sprintf("t%03d", i), "failed", time.Second)
	}
	series := func(name string) map[string]float64 {
		t.Helper()
		fams, err := m.Registry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, f := range fams {
			if f.GetName() != name {
				continue
			}
			for _, s := range f.GetMetric() {
				var key []string
				for _, l := range s.GetLabel() {
					if l.GetName() != "state" {
						key = append(key, l.GetName()+"="+l.GetValue())
					}
				}
				v := s.GetCounter().GetValue()
				if f.GetType() == dto.MetricType_HISTOGRAM {
					v = float64(s.GetHistogram().GetSampleCount())
				}
				out[strings.Join(key, ",")] += v
			}
		}
		return out
	}
	for _, name := range []string{"trellis_task_instances_finished_total", "trellis_task_duration_seconds"} {
		got := series(name)
		if len(got) != 1+MaxTaskSeries+1 {
			t.Errorf("%s has %d series, want %d (one for wide, %d task ids and %s for per_task)", name, len(got), MaxTaskSeries+2, MaxTaskSeries, TaskOther)
		}
		if v := got["dag_id=wide,task_id="]; v != wide {
			t.Errorf("%s{dag_id=wide,task_id=\"\"} = %v, want %d", name, v, wide)
		}
		if v := got["dag_id=per_task,task_id=t000"]; v != 1 {
			t.Errorf("%s{dag_id=per_task,task_id=t000} = %v, want 1", name, v)
		}
		if v := got["dag_id=per_task,task_id="+TaskOther]; v != perTask-MaxTaskSeries {
			t.Errorf("%s{dag_id=per_task,task_id=%s} = %v, want %d", name, TaskOther, v, perTask-MaxTaskSeries)
		}
	}
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if n := rec.Body.Len(); n > 256<<10 {
		t.Errorf("/metrics is %d bytes after %d tasks, want it to stay small", n, wide+perTask)
	}
}

func TestMetricsOnlyHandler(t *testing.T) {
	m := NewMetrics(nil)
	m.RunCreated("etl", "manual")
	for _, tc := range []struct {
		token, auth, method, path string
		status                    int
	}{
		{"", "", "GET", "/metrics", 200},
		{"", "", "GET", "/api/v1/dags", 404},
		{"", "", "POST", "/metrics", 405},
		{"s3cret", "", "GET", "/metrics", 401},
		{"s3cret", "Bearer wrong", "GET", "/metrics", 401},
		{"s3cret", "Bearer s3cret", "GET", "/metrics", 200},
		{"s3cret", "", "GET", "/other", 401},
	} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(tc.method, tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		m.MetricsOnlyHandler(tc.token).ServeHTTP(rec, req)
		if rec.Code != tc.status {
			t.Errorf("%s %s (token %q, auth %q) = %d, want %d", tc.method, tc.path, tc.token, tc.auth, rec.Code, tc.status)
		}
		body := rec.Body.String()
		if tc.status == 200 && !strings.Contains(body, `trellis_dag_runs_created_total{dag_id="etl",run_type="manual"} 1`) {
			t.Errorf("metrics body lacks the run created:\n%.500s", body)
		}
		if tc.status != 200 && !strings.Contains(body, fmt.Sprintf(`"status":%d`, tc.status)) {
			t.Errorf("%d answer is %q, want a problem body", rec.Code, body)
		}
	}
}
