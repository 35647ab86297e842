package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

func init() { addCommand("dags", newDAGsTestCmd) }

func newDAGsTestCmd(a *app) *cobra.Command {
	var (
		rf          runFlags
		asJSON      bool
		logDir      string
		parallelism int
		events      []string
		approver    string
	)
	cmd := &cobra.Command{
		Use:   "test DAG_ID",
		Short: "Run a DAG once, in this process, and report every task",
		Long: `Run every task of a DAG once, in this process, in dependency order, the way
the scheduler and workers would: trigger rules, branches, retries with their
delays, timeouts and outputs between tasks all apply. Nothing is recorded in
the database, so it works without one.

One progress line is printed per task as it reaches its final state, then a
summary table. Task logs go to stderr, each line prefixed with
"[<task> try=<n>]", or with --log-dir to one file per try under
DIR/<dag_id>/<run_id>/<task_id>/<try>.log.

With --json, stdout holds only the finished run as one JSON object:
  {"dag_id": "...", "run_id": "...", "state": "success|failed",
   "tasks": {"<task_id>": {"state": "...", "try_number": N}, ...}}
(failed tasks also have "error"), and the progress lines go to stderr.

Deferred tasks wait in-process: a task waiting for an event given with --event
continues at once with its payload; one waiting for time sleeps until its next
check (a timeout then fails it, or skips it with SoftFail); an Approval is
approved at once with --approver; a wait nothing here can end fails the task,
naming what it waited for.

Exits 0 when the run succeeded, 1 when it failed (or the DAG is invalid, or
the run was interrupted), 2 on a usage error such as an unknown DAG or a
--conf that is not a JSON object.`,
		Example: `  trellis dags test etl_example
  trellis dags test etl_example --conf '{"rows": 0}' --logical-date 2026-03-01T00:00:00Z
  trellis dags test backup_automation --log-dir ./logs
  trellis dags test test --json | jq .state
  trellis dags test transfer_pipeline --event 'copy-done:demo={"rows": 3}' --approver alice`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if parallelism < 1 {
				return usagef("--parallelism must be at least 1, got %d", parallelism)
			}
			evs, err := parseEvents(events)
			if err != nil {
				return err
			}
			d, err := a.lookupDAG(args[0])
			if err != nil {
				return err
			}
			lr, err := rf.resolve(d, a.clock.Now())
			if err != nil {
				return err
			}
			progress := a.stdout
			if asJSON {
				progress = a.stderr
			}
			var logw io.Writer = a.stderr
			var dirLog *logDirWriter
			if logDir != "" {
				dirLog = newLogDirWriter(logDir, d.ID(), lr.runID)
				logw = dirLog
			}
			order, err := d.TopologicalOrder()
			if err != nil {
				return fmt.Errorf("order tasks of DAG %q: %w", d.ID(), err)
			}
			p := newProgress(progress, order)
			fmt.Fprintf(progress, "running DAG %s, run %s (logical date %s)\n", d.ID(), lr.runID, lr.logicalDate.Format(time.RFC3339))
			res, runErr := taskrun.RunDAG(cmd.Context(), d, taskrun.DAGOptions{
				Conf:        lr.conf,
				LogicalDate: lr.logicalDate,
				RunID:       lr.runID,
				Log:         logw,
				OnTaskDone:  p.taskDone,
				Parallelism: parallelism,
				Events:      evs,
				Approver:    approver,
			})
			if dirLog != nil {
				if err := dirLog.Close(); err != nil {
					fmt.Fprintf(a.stderr, "warning: task logs: %v\n", err)
				}
			}
			if res == nil {
				return fmt.Errorf("test DAG %q: %w", d.ID(), runErr)
			}
			if asJSON {
				b, err := json.MarshalIndent(res, "", "  ")
				if err != nil {
					return fmt.Errorf("encode result: %w", err)
				}
				fmt.Fprintf(a.stdout, "%s\n", b)
			} else if err := writeSummary(a.stdout, res, order, p.elapsed()); err != nil {
				return err
			}
			if logDir != "" {
				fmt.Fprintf(progress, "task logs: %s\n", logDirPath(logDir, d.ID(), lr.runID))
			}
			switch {
			case runErr != nil:
				return fmt.Errorf("run of DAG %q stopped: %w", d.ID(), runErr)
			case res.State != state.RunSuccess:
				return errSilentFailure
			}
			return nil
		},
	}
	rf.add(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the finished run as one JSON object on stdout")
	cmd.Flags().StringVar(&logDir, "log-dir", "", "write task logs to files under this directory instead of stderr")
	cmd.Flags().IntVar(&parallelism, "parallelism", 1, "how many tasks may run at once")
	cmd.Flags().StringArrayVar(&events, "event", nil, `an event the run receives, KEY=JSON payload (repeatable): a task deferred waiting for KEY continues at once with it`)
	cmd.Flags().StringVar(&approver, "approver", "", "approve every Approval task at once under this name (otherwise they fail unless they time out)")
	return cmd
}

