package taskrun_test

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
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

// pokeAll runs tries through taskrun.Pokes and returns their outcomes,
// failing the test when one is delivered twice or not at all.
func pokeAll(t *testing.T, ctx context.Context, parallel int, tries []taskrun.Try) []taskrun.Outcome {
	t.Helper()
	outs := make([]taskrun.Outcome, len(tries))
	var mu sync.Mutex
	seen := make([]int, len(tries))
	taskrun.Pokes(ctx, len(tries), parallel, func(i int) taskrun.Try { return tries[i] }, func(i int, o taskrun.Outcome) {
		mu.Lock()
		defer mu.Unlock()
		seen[i]++
		outs[i] = o
	})
	for i, n := range seen {
		if n != 1 {
			t.Errorf("outcome %d delivered %d times, want once", i, n)
		}
	}
	return outs
}

// TestPokesAbandon: on a single goroutine, a check that ignores its
// context past its limit and KillGrace is abandoned — failed, timed out,
// Abandoned, its log ending with that and closed to the goroutine left
// running — and the rest of the batch still runs on a new goroutine.
func TestPokesAbandon(t *testing.T) {
	d := dag.New("abandon")
	release := make(chan struct{})
	left := make(chan struct{})
	stuck := d.Sensor("stuck", func(c *dag.Context) (bool, error) {
		<-release
		c.Logger().Info("written after the abandonment")
		close(left)
		return true, nil
	}, dag.PokeInterval(time.Minute))
	var checked atomic.Int32
	fine := d.Sensor("fine", func(*dag.Context) (bool, error) { checked.Add(1); return false, nil }, dag.PokeInterval(time.Minute))
	var stuckLog syncBuffer
	tries := []taskrun.Try{{Task: stuck, Info: info("stuck"), Log: &stuckLog, Limit: 20 * time.Millisecond, KillGrace: 20 * time.Millisecond}}
	for range 4 {
		tries = append(tries, taskrun.Try{Task: fine, Info: info("fine"), Limit: time.Minute})
	}
	outs := pokeAll(t, context.Background(), 1, tries)
	if o := outs[0]; o.State != state.Failed || !o.Abandoned || !o.TimedOut || !errors.Is(o.Err, taskrun.ErrTimeout) {
		t.Errorf("stuck check = %+v, want failed, timed out and abandoned", o)
	}
	for i, o := range outs[1:] {
		if o.State != state.Deferred || o.Abandoned {
			t.Errorf("check %d after the stuck one = %+v, want deferred", i+1, o)
		}
	}
	if n := checked.Load(); n != 4 {
		t.Errorf("%d checks ran after the stuck one, want 4", n)
	}
	if !strings.Contains(stuckLog.String(), "task failed") {
		t.Errorf("log of the abandoned check:\n%s\nwant the failure", stuckLog.String())
	}
	close(release)
	<-left
	if strings.Contains(stuckLog.String(), "after the abandonment") {
		t.Errorf("the abandoned check still wrote to its log:\n%s", stuckLog.String())
	}
}

// TestPokesHalt: when the batch's context ends, the running check's
// context ends with its cause (not a timeout: the check's own answer
// stands), and the checks not started yet are not run.
func TestPokesHalt(t *testing.T) {
	d := dag.New("halt")
	halt := errors.New("worker halts")
	ctx, cancel := context.WithCancelCause(context.Background())
	var calls atomic.Int32
	var cause, err error
	s := d.Sensor("s", func(c *dag.Context) (bool, error) {
		if calls.Add(1) == 1 {
			cancel(halt)
			<-c.Done()
			cause, err = context.Cause(c), c.Err()
			return false, nil
		}
		return true, nil
	}, dag.PokeInterval(time.Minute))
	tries := make([]taskrun.Try, 3)
	for i := range tries {
		tries[i] = taskrun.Try{Task: s, Info: info("s"), Limit: time.Minute}
	}
	outs := pokeAll(t, ctx, 1, tries)
	if !errors.Is(cause, halt) || !errors.Is(err, context.Canceled) {
		t.Errorf("the running check's context ended with %v (cause %v), want canceled by %v", err, cause, halt)
	}
	if o := outs[0]; o.State != state.Deferred || o.TimedOut {
		t.Errorf("the running check = %+v, want its own answer (deferred)", o)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d checks ran, want only the one running when the context ended", n)
	}
	for i, o := range outs[1:] {
		if o.State != state.Failed || !errors.Is(o.Err, halt) {
			t.Errorf("check %d not started = %+v, want failed with the halt's cause", i+1, o)
		}
	}
}

