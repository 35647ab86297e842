package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/trellis-dag/trellis/store"

	"github.com/trellis-dag/trellis/clock"
)

// Namespace prefixes every Trellis metric.
const Namespace = "trellis"

// Metrics is Trellis's Prometheus registry: the metrics of CONTRACT §6
// (listed with their meaning in docs/metrics.md), the API's request
// metrics, and the Go runtime and process collectors. The components feed
// it as events happen by calling its methods; every method is safe for
// concurrent use and does nothing on a nil *Metrics, so a component
// without metrics needs no checks.
type Metrics struct {
	reg   *prometheus.Registry
	clock clock.Clock

	schedulerHeartbeats prometheus.Counter
	schedulerLoop       prometheus.Histogram
	runsCreated         *prometheus.CounterVec
	runDuration         *prometheus.HistogramVec
	scheduleDelay       *prometheus.HistogramVec
	tasksFinished       *prometheus.CounterVec
	taskDuration        *prometheus.HistogramVec
	taskQueued          *prometheus.HistogramVec
	taskInstances       *prometheus.GaugeVec
	workers             prometheus.Gauge
	slots               *prometheus.GaugeVec
	poolSlots           *prometheus.GaugeVec
	keyWaiting          prometheus.Gauge
	zombies             prometheus.Counter
	eventsDropped       prometheus.Counter
	purged              *prometheus.CounterVec
	apiRequests         *prometheus.CounterVec
	events              *prometheus.CounterVec
	apiDuration         *prometheus.HistogramVec

	lastHeartbeat atomic.Int64 // Unix nanoseconds of the latest scheduler heartbeat; 0 = none

	tasks taskSeries
}

// Per-task series of the task metrics (see SetTaskSeries).
const (
	// MaxTaskSeries is how many task ids of one DAG that opted in get
	// series of their own; its other tasks share TaskOther.
	MaxTaskSeries = 100
	// TaskOther is the task_id of the tasks of an opted-in DAG beyond
	// MaxTaskSeries.
	TaskOther = "__other__"
)

// taskSeries decides the task_id label of the task metrics, so that the
// series never grow with the number of tasks: "" (one series per DAG)
// unless the DAG opted in, and then the first MaxTaskSeries task ids seen
// and TaskOther.
type taskSeries struct {
	mu      sync.Mutex
	perTask func(dagID string) bool
	seen    map[string]map[string]struct{} // DAG -> task ids with series of their own
}

func (s *taskSeries) label(dagID, taskID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perTask == nil || !s.perTask(dagID) {
		return ""
	}
	ids := s.seen[dagID]
	if _, ok := ids[taskID]; ok {
		return taskID
	}
	if len(ids) >= MaxTaskSeries {
		return TaskOther
	}
	if ids == nil {
		if s.seen == nil {
			s.seen = map[string]map[string]struct{}{}
		}
		ids = map[string]struct{}{}
		s.seen[dagID] = ids
	}
	ids[taskID] = struct{}{}
	return taskID
}

// Histogram buckets, in seconds.
var (
	loopBuckets     = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	delayBuckets    = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	durationBuckets = []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 21600, 86400}
	requestBuckets  = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}
)

