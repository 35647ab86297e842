// Package pipelines defines the DAGs of the hello binary. They are plain
// values: All returns them, and main hands them to cli.Main, so nothing
// depends on package initialisation order or a global registry.
package pipelines

import (
	"fmt"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// Count is what the count task of greet passes downstream.
type Count struct {
	Words int    `json:"words"`
	Text  string `json:"text"`
}

// All returns the DAGs of this module.
func All() []*dag.DAG { return []*dag.DAG{Greet(), Report()} }

// Greet writes a greeting in a Shell task, counts its words in Go and
// reports them: a Shell output read as a typed value, then a Go output.
func Greet() *dag.DAG {
	d := dag.New("greet", dag.Description("a Shell task's output read typed by a Func task"))
	say := d.Shell("say", `printf '{"text": "hello from %s try %s"}' "$TRELLIS_DAG_ID" "$TRELLIS_TRY_NUMBER" > "$TRELLIS_OUTPUT"`)
	count := d.Func("count", func(c *dag.Context) error {
		said, err := dag.OutputOf[struct {
			Text string `json:"text"`
		}](c, say)
		if err != nil {
			return err
		}
		n := Count{Words: len(strings.Fields(said.Text)), Text: said.Text}
		c.Logger().Info("counted", "words", n.Words)
		return c.SetOutput(n)
	})
	report := d.Func("report", func(c *dag.Context) error {
		n, err := dag.OutputOf[Count](c, count)
		if err != nil {
			return err
		}
		if n.Words == 0 {
			return dag.Permanent(fmt.Errorf("nothing was said"))
		}
		return c.SetOutput(fmt.Sprintf("%d words: %s", n.Words, n.Text))
	})
	say.SetDownstream(count)
	count.SetDownstream(report)
	return d
}

// Report runs every minute: a Go task stamps the interval it covers.
func Report() *dag.DAG {
	d := dag.New("report",
		dag.Schedule("@every 1m"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		dag.Description("an interval stamp every minute"))
	d.Func("stamp", func(c *dag.Context) error {
		start, end := c.DataInterval()
		return c.SetOutput(map[string]string{"from": start.Format(time.RFC3339), "to": end.Format(time.RFC3339)})
	}, dag.Retries(1), dag.RetryDelay(time.Second))
	return d
}