// TestPokesDeadline: a check's context reports its deadline (start plus
// the shorter of Limit and the task's Timeout) and, once it passes, ends
// as a deadline does (DeadlineExceeded) with a cause that wraps
// ErrTimeout — whether the check waited on it or first looked at it
// after the deadline.
func TestPokesDeadline(t *testing.T) {
	d := dag.New("deadline")
	var got time.Time
	var ok bool
	var cause, err error
	wait := d.Sensor("wait", func(c *dag.Context) (bool, error) {
		got, ok = c.Deadline()
		<-c.Done()
		cause, err = context.Cause(c), c.Err()
		return false, nil
	}, dag.PokeInterval(time.Minute), dag.Timeout(time.Hour))
	late := d.Sensor("late", func(c *dag.Context) (bool, error) {
		time.Sleep(60 * time.Millisecond)
		cause, err = context.Cause(c), c.Err()
		return false, nil
	}, dag.PokeInterval(time.Minute))
	before := time.Now()
	out := taskrun.Poke(context.Background(), taskrun.Try{Task: wait, Info: info("wait"), Limit: 30 * time.Millisecond})
	after := time.Now()
	if !ok || got.Before(before.Add(30*time.Millisecond)) || got.After(after.Add(30*time.Millisecond)) {
		t.Errorf("deadline %v (set %v), want 30ms after the check started (%v – %v)", got, ok, before, after)
	}
	if !errors.Is(cause, taskrun.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !out.TimedOut || out.State != state.Failed {
		t.Errorf("waiting check: cause %v, err %v, outcome %+v; want a timeout", cause, err, out)
	}
	cause, err = nil, nil
	out = taskrun.Poke(context.Background(), taskrun.Try{Task: late, Info: info("late"), Limit: 20 * time.Millisecond, KillGrace: time.Minute})
	if !errors.Is(cause, taskrun.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || !out.TimedOut || out.Abandoned {
		t.Errorf("check looking after its deadline: cause %v, err %v, outcome %+v; want a timeout, not abandoned", cause, err, out)
	}
}

// TestPokesSpread: checks that wait get goroutines beside them, up to
// parallel — here four checks that each wait until all four run at once
// — and never more than parallel run at once.
func TestPokesSpread(t *testing.T) {
	const parallel = 4
	d := dag.New("spread")
	var running, most atomic.Int32
	all := make(chan struct{})
	var once sync.Once
	s := d.Sensor("s", func(c *dag.Context) (bool, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		if n == parallel {
			once.Do(func() { close(all) })
		}
		select {
		case <-all:
			return true, nil
		case <-c.Done():
			return false, context.Cause(c)
		}
	}, dag.PokeInterval(time.Minute))
	tries := make([]taskrun.Try, 2*parallel)
	for i := range tries {
		tries[i] = taskrun.Try{Task: s, Info: info("s"), Limit: time.Minute}
	}
	outs := pokeAll(t, context.Background(), parallel, tries)
	for i, o := range outs {
		if o.State != state.Success {
			t.Errorf("check %d = %+v, want success once %d ran at once", i, o, parallel)
		}
	}
	if m := most.Load(); m != parallel {
		t.Errorf("at most %d checks ran at once, want %d", m, parallel)
	}
}

// TestPokesKeptContext: checks run one after another on one goroutine,
// each keeping what it was given past its end — its *dag.Context in a
// variable and in a goroutine (without calling anything on it while it
// runs), and the context.Context behind it, made during the check (Done)
// or not. What each kept goes on showing its own check, never the next
// one's: its ids, params and environment, a context ended when its check
// ended, a log that takes nothing more and outputs that refuse writes.
// Each outcome's deferral stays its own too.
func TestPokesKeptContext(t *testing.T) {
	const n = 6
	d := dag.New("kept")
	type kept struct {
		c      *dag.Context
		done   <-chan struct{} // made during the check (odd checks)
		fromGo chan string     // what the goroutine saw once released
	}
	release := make(chan struct{})
	var mu sync.Mutex
	var prev *dag.Context
	var prevSeen []string // TaskID of the kept Context, read by the next check
	keeps := make([]kept, n)
	tasks := make([]*dag.Task, n)
	for i := range n {
		tasks[i] = d.Sensor(fmt.Sprintf("s%d", i), func(c *dag.Context) (bool, error) {
			mu.Lock()
			if prev != nil {
				prevSeen = append(prevSeen, prev.TaskID())
			}
			prev = c
			mu.Unlock()
			k := kept{c: c, fromGo: make(chan string, 1)}
			if i%2 == 1 {
				k.done = c.Done()
			}
			go func() {
				<-release
				p, _ := c.Param("i")
				k.fromGo <- fmt.Sprintf("%s %v %s %v", c.TaskID(), p, c.Getenv("TRELLIS_TASK_ID"), c.Err())
			}()
			keeps[i] = k
			return false, nil
		}, dag.PokeInterval(time.Duration(i+1)*time.Second))
	}
	tries := make([]taskrun.Try, n)
	logs := make([]syncBuffer, n)
	for i := range tries {
		tries[i] = taskrun.Try{Task: tasks[i], Info: info(fmt.Sprintf("s%d", i)), Log: &logs[i], Limit: time.Minute}
		tries[i].Info.Params = map[string]any{"i": i}
	}
	before := time.Now()
	outs := pokeAll(t, context.Background(), 1, tries)
	for i, o := range outs {
		if o.State != state.Deferred || o.Deferral == nil {
			t.Fatalf("check %d = %+v, want deferred", i, o)
		}
		if next := o.Deferral.NextCheckAt.Sub(before); next < time.Duration(i+1)*time.Second || next > time.Duration(i+1)*time.Second+time.Minute {
			t.Errorf("check %d: next check %v after the batch started, want its own interval %v", i, next, time.Duration(i+1)*time.Second)
		}
	}
	for i, want := range prevSeen {
		if want != fmt.Sprintf("s%d", i) {
			t.Errorf("check %d read the Context check %d kept: task %q, want s%d", i+1, i, want, i)
		}
	}
	close(release)
	for i, k := range keeps {
		if got, want := <-k.fromGo, fmt.Sprintf("s%d %d s%d %v", i, i, i, context.Canceled); got != want {
			t.Errorf("goroutine of check %d saw %q, want %q", i, got, want)
		}
		if k.c.TaskID() != fmt.Sprintf("s%d", i) || k.c.Err() == nil {
			t.Errorf("kept Context of check %d: task %q, err %v; want its own, ended", i, k.c.TaskID(), k.c.Err())
		}
		if k.done != nil {
			select {
			case <-k.done:
			default:
				t.Errorf("check %d: Done made during the check is still open", i)
			}
		}
		k.c.Logger().Info("written after the check")
		if err := k.c.SetOutput(i); err == nil {
			t.Errorf("check %d: SetOutput after the check succeeded", i)
		}
		if strings.Contains(logs[i].String(), "after the check") {
			t.Errorf("check %d: a kept Context still wrote to its log:\n%s", i, logs[i].String())
		}
	}
}

// TestPokesNoTask: a poke without a task fails permanently (it is not a
// Sensor) instead of panicking, and the rest of the batch runs.
func TestPokesNoTask(t *testing.T) {
	s := dag.New("none").Sensor("s", func(*dag.Context) (bool, error) { return true, nil })
	outs := pokeAll(t, context.Background(), 1, []taskrun.Try{{Info: info("x")}, {Task: s, Info: info("s")}})
	if o := outs[0]; o.State != state.Failed || !o.Permanent {
		t.Errorf("poke without a task = %+v, want failed permanently", o)
	}
	if o := outs[1]; o.State != state.Success {
		t.Errorf("poke after it = %+v, want success", o)
	}
}