// NewMetrics returns a registry with every Trellis metric and the Go
// runtime and process collectors. clk stamps scheduler heartbeats; nil
// means the wall clock.
func NewMetrics(clk clock.Clock) *Metrics {
	if clk == nil {
		clk = clock.Real{}
	}
	m := &Metrics{reg: prometheus.NewRegistry(), clock: clk}
	m.schedulerHeartbeats = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "scheduler", Name: "heartbeat_total",
		Help: "Scheduler heartbeats: one per scheduler loop iteration that showed the scheduler alive.",
	})
	m.schedulerLoop = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "scheduler", Name: "loop_duration_seconds",
		Help:    "Time one scheduler loop iteration took (creating due runs, starting runs, requeueing retries, finding zombies).",
		Buckets: loopBuckets,
	})
	m.runsCreated = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "dag_runs", Name: "created_total",
		Help: "DAG runs created, by DAG and run type (scheduled, manual, backfill).",
	}, []string{"dag_id", "run_type"})
	m.runDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "dag_run", Name: "duration_seconds",
		Help:    "Time from a DAG run's start to its end, by DAG and final state (success, failed).",
		Buckets: durationBuckets,
	}, []string{"dag_id", "state"})
	m.scheduleDelay = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "dag_run", Name: "schedule_delay_seconds",
		Help:    "Time from the end of a scheduled run's data interval (when it is due) to the run's start.",
		Buckets: delayBuckets,
	}, []string{"dag_id"})
	m.tasksFinished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "task_instances", Name: "finished_total",
		Help: "Task instance tries finished, by DAG, outcome (success, failed, skipped, up_for_retry) and, for DAGs that opted in, task (else task_id is empty).",
	}, []string{"dag_id", "task_id", "state"})
	m.taskDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "task", Name: "duration_seconds",
		Help:    "Time one try of a task ran, from start to end, by DAG and, for DAGs that opted in, task (else task_id is empty).",
		Buckets: durationBuckets,
	}, []string{"dag_id", "task_id"})
	m.taskQueued = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "task", Name: "queued_seconds",
		Help:    "Time task instances waited in state queued before a worker started them, by DAG.",
		Buckets: delayBuckets,
	}, []string{"dag_id"})
	m.taskInstances = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "task_instances",
		Help: "Task instances currently in each state, as last counted or tracked by the scheduler.",
	}, []string{"state"})
	m.workers = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Subsystem: "executor", Name: "workers",
		Help: "Worker processes currently alive.",
	})
	m.slots = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Subsystem: "executor", Name: "slots",
		Help: "Task slots of the workers: open (free) and running (busy).",
	}, []string{"state"})
	m.poolSlots = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "pool_slots",
		Help: "Slots of each pool: open, running and queued (as GET /api/v1/pools reports them; open is -1 for an unlimited pool).",
	}, []string{"pool", "state"})
	m.keyWaiting = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "concurrency_key_waiting_task_instances",
		Help: "Queued task instances waiting because their concurrency key or their task's MaxActive is at its limit.",
	})
	m.zombies = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "zombie_tasks_total",
		Help: "Running task instances failed (or put up for retry) because their worker stopped heart-beating or died.",
	})
	m.eventsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: Namespace, Name: "task_events_dropped_total",
		Help: "Task finishes a worker process could not report to its pool (its queue was full), so the task metrics miss them.",
	})
	m.purged = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "purged_total",
		Help: "Rows deleted by retention and purges: finished runs, their task instances, and tries' logs (kind runs, task_instances, logs).",
	}, []string{"kind"})
	for _, k := range []string{"runs", "task_instances", "logs"} {
		m.purged.WithLabelValues(k) // present at 0 before the first purge
	}
	m.apiRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Subsystem: "api", Name: "requests_total",
		Help: "HTTP requests answered by the API, by route pattern, method and status code.",
	}, []string{"route", "method", "code"})
	m.apiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Subsystem: "api", Name: "request_duration_seconds",
		Help:    "Time the API took to answer a request, by route pattern and method.",
		Buckets: requestBuckets,
	}, []string{"route", "method"})
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "events_total",
		Help: "Events received by POST /api/v1/events: recorded, or duplicate (a kept event had the same dedupe_key).",
	}, []string{"outcome"})
	for _, o := range []string{"recorded", "duplicate"} {
		m.events.WithLabelValues(o)
	}
	m.reg.MustRegister(
		m.events,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.schedulerHeartbeats, m.schedulerLoop, m.runsCreated, m.runDuration, m.scheduleDelay,
		m.tasksFinished, m.taskDuration, m.taskQueued, m.taskInstances, m.workers, m.slots, m.poolSlots, m.keyWaiting,
		m.zombies, m.eventsDropped, m.purged, m.apiRequests, m.apiDuration,
	)
	// Series without labels or with a fixed label set exist from the start,
	// so dashboards show 0 rather than no data.
	for _, s := range []string{"open", "running"} {
		m.slots.WithLabelValues(s)
	}
	return m
}

