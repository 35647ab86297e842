package taskrun_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

func TestFuncSuccessLogsAndOutput(t *testing.T) {
	d := dag.New("d")
	var got dag.RunInfo
	task := d.Func("f", func(c *dag.Context) error {
		got = dag.RunInfo{DAGID: c.DAGID(), RunID: c.RunID(), TaskID: c.TaskID(),
			TryNumber: c.TryNumber(), LogicalDate: c.LogicalDate()}
		got.IntervalStart, got.IntervalEnd = c.DataInterval()
		c.Logger().Info("hello", "rows", 3)
		c.Logger().Debug("details")
		if err := c.SetOutput(map[string]int{"first": 1}); err != nil {
			return err
		}
		return c.SetOutput(map[string]int{"rows": 3}) // the last value wins
	})
	var log bytes.Buffer
	in := info("f")
	in.TryNumber = 2
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: in, Log: &log})
	if out.State != state.Success || out.Err != nil || out.Permanent || out.TimedOut {
		t.Fatalf("outcome %+v, want a plain success", out)
	}
	if string(out.Output) != `{"rows":3}` {
		t.Errorf("output %s, want {\"rows\":3}", out.Output)
	}
	if out.Follow != nil {
		t.Errorf("Follow %v for a Func, want nil", out.Follow)
	}
	if !reflect.DeepEqual(got, in) {
		t.Errorf("context saw %+v, want %+v", got, in)
	}
	for _, want := range []string{"level=INFO msg=hello rows=3", "level=DEBUG msg=details", `msg="task succeeded"`} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

func TestFuncOutcomes(t *testing.T) {
	boom := errors.New("boom")
	cases := []struct {
		name      string
		err       error
		state     state.TaskState
		permanent bool
		logs      string
	}{
		{"error", boom, state.Failed, false, `msg="task failed" error=boom permanent=false`},
		{"wrapped error", fmt.Errorf("load: %w", boom), state.Failed, false, "error=\"load: boom\""},
		{"skip", dag.Skip("nothing to do"), state.Skipped, false, `reason="skipped: nothing to do"`},
		{"wrapped skip", fmt.Errorf("step: %w", dag.Skip("later")), state.Skipped, false, "msg=\"task skipped\""},
		{"permanent", dag.Permanent(boom), state.Failed, true, "permanent=true"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := dag.New("d")
			task := d.Func("f", func(ctx *dag.Context) error {
				if err := ctx.SetOutput("partial"); err != nil {
					return err
				}
				return c.err
			})
			var log bytes.Buffer
			out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("f"), Log: &log})
			if out.State != c.state || out.Permanent != c.permanent || out.TimedOut {
				t.Fatalf("outcome %+v, want state %s permanent %v", out, c.state, c.permanent)
			}
			if !errors.Is(out.Err, c.err) {
				t.Errorf("Err %v does not wrap %v", out.Err, c.err)
			}
			if out.Output != nil {
				t.Errorf("output %s kept for a %s try, want none", out.Output, out.State)
			}
			if !strings.Contains(log.String(), c.logs) {
				t.Errorf("log lacks %q:\n%s", c.logs, log.String())
			}
		})
	}
}

func panicsHere(*dag.Context) error { panic("kaboom") }

func TestFuncPanicWritesStack(t *testing.T) {
	d := dag.New("d")
	task := d.Func("p", panicsHere, dag.Retries(2))
	var log bytes.Buffer
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("p"), Log: &log})
	if out.State != state.Failed || out.Permanent {
		t.Fatalf("outcome %+v, want failed and retryable", out)
	}
	if out.Err == nil || out.Err.Error() != "panic: kaboom" {
		t.Errorf("Err = %v, want panic: kaboom", out.Err)
	}
	for _, want := range []string{"panic: kaboom", "goroutine ", "taskrun_test.panicsHere", "run_test.go:"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, log.String())
		}
	}
}

func TestFuncTimeoutHonouringContext(t *testing.T) {
	d := dag.New("d")
	task := d.Func("slow", func(c *dag.Context) error {
		<-c.Done()
		return c.Err()
	}, dag.Timeout(30*time.Millisecond))
	var log bytes.Buffer
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("slow"), Log: &log})
	if out.State != state.Failed || !out.TimedOut || out.Permanent {
		t.Fatalf("outcome %+v, want failed, timed out, retryable", out)
	}
	if !errors.Is(out.Err, taskrun.ErrTimeout) || !strings.Contains(out.Err.Error(), "30ms") {
		t.Errorf("Err %v, want ErrTimeout naming 30ms", out.Err)
	}
	if !strings.Contains(log.String(), "timed_out=true") {
		t.Errorf("log does not record the timeout:\n%s", log.String())
	}
}

func TestFuncIgnoringContextIsAbandoned(t *testing.T) {
	d := dag.New("d")
	release := make(chan struct{})
	lateDone := make(chan error, 1)
	task := d.Func("stuck", func(c *dag.Context) error {
		<-release // ignores c
		c.Logger().Info("late line")
		lateDone <- c.SetOutput("late")
		return nil
	}, dag.Timeout(20*time.Millisecond))
	log := &syncBuffer{}
	out := await(t, runAsync(context.Background(), taskrun.Try{Task: task, Info: info("stuck"), Log: log,
		KillGrace: 30 * time.Millisecond}), 10*time.Second)
	if out.State != state.Failed || !out.TimedOut || !out.Abandoned || !errors.Is(out.Err, taskrun.ErrTimeout) {
		t.Fatalf("outcome %+v, want failed by timeout and abandoned", out)
	}
	if !strings.Contains(out.Err.Error(), "abandoned") {
		t.Errorf("Err %q does not say the function was abandoned", out.Err)
	}
	// The abandoned goroutine can no longer write into the try's log or
	// record an output.
	close(release)
	if err := <-lateDone; err == nil {
		t.Error("SetOutput after the try ended succeeded, want an error")
	}
	if strings.Contains(log.String(), "late line") {
		t.Errorf("an abandoned function wrote into the log after Run returned:\n%s", log)
	}
}

