package dag_test

import (
	"context"
	"testing"

	"github.com/trellis-dag/trellis/dag"
)

// TestContextParam: Param reads one param as Params does, without a
// copy, and says whether it is set; a Context without params has none.
func TestContextParam(t *testing.T) {
	params := map[string]any{"path": "/tmp/x", "n": 3.0, "none": nil}
	c := dag.NewContext(context.Background(), dag.RunInfo{Params: params}, nil, nil)
	for key, want := range params {
		if v, ok := c.Param(key); !ok || v != want {
			t.Errorf("Param(%q) = %v, %v; want %v, true", key, v, ok, want)
		}
		if v := c.Params()[key]; v != want {
			t.Errorf("Params()[%q] = %v; want %v", key, v, want)
		}
	}
	if v, ok := c.Param("missing"); ok || v != nil {
		t.Errorf("Param of a missing key = %v, %v; want nil, false", v, ok)
	}
	empty := dag.NewContext(context.Background(), dag.RunInfo{}, nil, nil)
	if v, ok := empty.Param("path"); ok || v != nil {
		t.Errorf("Param without params = %v, %v; want nil, false", v, ok)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = c.Param("path") }); n != 0 {
		t.Errorf("Param allocates %v times, want 0", n)
	}
}

// envOf is an EnvSource that counts its calls.
type envOf struct {
	calls int
	seen  string
}

func (e *envOf) Environ(info *dag.RunInfo) []string {
	e.calls++
	e.seen = info.TaskID
	return []string{"TASK=" + info.TaskID, "A=1"}
}

// TestInitContext: InitContext makes, in place, the Context NewContext
// returns, its Getenv read from the EnvSource (given the Context's
// RunInfo) instead of RunInfo.Env; copies made from it (WithCaller) keep
// the source.
func TestInitContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	info := dag.RunInfo{DAGID: "d", RunID: "r", TaskID: "t", TryNumber: 2, Params: map[string]any{"k": "v"},
		Env: []string{"A=from info"}}
	var c dag.Context
	env := &envOf{}
	dag.InitContext(&c, ctx, info, nil, nil, env)
	if c.DAGID() != "d" || c.RunID() != "r" || c.TaskID() != "t" || c.TryNumber() != 2 {
		t.Errorf("ids = %q %q %q %d", c.DAGID(), c.RunID(), c.TaskID(), c.TryNumber())
	}
	if v, _ := c.Param("k"); v != "v" {
		t.Errorf("Param(k) = %v", v)
	}
	if c.Logger() == nil {
		t.Error("no logger")
	}
	if got := c.Getenv("A"); got != "1" {
		t.Errorf("Getenv(A) = %q, want the source's 1", got)
	}
	if got := c.WithCaller(nil).Getenv("TASK"); got != "t" || env.seen != "t" {
		t.Errorf("Getenv(TASK) on a copy = %q (source saw %q), want t", got, env.seen)
	}
	cancel()
	if c.Err() == nil {
		t.Error("the Context is not the given context")
	}
	var plain dag.Context
	dag.InitContext(&plain, context.Background(), info, nil, nil, nil)
	if got := plain.Getenv("A"); got != "from info" {
		t.Errorf("Getenv(A) without a source = %q, want RunInfo.Env's", got)
	}
}
