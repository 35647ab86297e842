package bench

import (
	"slices"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/executor"
)

func TestDAGSetsBuildValidDAGs(t *testing.T) {
	for _, tc := range []struct {
		set       DAGSet
		dags      int
		tasks     int // tasks of the first DAG
		firstID   string
		roots     int // tasks without upstream in the first DAG
		maxFanIn  int
		schedule  string
		taskKinds dag.Kind
	}{
		{DAGSet{ShapeWide, 5}, 1, 7, WideDAGID, 1, 5, "", dag.KindFunc},
		{DAGSet{ShapeBig, 5}, 1, 5, BigDAGID, 1, 3, "", dag.KindFunc},
		{DAGSet{ShapeChain, 4}, 1, 4, ChainDAGID, 1, 1, "", dag.KindFunc},
		{DAGSet{ShapeShell, 3}, 1, 3, ShellDAGID, 3, 0, "", dag.KindShell},
		{DAGSet{ShapeShellChain, 12}, 1, 12, ShellChainDAGID, 1, 1, "", dag.KindShell},
		{DAGSet{ShapeCron, 11}, 11, 1, "bench_cron_00", 1, 0, "@every 1s", dag.KindFunc},
	} {
		t.Run(tc.set.String(), func(t *testing.T) {
			ds, err := tc.set.Build()
			if err != nil {
				t.Fatal(err)
			}
			if problems := dag.Validate(ds); len(problems) > 0 {
				t.Fatalf("benchmark DAGs invalid: %v", problems)
			}
			if len(ds) != tc.dags {
				t.Fatalf("%d DAGs, want %d", len(ds), tc.dags)
			}
			d := ds[0]
			if d.ID() != tc.firstID || !strings.HasPrefix(d.ID(), IDPrefix) {
				t.Errorf("first DAG id %q, want %q", d.ID(), tc.firstID)
			}
			if d.ScheduleExpr() != tc.schedule {
				t.Errorf("schedule %q, want %q", d.ScheduleExpr(), tc.schedule)
			}
			if len(d.Tasks()) != tc.tasks {
				t.Fatalf("%d tasks, want %d", len(d.Tasks()), tc.tasks)
			}
			roots, fanIn := 0, 0
			for _, task := range d.Tasks() {
				if len(task.Upstream()) == 0 {
					roots++
				}
				fanIn = max(fanIn, len(task.Upstream()))
				if task.Kind() != tc.taskKinds {
					t.Errorf("task %s is a %v, want %v", task.ID(), task.Kind(), tc.taskKinds)
				}
			}
			if roots != tc.roots || fanIn != tc.maxFanIn {
				t.Errorf("%d roots and fan-in %d, want %d and %d", roots, fanIn, tc.roots, tc.maxFanIn)
			}
		})
	}
}

func TestLineTaskIDsFollowTheChain(t *testing.T) {
	ds, err := DAGSet{ShapeChain, 12}.Build()
	if err != nil {
		t.Fatal(err)
	}
	ids := LineTaskIDs(12)
	if ids[0] != "c00" || ids[11] != "c11" {
		t.Fatalf("LineTaskIDs(12) = %v", ids)
	}
	d := ds[0]
	for i := 1; i < len(ids); i++ {
		up := d.Task(ids[i]).UpstreamIDs()
		if !slices.Equal(up, []string{ids[i-1]}) {
			t.Errorf("upstream of %s = %v, want [%s]", ids[i], up, ids[i-1])
		}
	}
}

func TestParseDAGSets(t *testing.T) {
	sets := []DAGSet{{ShapeWide, 10000}, {ShapeShellChain, 100}, {ShapeCron, 1000}}
	got, err := ParseDAGSets(FormatDAGSets(sets))
	if err != nil || !slices.Equal(got, sets) {
		t.Fatalf("round trip = %v, %v; want %v", got, err, sets)
	}
	if got, err := ParseDAGSets(" wide = 3 , "); err != nil || !slices.Equal(got, []DAGSet{{ShapeWide, 3}}) {
		t.Errorf("spaces and a trailing comma: %v, %v", got, err)
	}
	for _, tc := range []struct{ in, want string }{
		{"wide", `"wide": want shape=size`},
		{"wide=ten", `size "ten" is not an integer`},
		{"tall=3", `unknown shape "tall"`},
		{"chain=1", "size must be between 2 and"},
		{"big=2000000", "size must be between 3 and"},
		{"wide=0,tall=1", `unknown shape "tall"`},
	} {
		_, err := ParseDAGSets(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), EnvDAGs) {
			t.Errorf("ParseDAGSets(%q) = %v, want an error naming %s and containing %q", tc.in, err, EnvDAGs, tc.want)
		}
	}
	// Every problem is reported, not only the first.
	_, err = ParseDAGSets("wide=0,tall=1")
	if err == nil || !strings.Contains(err.Error(), "wide=0") {
		t.Errorf("ParseDAGSets reports only part of the problems: %v", err)
	}
}

