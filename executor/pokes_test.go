package executor

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// TestWorkerPokesSensors: a real worker runs Sensors through its poke
// loop (no scheduler: a deferred sensor needs none) — a sensor true on its
// third poke succeeds on try 1 with the log of that poke only and its
// downstream runs; past SensorTimeout one fails and a SoftFail one is
// skipped; a poke's error fails the try (retried with its tries left: the
// retry pokes again and succeeds on try 2); a panicking check fails.
func TestWorkerPokesSensors(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			var three, flaky atomic.Int32
			poke := dag.PokeInterval(20 * time.Millisecond)
			d := dag.New("sensors")
			s := d.Sensor("three", func(c *dag.Context) (bool, error) {
				n := three.Add(1)
				c.Logger().Info(fmt.Sprintf("poke %d of param %v", n, c.Params()["p"]))
				return n == 3, nil
			}, poke)
			s.SetDownstream(d.Func("after", func(*dag.Context) error { return nil }))
			never := func(*dag.Context) (bool, error) { return false, nil }
			d.Sensor("timeout", never, poke, dag.SensorTimeout(300*time.Millisecond))
			d.Sensor("soft", never, poke, dag.SensorTimeout(300*time.Millisecond), dag.SoftFail())
			d.Sensor("flaky", func(c *dag.Context) (bool, error) {
				switch flaky.Add(1) {
				case 2:
					return false, errors.New("the check broke")
				case 1, 3:
					return false, nil
				}
				return c.TryNumber() == 2, nil
			}, poke, dag.Retries(1), dag.RetryDelay(10*time.Millisecond))
			d.Sensor("panics", func(*dag.Context) (bool, error) { panic("no file system") }, poke)
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			defer retrier(t, st)()
			newTestWorker(t, st, reg, nil)
			startRun(t, st, d, "r", []byte(`{"p":"x"}`))
			run := waitRun(t, st, "sensors", "r", 30*time.Second)
			tis := tasksOf(t, st, "sensors", "r")
			want := map[string]struct {
				st  state.TaskState
				try int
				err string
			}{
				"three": {state.Success, 1, ""}, "after": {state.Success, 1, ""},
				"timeout": {state.Failed, 1, "wait timed out"}, "soft": {state.Skipped, 1, "wait timed out"},
				"flaky": {state.Success, 2, ""}, "panics": {state.Failed, 1, "panic: no file system"},
			}
			for id, w := range want {
				ti := tis[id]
				if ti.State != w.st || ti.TryNumber != w.try || !strings.Contains(ti.Error, w.err) || ti.NextCheckAt != nil {
					t.Errorf("%s: %s on try %d, error %q, next check %v; want %s on try %d with %q",
						id, ti.State, ti.TryNumber, ti.Error, ti.NextCheckAt, w.st, w.try, w.err)
				}
			}
			if run.State != state.RunFailed {
				t.Errorf("run %s, want failed (timeout and panics)", run.State)
			}
			if n := three.Load(); n != 3 {
				t.Errorf("three was poked %d times, want 3", n)
			}
			log := waitLog(t, st, "sensors", "r", "three", 1, "poke 3 of param x", "task succeeded")
			if strings.Contains(log, "poke 2") {
				t.Errorf("the log of three keeps a \"not yet\" poke:\n%s", log)
			}
			waitLog(t, st, "sensors", "r", "flaky", 1, "the check broke")
		})
	}
}

// TestSparseSensorPokedOnTime: a lone sensor is poked again about its
// interval after each poke, not at the poke loop's PollInterval (the
// store's next due time is then the lease of the poke in flight, a
// minute on).
func TestSparseSensorPokedOnTime(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			var mu sync.Mutex
			var at []time.Time
			d := dag.New("sparse")
			d.Sensor("lone", func(*dag.Context) (bool, error) {
				mu.Lock()
				defer mu.Unlock()
				at = append(at, time.Now())
				return len(at) == 4, nil
			}, dag.PokeInterval(100*time.Millisecond))
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.PollInterval = 5 * time.Second })
			startRun(t, st, d, "r", nil)
			if run := waitRun(t, st, "sparse", "r", 30*time.Second); run.State != state.RunSuccess {
				t.Fatalf("run %s, want success", run.State)
			}
			mu.Lock()
			defer mu.Unlock()
			// Interval + pokeGap + a claim: well under the 5 s PollInterval.
			for i := 2; i < len(at); i++ {
				if gap := at[i].Sub(at[i-1]); gap > 2*time.Second {
					t.Errorf("poke %d came %v after the one before, want about 100 ms + pokeGap (not PollInterval)", i+1, gap)
				}
			}
		})
	}
}

