package executor

import (
	"context"
	"net/http/httptest"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
)

// BenchmarkMetricsScrapeAfterRun runs a 100,000-task run (testdags.BigDAG)
// on PostgreSQL through two worker processes, their
// finishes feeding api.Metrics through the event hook, then measures a
// scrape of /metrics: its time per operation and its size (bytes/scrape).
// Set TRELLIS_BENCH_METRICS_TASKS to change the run's size.
func BenchmarkMetricsScrapeAfterRun(b *testing.B) {
	size := 100000
	if v, err := strconv.Atoi(os.Getenv("TRELLIS_BENCH_METRICS_TASKS")); err == nil && v >= 3 {
		size = v
	}
	bin := buildTestbin(b)
	url := testdb.Postgres(b)
	st := openStore(b, url)
	big := testdags.BigDAG(size)
	syncDAGs(b, st, big)
	m := api.NewMetrics(nil)
	env := newProcEnv(b)
	logs := &syncBuffer{}
	newTestPool(b, bin, url, st, env, logs, func(c *PoolConfig) {
		c.Processes, c.Slots, c.Events = 2, DefaultSlots, apiEvents{m}
		c.HeartbeatInterval = DefaultHeartbeatInterval
		c.Env = append(c.Env, testdags.EnvBig+"="+strconv.Itoa(size))
	})
	startRun(b, st, big, "r1", nil)
	waitRun(b, st, big.ID(), "r1", 30*time.Minute)
	deadline := time.Now().Add(30 * time.Second)
	for gathered(b, m, "trellis_task_instances_finished_total", "")[""] < float64(size) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if _, n, err := st.ListTaskInstances(context.Background(), store.TaskQuery{Limit: 1}); err != nil || float64(n) != gathered(b, m, "trellis_task_instances_finished_total", "")[""] {
		b.Fatalf("the store has %d task instances (%v), the metrics count %v finishes", n, err, gathered(b, m, "trellis_task_instances_finished_total", "")[""])
	}
	h := m.Handler()
	bytes := 0
	b.ResetTimer()
	for range b.N {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		bytes = rec.Body.Len()
	}
	b.ReportMetric(float64(bytes), "bytes/scrape")
}