func TestFuncCancelled(t *testing.T) {
	d := dag.New("d")
	started := make(chan struct{})
	task := d.Func("f", func(c *dag.Context) error {
		close(started)
		<-c.Done()
		return c.Err()
	}, dag.Timeout(time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	ch := runAsync(ctx, taskrun.Try{Task: task, Info: info("f")})
	<-started
	cancel()
	out := await(t, ch, 10*time.Second)
	if out.State != state.Failed || out.TimedOut || !errors.Is(out.Err, context.Canceled) {
		t.Fatalf("outcome %+v, want failed by cancellation, not a timeout", out)
	}
}

func TestFuncReadsOutputs(t *testing.T) {
	d := dag.New("d")
	outs := &mapOutputs{vals: map[string][]byte{"up": []byte(`{"n":41}`)}}
	var missing error
	task := d.Func("f", func(c *dag.Context) error {
		var v struct{ N int }
		if err := c.Output("up", &v); err != nil {
			return err
		}
		missing = c.Output("nobody", &v)
		if err := c.SetOutput(v.N + 1); err != nil {
			return err
		}
		var own int // a try reads its own output back from memory
		if err := c.Output("f", &own); err != nil || own != 42 {
			return fmt.Errorf("own output %d, %v", own, err)
		}
		return nil
	})
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("f"), Outputs: outs})
	if out.State != state.Success || string(out.Output) != "42" {
		t.Fatalf("outcome %+v (output %s), want success with 42", out, out.Output)
	}
	if !errors.Is(missing, dag.ErrNoOutput) {
		t.Errorf("reading a missing output gave %v, want ErrNoOutput", missing)
	}
	if outs.sets != 0 {
		t.Errorf("Run wrote %d outputs through Outputs, want 0: the output is returned", outs.sets)
	}
}

func TestFuncConcurrentLogging(t *testing.T) {
	d := dag.New("d")
	const n, per = 8, 50
	task := d.Func("f", func(c *dag.Context) error {
		var wg sync.WaitGroup
		for g := range n {
			wg.Go(func() {
				for i := range per {
					c.Logger().Info("line", "g", g, "i", i)
				}
			})
		}
		wg.Wait()
		return nil
	})
	var log bytes.Buffer // not safe for concurrent use: Run must serialise
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("f"), Log: &log})
	if out.State != state.Success {
		t.Fatalf("outcome %+v", out)
	}
	if got := strings.Count(log.String(), "msg=line "); got != n*per {
		t.Errorf("%d log lines, want %d", got, n*per)
	}
}

func TestBranch(t *testing.T) {
	newBranch := func(ret []string) *dag.Task {
		d := dag.New("d")
		br := d.Branch("br", func(*dag.Context) ([]string, error) { return ret, nil })
		noop := func(*dag.Context) error { return nil }
		a, b := d.Func("a", noop), d.Func("b", noop)
		later := d.Func("later", noop)
		br.SetDownstream(a, b)
		a.SetDownstream(later)
		return br
	}
	out := taskrun.Run(context.Background(), taskrun.Try{Task: newBranch([]string{"b", "a", "b"}), Info: info("br")})
	if out.State != state.Success || !slices.Equal(out.Follow, []string{"b", "a"}) {
		t.Errorf("outcome %+v, want success following [b a]", out)
	}
	out = taskrun.Run(context.Background(), taskrun.Try{Task: newBranch(nil), Info: info("br")})
	if out.State != state.Success || out.Follow == nil || len(out.Follow) != 0 {
		t.Errorf("outcome %+v, want success with an empty, non-nil Follow", out)
	}
	for _, bad := range []string{"later", "ghost"} {
		out = taskrun.Run(context.Background(), taskrun.Try{Task: newBranch([]string{"a", bad}), Info: info("br")})
		if out.State != state.Failed || out.Follow != nil || out.Err == nil ||
			!strings.Contains(out.Err.Error(), `"`+bad+`"`) {
			t.Errorf("branch choosing %q: outcome %+v, want failed naming it", bad, out)
		}
	}

	d := dag.New("d")
	skipper := d.Branch("br", func(*dag.Context) ([]string, error) { return nil, dag.Skip("no data") })
	if out := taskrun.Run(context.Background(), taskrun.Try{Task: skipper, Info: info("br")}); out.State != state.Skipped || out.Follow != nil {
		t.Errorf("skipping branch: %+v, want skipped without Follow", out)
	}
}

func TestRunBadTasks(t *testing.T) {
	out := taskrun.Run(context.Background(), taskrun.Try{})
	if out.State != state.Failed || !out.Permanent || out.Err == nil {
		t.Errorf("no task: %+v, want a permanent failure", out)
	}
	d := dag.New("d")
	for _, task := range []*dag.Task{d.Func("nilfunc", nil), d.Branch("nilbranch", nil)} {
		out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info(task.ID())})
		if out.State != state.Failed || !out.Permanent || !strings.Contains(out.Err.Error(), task.ID()) {
			t.Errorf("%s: %+v, want a permanent failure naming the task", task.ID(), out)
		}
	}
}

func TestOutputMustBeJSON(t *testing.T) {
	d := dag.New("d")
	task := d.Func("f", func(c *dag.Context) error { return c.SetOutput(make(chan int)) })
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("f")})
	if out.State != state.Failed || out.Output != nil || !strings.Contains(out.Err.Error(), "JSON-encodable") {
		t.Errorf("outcome %+v, want failed without output, saying why", out)
	}
}