// Registry returns the Prometheus registry, for extra collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in Prometheus's exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// MetricsOnlyHandler serves GET /metrics and nothing else (a problem
// body for any other path or method), requiring "Authorization: Bearer
// <token>" when token is not empty: the listener of `trellis worker` and
// `trellis scheduler`.
func (m *Metrics) MetricsOnlyHandler(token string) http.Handler {
	want := sha256.Sum256([]byte(token))
	metrics := m.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if token != "" {
			got, ok := bearerToken(r.Header.Get("Authorization"))
			sum := sha256.Sum256([]byte(got))
			if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="trellis"`)
				writeProblem(w, http.StatusUnauthorized, "", "the request needs the header Authorization: Bearer <token>")
				return
			}
		}
		switch {
		case r.URL.Path != "/metrics":
			writeProblem(w, http.StatusNotFound, "", fmt.Sprintf("%s is not served here; this listener serves GET /metrics only", r.URL.Path))
		case r.Method != http.MethodGet && r.Method != http.MethodHead:
			w.Header().Set("Allow", "GET, HEAD")
			writeProblem(w, http.StatusMethodNotAllowed, "", fmt.Sprintf("method %s is not allowed on /metrics (allowed: GET, HEAD)", r.Method))
		default:
			metrics.ServeHTTP(w, r)
		}
	})
}

// SchedulerHeartbeat records a scheduler heartbeat now.
func (m *Metrics) SchedulerHeartbeat() {
	if m == nil {
		return
	}
	m.schedulerHeartbeats.Inc()
	m.lastHeartbeat.Store(m.clock.Now().UnixNano())
}

// LatestSchedulerHeartbeat returns the time of the latest
// SchedulerHeartbeat in this process; it implements SchedulerHeartbeats.
func (m *Metrics) LatestSchedulerHeartbeat(context.Context) (time.Time, bool, error) {
	if m == nil {
		return time.Time{}, false, nil
	}
	ns := m.lastHeartbeat.Load()
	if ns == 0 {
		return time.Time{}, false, nil
	}
	return time.Unix(0, ns).UTC(), true, nil
}

// ObserveSchedulerLoop records how long one scheduler loop iteration took.
func (m *Metrics) ObserveSchedulerLoop(d time.Duration) {
	if m == nil {
		return
	}
	m.schedulerLoop.Observe(d.Seconds())
}

// RunCreated counts a DAG run created, of run type scheduled, manual or
// backfill.
func (m *Metrics) RunCreated(dagID, runType string) {
	if m == nil {
		return
	}
	m.runsCreated.WithLabelValues(dagID, runType).Inc()
}

// EventReceived counts an event recorded, or a duplicate.
func (m *Metrics) EventReceived(duplicate bool) {
	if m == nil {
		return
	}
	o := "recorded"
	if duplicate {
		o = "duplicate"
	}
	m.events.WithLabelValues(o).Inc()
}

// RunFinished records a DAG run that ended in state (success or failed)
// after running for d.
func (m *Metrics) RunFinished(dagID, state string, d time.Duration) {
	if m == nil {
		return
	}
	m.runDuration.WithLabelValues(dagID, state).Observe(d.Seconds())
}

// ScheduleDelay records how late a scheduled run started: its start minus
// the end of its data interval.
func (m *Metrics) ScheduleDelay(dagID string, d time.Duration) {
	if m == nil {
		return
	}
	m.scheduleDelay.WithLabelValues(dagID).Observe(d.Seconds())
}

// SetTaskSeries chooses the DAGs whose task metrics have a series per
// task (dag.TaskMetrics): for those, the first MaxTaskSeries task ids
// seen get series of their own and the rest share task_id TaskOther; the
// tasks of every other DAG share task_id "". nil (the default) gives
// every DAG one series. perTask must be cheap and safe for concurrent
// use.
func (m *Metrics) SetTaskSeries(perTask func(dagID string) bool) {
	if m == nil {
		return
	}
	m.tasks.mu.Lock()
	defer m.tasks.mu.Unlock()
	m.tasks.perTask = perTask
}

// TaskFinished records one finished try of a task, its outcome state and
// how long it ran, under the task_id label SetTaskSeries decides.
func (m *Metrics) TaskFinished(dagID, taskID, state string, d time.Duration) {
	if m == nil {
		return
	}
	label := m.tasks.label(dagID, taskID)
	m.tasksFinished.WithLabelValues(dagID, label, state).Inc()
	m.taskDuration.WithLabelValues(dagID, label).Observe(d.Seconds())
}

// TaskQueued records how long a task instance waited in queued before a
// worker started it.
func (m *Metrics) TaskQueued(dagID string, d time.Duration) {
	if m == nil {
		return
	}
	m.taskQueued.WithLabelValues(dagID).Observe(d.Seconds())
}

// SetTaskInstances sets how many task instances are in state.
func (m *Metrics) SetTaskInstances(state string, n int) {
	if m == nil {
		return
	}
	m.taskInstances.WithLabelValues(state).Set(float64(n))
}

// AddTaskInstances adds delta (negative to remove) to the task instances
// in state, for callers that track transitions rather than count.
func (m *Metrics) AddTaskInstances(state string, delta int) {
	if m == nil {
		return
	}
	m.taskInstances.WithLabelValues(state).Add(float64(delta))
}

// SetWorkers sets how many worker processes are alive.
func (m *Metrics) SetWorkers(n int) {
	if m == nil {
		return
	}
	m.workers.Set(float64(n))
}

// SetPools sets the slots of every pool; pools not listed (deleted) lose
// their series.
func (m *Metrics) SetPools(pools []store.Pool) {
	if m == nil {
		return
	}
	m.poolSlots.Reset()
	for _, p := range pools {
		m.poolSlots.WithLabelValues(p.Name, "open").Set(float64(p.OpenSlots()))
		m.poolSlots.WithLabelValues(p.Name, "running").Set(float64(p.RunningSlots))
		m.poolSlots.WithLabelValues(p.Name, "queued").Set(float64(p.QueuedSlots))
	}
}

// SetKeyWaiting sets how many queued instances wait on a concurrency key
// or task cap at its limit.
func (m *Metrics) SetKeyWaiting(n int) {
	if m == nil {
		return
	}
	m.keyWaiting.Set(float64(n))
}

// SetSlots sets the open (free) and running (busy) task slots.
func (m *Metrics) SetSlots(open, running int) {
	if m == nil {
		return
	}
	m.slots.WithLabelValues("open").Set(float64(open))
	m.slots.WithLabelValues("running").Set(float64(running))
}

// ZombieDetected counts one task instance taken away as a zombie.
func (m *Metrics) ZombieDetected() { m.ZombiesDetected(1) }

// Purged counts what a purge deleted: kind is runs, task_instances or
// logs (tries' logs).
func (m *Metrics) Purged(kind string, n int) {
	if m == nil || n <= 0 {
		return
	}
	m.purged.WithLabelValues(kind).Add(float64(n))
}

// ZombiesDetected counts n task instances taken away as zombies.
func (m *Metrics) ZombiesDetected(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.zombies.Add(float64(n))
}

// TaskEventsDropped counts n task finishes that a worker process could
// not report.
func (m *Metrics) TaskEventsDropped(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.eventsDropped.Add(float64(n))
}

// apiRequest records one answered API request.
func (m *Metrics) apiRequest(route, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	method = metricMethod(method)
	m.apiRequests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	m.apiDuration.WithLabelValues(route, method).Observe(d.Seconds())
}

// metricMethod bounds the method label to the standard methods.
func metricMethod(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}
