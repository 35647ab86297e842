package executor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/cputime"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// sensorsDAG is n sensors that poke every second until the file named by
// their param release_file exists (the run's conf may set it).
func sensorsDAG(id, release string, n int) *dag.DAG {
	d := dag.New(id, dag.Params(map[string]any{"release_file": release}))
	for i := range n {
		d.Sensor(fmt.Sprintf("s%04d", i), func(c *dag.Context) (bool, error) {
			v, _ := c.Param("release_file")
			path, _ := v.(string)
			_, err := os.Stat(path)
			return err == nil, nil
		}, dag.PokeInterval(time.Second), dag.SensorTimeout(time.Hour))
	}
	return d
}

// BenchmarkRunPokes runs the checks of batches of 1,000 pokes as the
// poke loop does, with the check of `trellis bench`'s sensors (a param
// read and a stat of a file that does not exist): the worker's CPU and
// allocations per poke without the store (b.N counts pokes).
func BenchmarkRunPokes(b *testing.B) {
	const n = pokeBatch
	missing := filepath.Join(b.TempDir(), "release")
	d := sensorsDAG("pokes", "", n)
	reg := dag.NewRegistry()
	reg.Register(d)
	w, err := NewWorker(WorkerConfig{Store: openStore(b, testdb.SQLite(b)), Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	conf := []byte(fmt.Sprintf(`{"release_file": %q}`, missing))
	pokes := make([]store.Poke, n)
	for i := range pokes {
		pokes[i] = store.Poke{Try: store.Try{ID: int64(i + 1), TryNumber: 1}, Lease: 1, RunID: 1, DAGID: "pokes",
			DAGRunID: "r", TaskID: fmt.Sprintf("s%04d", i), TriggerTimeout: time.Now().Add(time.Hour)}
	}
	pokes[0].Conf = conf
	ctx := context.Background()
	b.ReportAllocs()
	cpu := cputime.Start(b)
	b.ResetTimer()
	for done := 0; done < b.N; done += n {
		for _, r := range w.runPokes(ctx, pokes) {
			if r.Result.State != state.Deferred {
				b.Fatalf("poke %+v, want not yet", r)
			}
		}
	}
	cpu.Report()
}

// BenchmarkPokeCycle runs the whole poke cycle of a worker on 1,000
// Sensors deferred on PostgreSQL, as the poke loop does it, one batch
// after another: claim the due pokes (one statement), run their checks
// (the bench's check, "not yet") and record them (one transaction). b.N
// counts pokes; cpu-ns/op is this process's CPU per poke (the store
// client's work included, PostgreSQL's own not: another process).
func BenchmarkPokeCycle(b *testing.B) {
	const n = pokeBatch
	missing := filepath.Join(b.TempDir(), "release")
	d := sensorsDAG("cycle", missing, n)
	reg := dag.NewRegistry()
	reg.Register(d)
	st := openStore(b, testdb.Postgres(b))
	syncDAGs(b, st, d)
	w, err := NewWorker(WorkerConfig{Store: st, Registry: reg})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := st.RegisterWorker(ctx, w.self); err != nil {
		b.Fatal(err)
	}
	startRun(b, st, d, "r", nil)
	claimed, err := st.ClaimTasks(ctx, w.self, n, time.Now())
	if err != nil || len(claimed) != n {
		b.Fatalf("claimed %d sensors, %v; want %d", len(claimed), err, n)
	}
	results := make([]store.Result, n)
	for i, c := range claimed {
		results[i] = store.Result{Try: store.Try{ID: c.ID, TryNumber: c.TryNumber}, State: state.Deferred, EndedAt: time.Now(),
			Deferral: store.Deferral{Poke: true, NextCheckAt: time.Now(), TriggerTimeout: time.Now().Add(time.Hour)}}
	}
	if _, err := st.FinishTasks(ctx, results); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	cpu := cputime.Start(b)
	b.ResetTimer()
	for done := 0; done < b.N; done += n {
		now := time.Now().Add(2 * time.Second) // every poke is due
		pokes, _, err := st.ClaimPokes(ctx, w.self, n, now, now.Add(pokeLease))
		if err != nil || len(pokes) != n {
			b.Fatalf("claimed %d pokes, %v; want %d", len(pokes), err, n)
		}
		results := w.runPokes(ctx, pokes)
		outs, err := st.FinishPokes(ctx, w.self, results, time.Now())
		if err != nil {
			b.Fatal(err)
		}
		for _, o := range outs {
			if !o.Applied {
				b.Fatalf("poke result not applied: %+v", o)
			}
		}
	}
	cpu.Report()
}