// TestPokeStandby: beside a poking worker, a standby worker's poke loop
// leaves the pokes to it (it claims only pokes left pokeStandbyLate overdue, and
// the poking worker claims often enough to leave none); once the poking
// worker stops, the standby takes the sensors over. Each worker has its
// own registry, so the checks count which worker poked. (Without the
// standby, the second worker would claim the pokes due at each of its
// wake-ups, every pokeGap: a share of them.)
func TestPokeStandby(t *testing.T) {
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			var poker, standby atomic.Int32
			const sensors = 20
			sensor := func(n *atomic.Int32) (*dag.DAG, *dag.Registry) {
				d := dag.New("standby")
				// Each due every 200 ms (100 pokes a second in all); the
				// poking worker looks every 50 ms (its PollInterval), so
				// it takes each poke within about 50 ms of its due time,
				// 200 ms before the standby may.
				for i := range sensors {
					d.Sensor(fmt.Sprintf("s%d", i), func(*dag.Context) (bool, error) { n.Add(1); return false, nil },
						dag.PokeInterval(200*time.Millisecond), dag.SensorTimeout(time.Hour))
				}
				reg := dag.NewRegistry()
				reg.Register(d)
				return d, reg
			}
			d, pokerReg := sensor(&poker)
			_, standbyReg := sensor(&standby)
			syncDAGs(t, st, d)
			defer retrier(t, st)()
			const poll = 400 * time.Millisecond
			p := newTestWorker(t, st, pokerReg, func(c *WorkerConfig) { c.PollInterval = 50 * time.Millisecond })
			newTestWorker(t, st, standbyReg, func(c *WorkerConfig) { c.PokeStandby, c.PollInterval = true, poll })
			startRun(t, st, d, "r", nil)

			// Whichever worker ran a first try, the standby claims as a
			// poking worker for PollInterval+pokeGap after (it scheduled
			// the first poke); past that only the poking worker pokes.
			deadline := time.Now().Add(10 * time.Second)
			for poker.Load() < 2*sensors {
				if time.Now().After(deadline) {
					t.Fatalf("the poking worker poked %d times in 10 s (standby %d)", poker.Load(), standby.Load())
				}
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(poll + pokeGap)
			p0, s0 := poker.Load(), standby.Load()
			time.Sleep(2 * time.Second)
			p1, s1 := poker.Load(), standby.Load()
			// A poke or two of the standby are let pass: pokes the poking
			// worker left pokeStandbyLate overdue on a loaded machine are its.
			if p1-p0 < 40 || s1-s0 > 2 {
				t.Fatalf("over 2 s beside a poking worker: the poking worker poked %d times, the standby %d; want at least 40 and at most 2",
					p1-p0, s1-s0)
			}

			// The poking worker stops: the standby pokes.
			p.Stop()
			for deadline = time.Now().Add(10 * time.Second); standby.Load() < s1+2*sensors; {
				if time.Now().After(deadline) {
					t.Fatalf("after the poking worker stopped, the standby poked %d times in 10 s, want %d", standby.Load()-s1, 2*sensors)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// TestRunPokesRuns: in a batch that mixes runs (one coming back after
// another), a run whose conf is not an object and a DAG this binary
// lacks, each check reads its own run's params, the bad run's pokes fail
// permanently and the unknown DAG's are requeued. A "not yet" has its
// next check and no EndedAt (no store keeps it); a final result has one.
func TestRunPokesRuns(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]any{}
	d := dag.New("runs", dag.Params(map[string]any{"x": "default"}))
	for _, id := range []string{"a", "b"} {
		d.Sensor(id, func(c *dag.Context) (bool, error) {
			v, _ := c.Param("x")
			mu.Lock()
			seen[c.RunID()+"/"+c.TaskID()] = v
			mu.Unlock()
			return false, nil
		}, dag.PokeInterval(time.Second))
	}
	reg := dag.NewRegistry()
	reg.Register(d)
	w, err := NewWorker(WorkerConfig{Store: openStore(t, testdb.SQLite(t)), Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	poke := func(id, run int64, dagID, task, conf string) store.Poke {
		p := store.Poke{Try: store.Try{ID: id, TryNumber: 1}, Lease: 1, RunID: run, DAGID: dagID,
			DAGRunID: fmt.Sprintf("r%d", run), TaskID: task, TriggerTimeout: time.Now().Add(time.Hour)}
		if conf != "" {
			p.Conf = []byte(conf)
		}
		return p
	}
	pokes := []store.Poke{
		poke(1, 1, "runs", "a", `{"x": "one"}`),
		poke(2, 2, "runs", "a", `{"x": "two"}`),
		poke(3, 1, "runs", "b", ""),
		poke(4, 3, "runs", "a", `[1]`),
		poke(5, 3, "runs", "b", ""),
		poke(6, 4, "gone", "a", `{}`),
		poke(7, 2, "runs", "b", ""),
	}
	res := w.runPokes(context.Background(), pokes)
	want := map[string]any{"r1/a": "one", "r2/a": "two", "r1/b": "one", "r2/b": "two"}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Errorf("checks read params %v, want %v", seen, want)
	}
	for i, r := range res {
		switch id := pokes[i].ID; id {
		case 1, 2, 3, 7:
			if r.Requeue || r.Result.State != state.Deferred || r.Result.Deferral.NextCheckAt.IsZero() || !r.Result.EndedAt.IsZero() {
				t.Errorf("poke %d = %+v, want a \"not yet\" with its next check and no EndedAt", id, r)
			}
		case 4, 5:
			if r.Result.State != state.Failed || !r.Result.Permanent || r.Result.EndedAt.IsZero() || !strings.Contains(r.Result.Error, `run "r3"`) {
				t.Errorf("poke %d = %+v, want failed permanently for its run's conf, with EndedAt", id, r)
			}
		case 6:
			if !r.Requeue {
				t.Errorf("poke %d = %+v, want requeued", id, r)
			}
		}
	}
}
