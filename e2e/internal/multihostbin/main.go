// Command multihostbin is the trellis command line serving one DAG,
// "multihost", which the multi-host end-to-end test runs on several
// network namespaces: Chains chains of ChainLength Func tasks (5,000
// tasks). Each task sleeps the run's conf "sleep" (a Go duration), then appends a line
// "task_id try_number" to the file named by conf "effects", the side
// effect the test counts to prove every task succeeded exactly once. The
// last task of every chain fails its first try on purpose and has one
// retry: its second try is queued by whichever scheduler is alive then.
package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/trellis-dag/trellis/cli"
	"github.com/trellis-dag/trellis/dag"
)

// The shape of the DAG.
const (
	Chains      = 100
	ChainLength = 50
)

func main() { cli.Main(cli.DAGs(multihost())) }

func multihost() *dag.DAG {
	d := dag.New("multihost",
		dag.Description("5,000 tasks in chains, for the multi-host end-to-end test."),
	)
	for c := range Chains {
		var prev *dag.Task
		for i := range ChainLength {
			last := i == ChainLength-1
			var opts []dag.TaskOption
			if last {
				opts = append(opts, dag.Retries(1), dag.RetryDelay(time.Second))
			}
			t := d.Func(fmt.Sprintf("c%02d_t%02d", c, i), func(ctx *dag.Context) error { return step(ctx, last) }, opts...)
			if prev != nil {
				prev.SetDownstream(t)
			}
			prev = t
		}
	}
	return d
}

// step is one task: fail the first try of a chain's last task, else wait
// conf "sleep" and record the side effect.
func step(c *dag.Context, failFirst bool) error {
	p := c.Params()
	path, _ := p["effects"].(string)
	if path == "" {
		return errors.New(`conf "effects" (the side-effect file) is missing`)
	}
	if failFirst && c.TryNumber() == 1 {
		return errors.New("the first try of a chain's last task fails on purpose")
	}
	sleep, err := time.ParseDuration(fmt.Sprint(p["sleep"]))
	if err != nil {
		return fmt.Errorf(`conf "sleep": %w`, err)
	}
	if sleep > 0 {
		t := time.NewTimer(sleep)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.Done():
			return c.Err()
		}
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	// One write of a short line with O_APPEND: lines of concurrent tasks
	// never interleave.
	_, err = fmt.Fprintf(f, "%s %d\n", c.TaskID(), c.TryNumber())
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