func TestRegisterFromEnvOnlyInWorkerChildren(t *testing.T) {
	env := func(kv ...string) func(string) (string, bool) {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	}
	for _, tc := range []struct {
		name   string
		lookup func(string) (string, bool)
		want   int
	}{
		{"nothing set", env(), 0},
		{"not a worker child", env(EnvDAGs, "wide=3,cron=4"), 0},
		{"worker child without sets", env(executor.EnvChild, "w1"), 0},
		{"worker child", env(EnvDAGs, "wide=3,cron=4", executor.EnvChild, "w1"), 5},
	} {
		reg := dag.NewRegistry()
		n, err := RegisterFromEnv(reg, tc.lookup)
		if err != nil || n != tc.want || len(reg.DAGs()) != tc.want {
			t.Errorf("%s: registered %d (%d in registry), %v; want %d", tc.name, n, len(reg.DAGs()), err, tc.want)
		}
	}
	reg := dag.NewRegistry()
	if _, err := RegisterFromEnv(reg, env(EnvDAGs, "wide=x", executor.EnvChild, "w1")); err == nil || len(reg.DAGs()) != 0 {
		t.Errorf("a malformed %s registered %d DAGs, err %v; want none and an error", EnvDAGs, len(reg.DAGs()), err)
	}
	reg = dag.NewRegistry()
	if _, err := RegisterFromEnv(reg, env(EnvDAGs, "wide=3", executor.EnvChild, "w1")); err != nil || reg.Lookup(WideDAGID) == nil {
		t.Errorf("worker child: %s not registered (%v)", WideDAGID, err)
	}
}

func TestScenarioSets(t *testing.T) {
	s := DefaultSizes()
	for _, sc := range Scenarios {
		sets, err := s.sets(sc)
		if err != nil || len(sets) == 0 && sc != ScenarioScale { // scale's sets come from Config.ScaleRuns
			t.Errorf("scenario %s: sets %v, %v", sc, sets, err)
		}
		for _, set := range sets {
			if err := set.check(); err != nil {
				t.Errorf("scenario %s: default size: %v", sc, err)
			}
		}
		q, _ := QuickSizes().sets(sc)
		for _, set := range q {
			if err := set.check(); err != nil {
				t.Errorf("scenario %s: quick size: %v", sc, err)
			}
		}
	}
	if sets, _ := s.sets(ScenarioShell); !slices.Equal(sets, []DAGSet{{ShapeShell, 2000}, {ShapeShellChain, 100}}) {
		t.Errorf("shell sets = %v", sets)
	}
	if _, err := s.sets("tall"); err == nil {
		t.Error("unknown scenario accepted")
	}
	for _, runs := range [][]int{DefaultScaleRuns, QuickScaleRuns} {
		for _, set := range scaleSets(runs) {
			if err := set.check(); err != nil {
				t.Errorf("scale run %v: %v", set, err)
			}
		}
	}
}

func TestRegisterServeFromEnvOnlyInTheScaleServer(t *testing.T) {
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	}
	reg := dag.NewRegistry()
	if _, err := RegisterServeFromEnv(reg, env(map[string]string{EnvDAGs: "scale=10"})); err == nil ||
		!strings.Contains(err.Error(), EnvServe) {
		t.Errorf("without %s: err = %v, want one naming it", EnvServe, err)
	}
	if _, err := RegisterServeFromEnv(reg, env(map[string]string{EnvServe: "1"})); err == nil ||
		!strings.Contains(err.Error(), "names no benchmark DAGs") {
		t.Errorf("without DAGs: err = %v", err)
	}
	sets, err := RegisterServeFromEnv(reg, env(map[string]string{EnvServe: "1", EnvDAGs: " scale=10, scale=3 "}))
	if err != nil || sets != "scale=10,scale=3" {
		t.Fatalf("RegisterServeFromEnv = %q, %v", sets, err)
	}
	for id, n := range map[string]int{ScaleDAGID(10): 12, ScaleDAGID(3): 5} {
		d := reg.Lookup(id)
		if d == nil || len(d.Tasks()) != n {
			t.Errorf("DAG %s not registered with %d tasks", id, n)
		}
	}
}

func TestScaleRuns(t *testing.T) {
	runs := []int{1000, 10000, 100000, 100000, 100000}
	if got, want := scaleRunNames(runs), []string{"scale_1000", "scale_10000", "scale_100000_1", "scale_100000_2", "scale_100000_3"}; !slices.Equal(got, want) {
		t.Errorf("scaleRunNames = %v, want %v", got, want)
	}
	if got, want := scaleSets(runs), []DAGSet{{ShapeScale, 1000}, {ShapeScale, 10000}, {ShapeScale, 100000}}; !slices.Equal(got, want) {
		t.Errorf("scaleSets = %v, want %v", got, want)
	}
	for _, tc := range []struct {
		runs []int
		want int
	}{{runs, 10000}, {[]int{5, 5}, 0}, {[]int{7}, 0}, {[]int{3, 9, 1}, 3}} {
		if got := referenceSize(tc.runs); got != tc.want {
			t.Errorf("referenceSize(%v) = %d, want %d", tc.runs, got, tc.want)
		}
	}
}
