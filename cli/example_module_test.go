package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestExampleModule builds examples/hello — a module of its own whose main
// is cli.Main(cli.DAGs(...)), with a replace of this checkout — and runs
// its DAGs: `dags test greet --json` in-process, then a short `serve`
// whose worker processes re-execute that binary, a triggered run of greet
// succeeding with its outputs readable over the API. The build needs no
// network: the example's go.sum holds what this module's go.sum holds.
func TestExampleModule(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "hello")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Dir = filepath.Join("..", "examples", "hello")
	build.Env = append(os.Environ(), "GOPROXY=off", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build examples/hello: %v\n%s", err, out)
	}

	var stdout, stderr bytes.Buffer
	dagsTest := exec.Command(bin, "dags", "test", "greet", "--json")
	dagsTest.Stdout, dagsTest.Stderr = &stdout, &stderr
	if err := dagsTest.Run(); err != nil {
		t.Fatalf("hello dags test greet: %v\n%s%s", err, stdout.String(), stderr.String())
	}
	var tested struct {
		State string `json:"state"`
		Tasks map[string]struct {
			State string `json:"state"`
		} `json:"tasks"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &tested); err != nil {
		t.Fatalf("dags test --json: %v\n%s", err, stdout.String())
	}
	if tested.State != "success" || len(tested.Tasks) != 3 || tested.Tasks["report"].State != "success" {
		t.Errorf("dags test greet: %+v\n%s", tested, stderr.String())
	}

	addr := startServe(t, bin)
	api := "http://" + addr + "/api/v1"
	var dags struct {
		DAGs []struct {
			DAGID string `json:"dag_id"`
		} `json:"dags"`
	}
	getJSON(t, api+"/dags", &dags)
	var ids []string
	for _, d := range dags.DAGs {
		ids = append(ids, d.DAGID)
	}
	if !slices.Equal(ids, []string{"greet", "report"}) {
		t.Errorf("the example serves DAGs %v, want greet and report only", ids)
	}

	resp, err := http.Post(api+"/dags/greet/dagRuns", "application/json", strings.NewReader(`{"dag_run_id": "r1"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("trigger greet: %s", resp.Status)
	}
	var run struct {
		State string `json:"state"`
	}
	deadline := time.Now().Add(60 * time.Second)
	for run.State != "success" {
		if run.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("run r1 of greet is %q", run.State)
		}
		time.Sleep(100 * time.Millisecond)
		getJSON(t, api+"/dags/greet/dagRuns/r1", &run)
	}
	var entry struct {
		Value any `json:"value"`
	}
	getJSON(t, api+"/dags/greet/dagRuns/r1/taskInstances/report/xcomEntries/return_value?stringify=false", &entry)
	if entry.Value != "5 words: hello from greet try 1" {
		t.Errorf("report's output %#v, want the words counted from say's output", entry.Value)
	}
}
