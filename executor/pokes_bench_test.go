package executor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// BenchmarkRunPokes runs the checks of batches of 1,000 pokes as the
// poke loop does, with the check of `trellis bench`'s sensors (a param
// read and a stat of a file that does not exist): the worker's CPU and
// allocations per poke without the store (b.N counts pokes).
func BenchmarkRunPokes(b *testing.B) {
	const n = pokeBatch
	missing := filepath.Join(b.TempDir(), "release")
	d := dag.New("pokes", dag.Params(map[string]any{"release_file": ""}))
	for i := range n {
		d.Sensor(fmt.Sprintf("s%04d", i), func(c *dag.Context) (bool, error) {
			path, _ := c.Params()["release_file"].(string)
			_, err := os.Stat(path)
			return err == nil, nil
		}, dag.PokeInterval(time.Second), dag.SensorTimeout(time.Hour))
	}
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
	cpu0 := processCPU(b)
	b.ResetTimer()
	for done := 0; done < b.N; done += n {
		for _, r := range w.runPokes(ctx, pokes) {
			if r.Result.State != state.Deferred {
				b.Fatalf("poke %+v, want not yet", r)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
}

// processCPU is the CPU time (user and system) this process used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
