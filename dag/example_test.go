package dag_test

import (
	"fmt"
	"os"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// Example builds a whole DAG, checks it, and shows its order and shape.
func Example() {
	d := dag.New("etl_example",
		dag.Schedule("CRON_TZ=Europe/Paris 0 3 * * *"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		dag.Catchup(false),
		dag.MaxActiveRuns(1),
		dag.Description("Extract numbers, transform them, load them in full or incrementally."),
		dag.Tags("example", "etl"),
		dag.Params(map[string]any{"full": false}),
		dag.DefaultTaskOptions(dag.RetryDelay(5*time.Second)),
	)

	extract := d.Func("extract", func(c *dag.Context) error {
		return c.SetOutput([]int{1, 2, 3})
	}, dag.Retries(2), dag.Timeout(time.Minute))

	transform := d.Func("transform", func(c *dag.Context) error {
		var in []int
		if err := c.Output("extract", &in); err != nil {
			return err
		}
		sum := 0
		for _, v := range in {
			sum += v
		}
		return c.SetOutput(sum)
	})

	choose := d.Branch("choose", func(c *dag.Context) ([]string, error) {
		if full, _ := c.Params()["full"].(bool); full {
			return []string{"load_full"}, nil
		}
		return []string{"load_incremental"}, nil
	})

	full := d.Shell("load_full", "echo full load", dag.Priority(10))
	incremental := d.Shell("load_incremental", "echo incremental load")
	cleanup := d.Shell("cleanup", `rm -rf "${TMPDIR:-/tmp}/etl_example"`, dag.Trigger(dag.AllDone))

	extract.SetDownstream(transform)
	transform.SetDownstream(choose)
	choose.SetDownstream(full, incremental)
	cleanup.SetUpstream(full, incremental)

	reg := dag.NewRegistry()
	reg.Register(d)
	fmt.Println("problems:", len(reg.Validate()))

	order, err := d.TopologicalOrder()
	if err != nil {
		fmt.Println(err)
		return
	}
	for i, t := range order {
		fmt.Printf("%d. %s\n", i+1, t.ID())
	}

	tt, _ := d.ParsedSchedule()
	next := tt.Next(time.Date(2026, 6, 1, 12, 0, 0, 0, time.UTC))
	fmt.Println("next run:", next.UTC().Format(time.RFC3339))

	if err := dag.WriteText(os.Stdout, d); err != nil {
		fmt.Println(err)
	}

	// A mistake is reported, not panicked on.
	broken := dag.New("broken")
	a := broken.Shell("a", "true")
	b := broken.Shell("b", "true", dag.Retries(-1))
	a.SetDownstream(b)
	b.SetDownstream(a)
	for _, p := range broken.Validate() {
		fmt.Println(p)
	}

	// Output:
	// problems: 0
	// 1. extract
	// 2. transform
	// 3. choose
	// 4. load_full
	// 5. load_incremental
	// 6. cleanup
	// next run: 2026-06-02T01:00:00Z
	// etl_example (schedule CRON_TZ=Europe/Paris 0 3 * * *, 6 tasks)
	// extract (func)
	// └── transform (func)
	//     └── choose (branch)
	//         ├── load_full (shell)
	//         │   └── cleanup (shell, all_done)
	//         └── load_incremental (shell)
	//             └── cleanup (shell, all_done) (see above)
	// dag "broken": task "b": Retries must not be negative, got -1
	// dag "broken": task "a": cycle: a -> b -> a
}
