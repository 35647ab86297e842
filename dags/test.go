package dags

import (
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// The "test" pipeline of the small Python orchestrator this project grew
// from: two tasks that print, the second after the first, at the start of
// every hour (six-field cron: second 0, minute 0, every hour).
func init() {
	d := dag.New("test",
		dag.Description("Two tasks that log test1 and test2, one after the other, every hour."),
		dag.Schedule("0 0 * * * *"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		dag.Tags("example"),
		dag.TaskMetrics(),
	)
	t1 := d.Func("print_test1", func(c *dag.Context) error {
		c.Logger().Info("test1")
		return nil
	})
	t2 := d.Func("print_test2", func(c *dag.Context) error {
		c.Logger().Info("test2")
		return nil
	})
	t1.SetDownstream(t2)
	dag.Register(d)
}
