package dag

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the testdata/*.golden files with the current output")

// goldenDAG is an ETL-shaped DAG using every kind of task and most options.
func goldenDAG() *DAG {
	d := New("etl_example",
		Schedule("0 3 * * *"),
		StartDate(jan1),
		Description("Extract, transform and load, with a branch."),
		Tags("example", "etl"),
		DefaultTaskOptions(RetryDelay(5*time.Second)),
	)
	extract := d.Func("extract", noop, Retries(2), Timeout(90*time.Second))
	transform := d.Func("transform", noop, Priority(5))
	choose := d.Branch("choose", func(*Context) ([]string, error) { return []string{"load_full"}, nil })
	full := d.Shell("load_full", "echo full", RetryDelay(1500*time.Millisecond))
	incr := d.Shell("load_incremental", "echo incremental")
	notify := d.HTTP("notify", HTTPRequest{Method: "POST", URL: "http://127.0.0.1:9/hook"}, Trigger(OneSuccess))
	cleanup := d.Shell("cleanup", "rm -rf /tmp/etl", Trigger(AllDone))
	extract.SetDownstream(transform)
	transform.SetDownstream(choose)
	choose.SetDownstream(full, incr)
	notify.SetUpstream(full, incr)
	cleanup.SetUpstream(notify, extract)
	return d
}

// cyclicDAG has a root, a shared task and a cycle no root reaches.
func cyclicDAG() *DAG {
	d := New("tangled")
	root := d.Func("root", noop)
	shared := d.Func("shared", noop)
	root.SetDownstream(d.Func("left", noop), d.Func("right", noop))
	d.Task("left").SetDownstream(shared)
	d.Task("right").SetDownstream(shared)
	x, y := d.Func("x", noop), d.Func("y", noop)
	x.SetDownstream(y)
	y.SetDownstream(x)
	return d
}

func TestGolden(t *testing.T) {
	manual := New("manual")
	manual.Func("only", noop)
	weird := New(`we"ird\dag`)
	weird.Func("a b", noop).SetDownstream(weird.Shell(`q"uote`, "true"))

	tests := []struct {
		file  string
		d     *DAG
		write func(io.Writer, *DAG) error
	}{
		{"etl_example.dot", goldenDAG(), WriteDOT},
		{"etl_example.json", goldenDAG(), WriteJSON},
		{"etl_example.txt", goldenDAG(), WriteText},
		{"manual.dot", manual, WriteDOT},
		{"manual.json", manual, WriteJSON},
		{"manual.txt", manual, WriteText},
		{"weird_ids.dot", weird, WriteDOT},
		{"weird_ids.json", weird, WriteJSON},
		{"tangled.txt", cyclicDAG(), WriteText},
		{"tangled.dot", cyclicDAG(), WriteDOT},
		{"empty.txt", New("empty"), WriteText},
		{"empty.json", New("empty"), WriteJSON},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tc.write(&buf, tc.d); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", tc.file+".golden")
			if *update {
				if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test ./dag -run TestGolden -update to create it)", err)
			}
			if got := buf.String(); got != string(want) {
				t.Errorf("%s differs from the golden file:\n--- got\n%s\n--- want\n%s", tc.file, got, want)
			}
		})
	}
}

func TestWriteJSONShape(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, goldenDAG()); err != nil {
		t.Fatal(err)
	}
	var got JSONDAG
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.DAGID != "etl_example" || got.Schedule == nil || *got.Schedule != "0 3 * * *" {
		t.Errorf("dag_id/schedule = %q/%v", got.DAGID, got.Schedule)
	}
	if len(got.Tasks) != 7 || len(got.Edges) != 8 {
		t.Fatalf("%d tasks and %d edges, want 7 and 8", len(got.Tasks), len(got.Edges))
	}
	ext := got.Tasks[0]
	if ext.TaskID != "extract" || ext.Retries != 2 || ext.TimeoutSeconds != 90 || ext.RetryDelaySeconds != 5 ||
		ext.Kind != KindFunc || ext.TriggerRule != "all_success" {
		t.Errorf("extract = %+v", ext)
	}
	if full := got.Tasks[3]; full.RetryDelaySeconds != 1.5 {
		t.Errorf("load_full retry_delay_seconds = %v, want 1.5", full.RetryDelaySeconds)
	}
	// Every edge appears in the upstream and downstream lists of its ends.
	byID := map[string]JSONTask{}
	for _, jt := range got.Tasks {
		byID[jt.TaskID] = jt
	}
	for _, e := range got.Edges {
		if !contains(byID[e.From].Downstream, e.To) || !contains(byID[e.To].Upstream, e.From) {
			t.Errorf("edge %s -> %s missing from the task lists", e.From, e.To)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestWritersReportErrors(t *testing.T) {
	for name, write := range map[string]func(io.Writer, *DAG) error{
		"DOT": WriteDOT, "JSON": WriteJSON, "text": WriteText,
	} {
		err := write(failingWriter{}, goldenDAG())
		if err == nil || !strings.Contains(err.Error(), "disk full") || !strings.Contains(err.Error(), `"etl_example"`) {
			t.Errorf("%s: err = %v, want the write error naming the DAG", name, err)
		}
	}
}