// parseEvents parses --event values KEY=JSON.
func parseEvents(vals []string) (map[string]json.RawMessage, error) {
	if len(vals) == 0 {
		return nil, nil
	}
	out := make(map[string]json.RawMessage, len(vals))
	for _, v := range vals {
		key, payload, ok := strings.Cut(v, "=")
		if !ok {
			return nil, usagef("--event %q: want KEY=JSON, e.g. copy-done:42='{\"rows\": 10}'", v)
		}
		if err := dag.CheckEventKey(key); err != nil {
			return nil, usagef("--event %q: %v", v, err)
		}
		if !json.Valid([]byte(payload)) {
			return nil, usagef("--event %q: the payload after = is not JSON", v)
		}
		out[key] = json.RawMessage(payload)
	}
	return out, nil
}

// progress prints one line per task as it reaches its final state.
type progress struct {
	w     io.Writer
	width int
	start time.Time
}

func newProgress(w io.Writer, tasks []*dag.Task) *progress {
	width := 4
	for _, t := range tasks {
		width = max(width, len(t.ID()))
	}
	return &progress{w: w, width: width, start: time.Now()}
}

func (p *progress) elapsed() time.Duration { return time.Since(p.start) }

// taskDone is the OnTaskDone callback (called from one goroutine).
func (p *progress) taskDone(r taskrun.TaskReport) {
	line := fmt.Sprintf("[%7s] %-*s  %-15s", fmtSeconds(p.elapsed()), p.width, r.TaskID, r.State)
	if r.TryNumber > 0 {
		line += fmt.Sprintf("  try %d  %s", r.TryNumber, fmtDuration(r.Duration))
	}
	if r.Err != "" && r.State != state.Success {
		line += "  " + firstLine(r.Err)
	}
	fmt.Fprintln(p.w, line)
}

