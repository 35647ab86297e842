package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// BenchmarkGetTaskInstances measures GET …/taskInstances of a 100-task run
// over real HTTP, with 16 parallel clients, on each store, for a finished
// run and a running one. It reports req/s (target ≥ 3,000) and the CPU
// time of the process per request.
//
//	go test -run XXX -bench GetTaskInstances -benchtime 5s ./api/
func BenchmarkGetTaskInstances(b *testing.B) {
	for _, backend := range backends {
		for _, finished := range []bool{true, false} {
			name := backend + "/finished"
			if !finished {
				name = backend + "/running"
			}
			b.Run(name, func(b *testing.B) { benchTaskInstances(b, backend, finished) })
		}
	}
}

// benchTaskInstances serves a 100-task run: finished (answered from the
// finished-run cache after the first request) or running (read from the
// store every time; one task has run).
func benchTaskInstances(b *testing.B, backend string, finished bool) {
	e := newEnv(b, backend)
	d := dag.New("wide100")
	noop := func(*dag.Context) error { return nil }
	root := d.Func("t000", noop)
	for i := 1; i < 100; i++ {
		d.Func(fmt.Sprintf("t%03d", i), noop).SetUpstream(root)
	}
	e.reg.Register(d)
	var specs []store.DAGSpec
	for _, x := range e.reg.DAGs() {
		specs = append(specs, store.SpecFromDAG(x))
	}
	if err := e.store.SyncDAGs(context.Background(), specs); err != nil {
		b.Fatal(err)
	}
	e.trigger("wide100", map[string]any{"dag_run_id": "bench"})
	if finished {
		if n := e.work(nil); n != 100 {
			b.Fatalf("ran %d tasks, want 100", n)
		}
	}
	const path = "/api/v1/dags/wide100/dagRuns/bench/taskInstances"
	// One validated request first: the answer is the full run.
	if got := e.ok(200, "GET", path, nil); num(got, "total_entries") != 100 || len(items(b, got, "task_instances")) != 100 {
		b.Fatalf("answer: %v entries", got["total_entries"])
	}

	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	url := e.srv.URL + path
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0 := time.Now(), processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	elapsed, cpu := time.Since(start), processCPU()-cpu0
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "req/s")
	// CPU of this process (server and client) per request: the machine is
	// shared, so req/s depends on the load around.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// processCPU returns the user and system CPU time this process used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkTaskInstancesAcrossRuns measures task instance lists across
// runs with many runs stored (TRELLIS_BENCH_RUNS, default 100,000 one-task
// runs), over real HTTP, one client: the cases of issue 11 (a page of
// 1,000, a page of 1 filtered by execution date, the batch list).
//
//	go test -run XXX -bench TaskInstancesAcrossRuns -benchtime 20x ./api/
func BenchmarkTaskInstancesAcrossRuns(b *testing.B) {
	runs := 100_000
	if v := os.Getenv("TRELLIS_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("TRELLIS_BENCH_RUNS=%q: want a positive integer", v)
		}
		runs = n
	}
	for _, backend := range backends {
		b.Run(backend, func(b *testing.B) {
			e := newEnv(b, backend)
			fillRuns(b, e, "solo", runs)
			client := &http.Client{}
			for _, c := range []struct{ name, method, path, body string }{
				{"limit1000", "GET", "/api/v1/dags/~/dagRuns/~/taskInstances?limit=1000", ""},
				{"limit1_execution_date_gte", "GET", "/api/v1/dags/~/dagRuns/~/taskInstances?limit=1&execution_date_gte=2030-01-01T00:00:00Z", ""},
				{"batch_list1000", "POST", "/api/v1/dags/~/dagRuns/~/taskInstances/list", `{"page_limit": 1000}`},
			} {
				b.Run(c.name, func(b *testing.B) {
					for b.Loop() {
						var body io.Reader
						if c.body != "" {
							body = strings.NewReader(c.body)
						}
						req, _ := http.NewRequest(c.method, e.srv.URL+c.path, body)
						resp, err := client.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
						if resp.StatusCode != 200 {
							b.Fatalf("status %d", resp.StatusCode)
						}
					}
				})
			}
		})
	}
}

// fillRuns creates n runs of dagID (a DAG without schedule), a day apart
// from 2026-01-01, in batches of one FireRuns transaction each.
func fillRuns(b *testing.B, e *env, dagID string, n int) {
	b.Helper()
	ctx := context.Background()
	d, err := e.store.GetDAG(ctx, dagID)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var prev *time.Time
	const batch = 2000
	for i := 0; i < n; i += batch {
		f := store.Fire{DAGID: dagID, Prev: prev}
		for j := i; j < min(n, i+batch); j++ {
			ld := t0.Add(time.Duration(j) * time.Minute)
			f.Runs = append(f.Runs, store.NewRun{DAGID: dagID, RunID: fmt.Sprintf("fill__%07d", j),
				RunType: store.RunScheduled, LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(time.Minute),
				Fingerprint: d.Fingerprint, QueuedAt: ld})
			f.Last = ld.Add(time.Minute)
		}
		res, err := e.store.FireRuns(ctx, []store.Fire{f}, time.Now())
		if err != nil || res[0].Err != nil {
			b.Fatalf("fire runs %d: %v %v", i, err, res[0].Err)
		}
		last := f.Last
		prev = &last
	}
}
