package executor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// benchPool starts the default pool (CPU-count processes, DefaultSlots
// each, default heartbeat) of testbin children on a fresh PostgreSQL
// schema and waits until every child has registered.
func benchPool(b *testing.B) (store.Store, procEnv) {
	b.Helper()
	bin := buildTestbin(b)
	url := testdb.Postgres(b)
	st := openStore(b, url)
	syncDAGs(b, st, testdags.Registry().DAGs()...)
	env := newProcEnv(b)
	logs := &syncBuffer{}
	p := newTestPool(b, bin, url, st, env, logs, func(c *PoolConfig) {
		c.Processes, c.Slots, c.HeartbeatInterval, c.Grace = 0, 0, 0, 0
	})
	waitCond(b, 30*time.Second, "every worker process to register", func() bool {
		ws, err := st.ListWorkers(context.Background())
		return err == nil && len(ws) == p.Processes()
	})
	return st, env
}

// runOnce creates run runID of dagID, starts it and waits for it; it
// returns the run's duration as the store recorded it (start → end).
func runOnce(b *testing.B, st store.Store, dagID, runID string) time.Duration {
	b.Helper()
	d := testdags.Registry().Lookup(dagID)
	startRun(b, st, d, runID, nil)
	run := waitRun(b, st, dagID, runID, 5*time.Minute)
	if run.State != state.RunSuccess {
		b.Fatalf("run %s = %s, want success", runID, run.State)
	}
	if run.StartedAt == nil || run.EndedAt == nil {
		b.Fatalf("run %s has no start or end time", runID)
	}
	return run.EndedAt.Sub(*run.StartedAt)
}

// BenchmarkFuncChainEdgeLatency measures, along a chain of Func tasks,
// the time from the end of a task (its end as the worker recorded it in
// the store, once the function had returned) to the start of the next
// task's function (the function's own clock reading), over every edge of
// b.N runs of the chain: reporting the result, releasing and claiming the
// next task (one FinishAndClaim transaction) and starting its try.
// store_edge is the same edge as the store records it (the next try's
// started_at, which the worker reads just before it runs the function).
func BenchmarkFuncChainEdgeLatency(b *testing.B) {
	st, env := benchPool(b)
	var edges, storeEdges []time.Duration
	b.ResetTimer()
	for i := range b.N {
		runID := fmt.Sprintf("b%d", i)
		runOnce(b, st, testdags.FuncChain, runID)
		b.StopTimer()
		tis := tasksOf(b, st, testdags.FuncChain, runID)
		var prev store.TaskInstance
		for k := range testdags.FuncChainLength {
			id := fmt.Sprintf("f%03d", k)
			raw, err := os.ReadFile(filepath.Join(env.dir, testdags.TimesName(id, runID)))
			if err != nil {
				b.Fatalf("times of task %s: %v", id, err)
			}
			start, err := strconv.ParseInt(string(raw), 10, 64)
			if err != nil {
				b.Fatalf("times of task %s: %q: %v", id, raw, err)
			}
			ti := tis[id]
			if ti.StartedAt == nil || ti.EndedAt == nil {
				b.Fatalf("task %s has no start or end: %+v", id, ti)
			}
			if k > 0 {
				edges = append(edges, time.Duration(start-prev.EndedAt.UnixNano()))
				storeEdges = append(storeEdges, ti.StartedAt.Sub(*prev.EndedAt))
			}
			prev = ti
		}
		b.StartTimer()
	}
	b.StopTimer()
	ms := func(ds []time.Duration, p float64) float64 {
		slices.Sort(ds)
		return float64(ds[int(p*float64(len(ds)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(ms(edges, 0.50), "edge_p50_ms")
	b.ReportMetric(ms(edges, 0.99), "edge_p99_ms")
	b.ReportMetric(ms(edges, 1), "edge_max_ms")
	b.ReportMetric(ms(storeEdges, 0.50), "store_edge_p50_ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkShellThroughput runs ShellFanTasks independent `true` tasks
// per op on the default pool and reports tasks per second.
func BenchmarkShellThroughput(b *testing.B) {
	st, _ := benchPool(b)
	var total time.Duration
	b.ResetTimer()
	for i := range b.N {
		total += runOnce(b, st, testdags.ShellFan, fmt.Sprintf("b%d", i))
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N*testdags.ShellFanTasks)/total.Seconds(), "tasks/s")
}

// BenchmarkShellChain runs a ShellChainLength-step chain of `true` per op
// on the default pool and reports the seconds per chain.
func BenchmarkShellChain(b *testing.B) {
	st, _ := benchPool(b)
	var total time.Duration
	b.ResetTimer()
	for i := range b.N {
		total += runOnce(b, st, testdags.ShellChain, fmt.Sprintf("b%d", i))
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "s/chain")
	b.ReportMetric(total.Seconds()/float64(b.N*testdags.ShellChainLength)*1000, "ms/step")
}