// writeSummary prints the run's outcome and a table of its tasks in
// dependency order.
func writeSummary(w io.Writer, res *taskrun.DAGResult, order []*dag.Task, took time.Duration) error {
	counts := map[state.TaskState]int{}
	for _, r := range res.Tasks {
		counts[r.State]++
	}
	var parts []string
	for _, s := range []state.TaskState{state.Success, state.Failed, state.UpstreamFailed, state.Skipped} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	fmt.Fprintf(w, "\nDAG %s run %s: %s in %s (%s)\n\n", res.DAGID, res.RunID, strings.ToUpper(string(res.State)),
		fmtDuration(took), strings.Join(parts, ", "))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TASK\tSTATE\tTRIES\tDURATION\tNOTE")
	for _, t := range order {
		r, ok := res.Tasks[t.ID()]
		if !ok {
			continue
		}
		dur, errText := "-", "-"
		if r.TryNumber > 0 {
			dur = fmtDuration(r.Duration)
		}
		if r.Err != "" && r.State != state.Success {
			errText = firstLine(r.Err)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", r.TaskID, r.State, r.TryNumber, dur, errText)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return writeCalls(w, res.Calls)
}

// writeCalls summarises the call instances of a run: how many per
// callable and state, and the calls that did not succeed (at most 20).
func writeCalls(w io.Writer, calls []taskrun.CallReport) error {
	if len(calls) == 0 {
		return nil
	}
	type key struct {
		task string
		st   state.TaskState
	}
	counts := map[key]int{}
	var keys []key
	for _, c := range calls {
		k := key{c.TaskID, c.State}
		if counts[k] == 0 {
			keys = append(keys, k)
		}
		counts[k]++
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nCALLABLE\tSTATE\tCALLS")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%s\t%d\n", k.task, k.st, counts[k])
	}
	shown := 0
	for _, c := range calls {
		if c.State == state.Success || shown == 20 {
			continue
		}
		shown++
		fmt.Fprintf(tw, "  %s[%d]\t%s\t%s\n", dag.CallLabel(c.TaskID, []byte(c.Arguments)), c.MapIndex, c.State, firstLine(c.Err))
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

func fmtSeconds(d time.Duration) string { return fmt.Sprintf("%.3fs", d.Seconds()) }

// firstLine returns s up to its first newline, marked when cut.
func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " …"
	}
	return s
}

// logDirWriter splits the task log of a RunDAG run, whose lines start with
// "[<task_id> try=<n>] ", into one file per try:
// DIR/<dag_id>/<run_id>/<task_id>/<n>.log. Lines without that prefix go to
// DIR/<dag_id>/<run_id>/run.log. Errors opening or writing files are kept
// and reported by Close; they never stop the run.
type logDirWriter struct {
	dir string

	mu      sync.Mutex
	partial []byte
	files   map[string]*lazyFile
	err     error
}

func newLogDirWriter(root, dagID, runID string) *logDirWriter {
	return &logDirWriter{dir: logDirPath(root, dagID, runID), files: map[string]*lazyFile{}}
}

// logDirPath is the directory of one run's logs under root.
func logDirPath(root, dagID, runID string) string {
	return filepath.Join(root, pathElem(dagID), pathElem(runID))
}

// pathElem turns an id into one safe path element: characters outside
// [A-Za-z0-9_.-] become "_", and "." and ".." are escaped.
func pathElem(s string) string {
	out := []byte(s)
	for i, c := range out {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			out[i] = '_'
		}
	}
	if r := string(out); r != "" && r != "." && r != ".." {
		return r
	}
	return strings.Repeat("_", len(out)+1)
}

// Write splits p into lines and appends each to its try's file.
func (w *logDirWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		w.writeLine(w.partial[:i+1])
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

func (w *logDirWriter) writeLine(line []byte) {
	name, rest := "run.log", line
	if task, try, body, ok := parseLogPrefix(line); ok {
		name, rest = filepath.Join(pathElem(task), try+".log"), body
	}
	f := w.files[name]
	if f == nil {
		f = &lazyFile{path: filepath.Join(w.dir, name)}
		w.files[name] = f
	}
	if err := f.write(rest); err != nil && w.err == nil {
		w.err = err
	}
}

// parseLogPrefix splits "[<task> try=<n>] body".
func parseLogPrefix(line []byte) (task, try string, body []byte, ok bool) {
	s := string(line)
	if !strings.HasPrefix(s, "[") {
		return "", "", nil, false
	}
	end := strings.Index(s, "] ")
	if end < 0 {
		return "", "", nil, false
	}
	task, try, found := strings.Cut(s[1:end], " try=")
	if !found || task == "" || try == "" || strings.Trim(try, "0123456789") != "" {
		return "", "", nil, false
	}
	return task, try, line[end+2:], true
}

// Close flushes a last partial line, closes the files and returns the
// first error met.
func (w *logDirWriter) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.writeLine(append(w.partial, '\n'))
		w.partial = nil
	}
	for _, f := range w.files {
		if err := f.close(); err != nil && w.err == nil {
			w.err = err
		}
	}
	return w.err
}

// lazyFile is a log file created (or truncated) on its first write.
type lazyFile struct {
	path string
	f    *os.File
}

func (l *lazyFile) write(b []byte) error {
	if l.f == nil {
		if err := os.MkdirAll(filepath.Dir(l.path), 0o755); err != nil {
			return fmt.Errorf("create task log directory: %w", err)
		}
		f, err := os.Create(l.path)
		if err != nil {
			return fmt.Errorf("create task log: %w", err)
		}
		l.f = f
	}
	if _, err := l.f.Write(b); err != nil {
		return fmt.Errorf("write task log %s: %w", l.path, err)
	}
	return nil
}

func (l *lazyFile) close() error {
	if l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	if err != nil {
		return fmt.Errorf("close task log %s: %w", l.path, err)
	}
	return nil
}
