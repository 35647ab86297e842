package dag

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"gonum.org/v1/gonum/graph"
	"gonum.org/v1/gonum/graph/topo"
)

var jan1 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func noop(*Context) error { return nil }

// chain adds Func tasks with the ids to d and links them in order.
func chain(d *DAG, ids ...string) []*Task {
	ts := make([]*Task, len(ids))
	for i, id := range ids {
		ts[i] = d.Func(id, noop)
		if i > 0 {
			ts[i-1].SetDownstream(ts[i])
		}
	}
	return ts
}

func TestValidate(t *testing.T) {
	long := strings.Repeat("x", 251)
	tests := []struct {
		name string
		dags func() []*DAG
		want []string
	}{
		{"valid DAG", func() []*DAG {
			d := New("ok", Schedule("@daily"), StartDate(jan1), EndDate(jan1.AddDate(1, 0, 0)))
			ts := chain(d, "a", "b", "c")
			d.Shell("d", "true").SetUpstream(ts[0], ts[2])
			d.HTTP("e", HTTPRequest{Method: "POST", URL: "https://example.com/hook"}).SetUpstream(ts[1])
			d.Branch("f", func(*Context) ([]string, error) { return nil, nil })
			return []*DAG{d}
		}, nil},
		{"manual DAG needs no StartDate", func() []*DAG {
			d := New("manual")
			d.Func("a", noop)
			return []*DAG{d}
		}, nil},
		{"cycle of three", func() []*DAG {
			d := New("x")
			ts := chain(d, "a", "b", "c")
			ts[2].SetDownstream(ts[0])
			return []*DAG{d}
		}, []string{`dag "x": task "a": cycle: a -> b -> c -> a`}},
		{"cycle starts at the earliest-added task", func() []*DAG {
			d := New("x")
			c := d.Func("c", noop)
			a := d.Func("a", noop)
			b := d.Func("b", noop)
			a.SetDownstream(b)
			b.SetDownstream(c)
			c.SetDownstream(a)
			return []*DAG{d}
		}, []string{`dag "x": task "c": cycle: c -> a -> b -> c`}},
		{"shortest cycle through the start of a component", func() []*DAG {
			d := New("x")
			ts := chain(d, "a", "b", "c", "d")
			ts[3].SetDownstream(ts[0]) // a -> b -> c -> d -> a
			ts[1].SetDownstream(ts[0]) // a -> b -> a
			return []*DAG{d}
		}, []string{`dag "x": task "a": cycle: a -> b -> a`}},
		{"self-loop", func() []*DAG {
			d := New("x")
			a := d.Func("a", noop)
			a.SetDownstream(a)
			return []*DAG{d}
		}, []string{`dag "x": task "a": cycle: a -> a`}},
		{"one cycle per component, self-loops too, in task order", func() []*DAG {
			d := New("x")
			ts := chain(d, "root", "p", "q", "r", "s", "t")
			ts[2].SetDownstream(ts[1]) // p <-> q
			ts[5].SetDownstream(ts[3]) // r -> s -> t -> r
			ts[3].SetUpstream(ts[3])   // r -> r
			ts[0].SetDownstream(ts[0]) // root -> root
			return []*DAG{d}
		}, []string{
			`dag "x": task "root": cycle: root -> root`,
			`dag "x": task "p": cycle: p -> q -> p`,
			`dag "x": task "r": cycle: r -> r`,
			`dag "x": task "r": cycle: r -> s -> t -> r`,
		}},
		{"duplicate DAG ids", func() []*DAG {
			a, b, c := New("same"), New("same"), New("other")
			a.Func("t", noop)
			b.Func("t", noop)
			c.Func("t", noop)
			return []*DAG{a, c, b}
		}, []string{`dag "same": duplicate DAG id: registrations #1 and #3 both use it`}},
		{"same DAG registered twice", func() []*DAG {
			a := New("a")
			a.Func("t", noop).SetDownstream(a.Task("t")) // problems are reported once, not twice
			return []*DAG{a, a}
		}, []string{
			`dag "a": task "t": cycle: t -> t`,
			`dag "a": the same DAG is registered more than once (registrations #1 and #2)`,
		}},
		{"nil DAG", func() []*DAG {
			d := New("fine")
			d.Func("t", noop)
			return []*DAG{d, nil}
		}, []string{`registration #2 is a nil DAG`}},
		{"duplicate task ids", func() []*DAG {
			d := New("x")
			d.Func("a", noop)
			d.Shell("b", "true")
			d.Shell("a", "true")
			d.HTTP("a", HTTPRequest{URL: "http://127.0.0.1:9/"})
			return []*DAG{d}
		}, []string{
			`dag "x": task "a": duplicate task id: tasks #1 and #3 both use it`,
			`dag "x": task "a": duplicate task id: tasks #1 and #4 both use it`,
		}},
		{"edges to tasks of another DAG", func() []*DAG {
			d1, d2 := New("one"), New("two")
			a := d1.Func("a", noop)
			b := d2.Func("b", noop)
			c := d2.Func("c", noop)
			a.SetDownstream(b)
			a.SetUpstream(c)
			return []*DAG{d1, d2}
		}, []string{
			`dag "one": task "a": edge to task "b" of another DAG "two"`,
			`dag "one": task "a": edge from task "c" of another DAG "two"`,
			`dag "two": task "b": edge from task "a" of another DAG "one"`,
			`dag "two": task "c": edge to task "a" of another DAG "one"`,
		}},
		{"bad DAG and task ids", func() []*DAG {
			d := New("bad id!")
			d.Func("", noop)
			d.Func("sp ace", noop)
			d.Func(long, noop)
			d.Func("ok-._9", noop)
			e := New("")
			e.Func("é", noop)
			f := New(long)
			f.Func("t", noop)
			return []*DAG{d, e, f}
		}, []string{
			`dag "bad id!": invalid DAG id "bad id!": must match ^[A-Za-z0-9_.-]{1,250}$`,
			`dag "bad id!": invalid task id "": must match ^[A-Za-z0-9_.-]{1,250}$`,
			`dag "bad id!": task "sp ace": invalid task id "sp ace": must match ^[A-Za-z0-9_.-]{1,250}$`,
			`dag "bad id!": task "` + long + `": invalid task id "` + long + `": must match ^[A-Za-z0-9_.-]{1,250}$`,
			`invalid DAG id "": must match ^[A-Za-z0-9_.-]{1,250}$`,
			`dag "": task "é": invalid task id "é": must match ^[A-Za-z0-9_.-]{1,250}$`,
			`dag "` + long + `": invalid DAG id "` + long + `": must match ^[A-Za-z0-9_.-]{1,250}$`,
		}},
		{"unparsable schedules", func() []*DAG {
			d := New("x", Schedule("0 0 * *"), StartDate(jan1))
			d.Func("a", noop)
			e := New("y", Schedule("CRON_TZ=Nowhere/City @daily"), StartDate(jan1))
			e.Func("a", noop)
			return []*DAG{d, e}
		}, []string{
			`dag "x": invalid schedule "0 0 * *": expected 5 to 6 fields, found 4: [0 0 * *]`,
			`dag "y": invalid schedule "CRON_TZ=Nowhere/City @daily": unknown time zone "Nowhere/City" (want an IANA name such as Europe/Paris)`,
		}},
		{"scheduled DAG without StartDate", func() []*DAG {
			d := New("x", Schedule("@hourly"))
			d.Func("a", noop)
			return []*DAG{d}
		}, []string{`dag "x": schedule "@hourly" needs a StartDate`}},
		{"EndDate before StartDate", func() []*DAG {
			d := New("x", StartDate(jan1), EndDate(jan1.Add(-time.Hour)))
			d.Func("a", noop)
			return []*DAG{d}
		}, []string{`dag "x": EndDate 2025-12-31T23:00:00Z is before StartDate 2026-01-01T00:00:00Z`}},
		{"negative task settings", func() []*DAG {
			d := New("x")
			d.Func("r", noop, Retries(-1))
			d.Func("d", noop, RetryDelay(-time.Second))
			d.Func("b", noop, ExponentialBackoff(-time.Minute))
			d.Func("t", noop, Timeout(-5*time.Second))
			d.Func("all", noop, Retries(-2), Timeout(-time.Millisecond))
			return []*DAG{d}
		}, []string{
			`dag "x": task "r": Retries must not be negative, got -1`,
			`dag "x": task "d": RetryDelay must not be negative, got -1s`,
			`dag "x": task "b": ExponentialBackoff maximum must not be negative, got -1m0s`,
			`dag "x": task "t": Timeout must not be negative, got -5s`,
			`dag "x": task "all": Retries must not be negative, got -2`,
			`dag "x": task "all": Timeout must not be negative, got -1ms`,
		}},
		{"DAG limits", func() []*DAG {
			d := New("zero", MaxActiveRuns(0))
			d.Func("a", noop)
			e := New("neg", MaxActiveRuns(-1), MaxActiveTasks(-3), Retention(-time.Hour))
			e.Func("a", noop)
			f := New("fine", MaxActiveRuns(1), MaxActiveTasks(0), Retention(KeepForever))
			f.Func("a", noop)
			return []*DAG{d, e, f}
		}, []string{
			`dag "zero": MaxActiveRuns must be at least 1, got 0`,
			`dag "neg": MaxActiveRuns must be at least 1, got -1`,
			`dag "neg": MaxActiveTasks must be 0 (no cap) or positive, got -3`,
			`dag "neg": Retention must be positive (or KeepForever), got -1h0m0s`,
		}},
		{"invalid trigger rules", func() []*DAG {
			d := New("x")
			d.Func("a", noop, Trigger("sometimes"))
			d.Func("b", noop, Trigger(""))
			return []*DAG{d}
		}, []string{
			`dag "x": task "a": unknown trigger rule "sometimes" (want one of [all_success all_failed all_done all_skipped one_success one_failed one_done none_failed none_failed_min_one_success none_skipped always])`,
			`dag "x": task "b": unknown trigger rule "" (want one of [all_success all_failed all_done all_skipped one_success one_failed one_done none_failed none_failed_min_one_success none_skipped always])`,
		}},
		{"DAG without tasks", func() []*DAG {
			return []*DAG{New("empty")}
		}, []string{`dag "empty": DAG has no tasks`}},
		{"build issues", func() []*DAG {
			d := New("x")
			d.Func("f", nil)
			d.Branch("br", nil)
			d.Shell("sh", "")
			d.HTTP("h", HTTPRequest{})
			ok := d.Func("ok", noop)
			ok.SetDownstream(nil)
			ok.SetUpstream(nil)
			var nilTask *Task
			nilTask.SetDownstream(ok)
			ok.SetDownstream(&Task{id: "stray"})
			return []*DAG{d}
		}, []string{
			`dag "x": task "f": Func has a nil function`,
			`dag "x": task "br": Branch has a nil function`,
			`dag "x": task "sh": Shell has an empty command`,
			`dag "x": task "h": HTTP has an empty URL`,
			`dag "x": task "ok": edge to a nil task`,
			`dag "x": task "ok": edge to a nil task`,
			`dag "x": task "ok": edge from a nil task`,
			`dag "x": task "ok": edge to task "stray" that was not created by a DAG (use DAG.Func, Shell, HTTP or Branch)`,
		}},
		{"HTTP requests", func() []*DAG {
			d := New("x")
			d.HTTP("method", HTTPRequest{Method: "GE T", URL: "http://127.0.0.1/"})
			d.HTTP("relative", HTTPRequest{URL: "/hook"})
			d.HTTP("scheme", HTTPRequest{URL: "ftp://example.com/x"})
			d.HTTP("parse", HTTPRequest{URL: "http://[::1"})
			d.HTTP("fine", HTTPRequest{Method: "PATCH", URL: "https://example.com:8443/a?b=c"})
			return []*DAG{d}
		}, []string{
			`dag "x": task "method": HTTP method "GE T" is not a valid method token`,
			`dag "x": task "relative": HTTP URL "/hook" is not an absolute http:// or https:// URL`,
			`dag "x": task "scheme": HTTP URL "ftp://example.com/x" is not an absolute http:// or https:// URL`,
			`dag "x": task "parse": HTTP URL "http://[::1" does not parse: parse "http://[::1": missing ']' in host`,
		}},
		{"params not JSON-encodable", func() []*DAG {
			d := New("x", Params(map[string]any{"ch": make(chan int)}))
			d.Func("a", noop)
			return []*DAG{d}
		}, []string{`dag "x": Params are not JSON-encodable: json: unsupported type: chan int`}},
		{"every problem of every DAG in one pass", func() []*DAG {
			d1 := New("first", Schedule("@daily"))
			ts := chain(d1, "a", "b", "c")
			ts[2].SetDownstream(ts[0])
			d2 := New("second", Schedule("bogus"), StartDate(jan1), EndDate(jan1.AddDate(-1, 0, 0)))
			d2.Shell("s", "true", Retries(-1))
			d2.Shell("s", "true")
			d3 := New("first")
			d3.Func("z", noop)
			return []*DAG{d1, nil, d2, d3}
		}, []string{
			`dag "first": schedule "@daily" needs a StartDate`,
			`dag "first": task "a": cycle: a -> b -> c -> a`,
			`registration #2 is a nil DAG`,
			`dag "second": invalid schedule "bogus": expected 5 to 6 fields, found 1: [bogus]`,
			`dag "second": EndDate 2025-01-01T00:00:00Z is before StartDate 2026-01-01T00:00:00Z`,
			`dag "second": task "s": Retries must not be negative, got -1`,
			`dag "second": task "s": duplicate task id: tasks #1 and #2 both use it`,
			`dag "first": duplicate DAG id: registrations #1 and #4 both use it`,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range Validate(tc.dags()) {
				got = append(got, p.String())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("Validate problems:\n got: %s\nwant: %s", strings.Join(got, "\n      "), strings.Join(tc.want, "\n      "))
			}
		})
	}
}

func TestDefaultTaskOptionsAreValidated(t *testing.T) {
	d := New("x", DefaultTaskOptions(Retries(-1)))
	d.Func("a", noop)
	d.Func("b", noop, Retries(3)) // own options win
	got := Validate([]*DAG{d})
	want := []Problem{{DAGID: "x", TaskID: "a", Message: "Retries must not be negative, got -1"}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func TestProblemString(t *testing.T) {
	tests := []struct {
		p    Problem
		want string
	}{
		{Problem{DAGID: "d", TaskID: "t", Message: "m"}, `dag "d": task "t": m`},
		{Problem{DAGID: "d", Message: "m"}, `dag "d": m`},
		{Problem{Message: "registration #1 is a nil DAG"}, `registration #1 is a nil DAG`},
		{Problem{DAGID: `q"d`, TaskID: "t\n", Message: "m"}, `dag "q\"d": task "t\n": m`},
	}
	for _, tc := range tests {
		if got := tc.p.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.p, got, tc.want)
		}
	}
}

func TestRegistry(t *testing.T) {
	r := NewRegistry()
	a := New("a")
	a.Func("t", noop)
	b := New("b")
	a2 := New("a")
	r.Register(a)
	r.Register(nil)
	r.Register(b)
	r.Register(a2)

	if got := r.DAGs(); !slices.Equal(got, []*DAG{a, b, a2}) {
		t.Errorf("DAGs() = %v, want a, b, a2 without the nil", got)
	}
	if r.Lookup("a") != a || r.Lookup("b") != b || r.Lookup("zzz") != nil {
		t.Error("Lookup returned the wrong DAG")
	}
	want := []string{
		`registration #2 is a nil DAG`,
		`dag "b": DAG has no tasks`,
		`dag "a": duplicate DAG id: registrations #1 and #4 both use it`,
		`dag "a": DAG has no tasks`,
	}
	var got []string
	for _, p := range r.Validate() {
		got = append(got, p.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("Validate:\n got %q\nwant %q", got, want)
	}
	if NewRegistry().Validate() != nil {
		t.Error("an empty registry has problems")
	}
}

func TestDefaultRegistry(t *testing.T) {
	before := len(Default().DAGs())
	d := New("default_registry_test")
	Register(d)
	Register(nil)
	if got := Default().DAGs(); len(got) != before+1 || got[len(got)-1] != d {
		t.Fatalf("Default().DAGs() did not gain the registered DAG: %v", got)
	}
	found := false
	for _, p := range Default().Validate() {
		if strings.HasSuffix(p.Message, "is a nil DAG") {
			found = true
		}
	}
	if !found {
		t.Error("the nil registration in the default registry is not reported")
	}
}

func TestBuildIssuesStrings(t *testing.T) {
	d := New("x")
	if d.BuildIssues() != nil {
		t.Fatal("new DAG has build issues")
	}
	d.Func("f", nil)
	d.Shell("s", "")
	want := []string{`task "f": Func has a nil function`, `task "s": Shell has an empty command`}
	if got := d.BuildIssues(); !slices.Equal(got, want) {
		t.Errorf("BuildIssues() = %q, want %q", got, want)
	}
}

func TestLinks(t *testing.T) {
	d := New("x")
	a, b, c := d.Func("a", noop), d.Func("b", noop), d.Func("c", noop)
	if a.SetDownstream(b, c) != a || c.SetUpstream(b) != c {
		t.Fatal("SetDownstream/SetUpstream must return the receiver")
	}
	a.SetDownstream(b)
	b.SetUpstream(a) // duplicates are ignored
	if got := a.DownstreamIDs(); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("a downstream = %v", got)
	}
	if got := c.UpstreamIDs(); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("c upstream = %v", got)
	}
	if got := b.UpstreamIDs(); !slices.Equal(got, []string{"a"}) {
		t.Errorf("b upstream = %v", got)
	}

	other := New("y")
	o := other.Func("o", noop)
	a.SetDownstream(o)
	if len(o.Upstream()) != 0 || slices.Contains(a.Downstream(), o) {
		t.Error("an edge to a task of another DAG was linked")
	}
	var nilTask *Task
	if nilTask.SetDownstream(nil) != nil || nilTask.SetUpstream(a) != nil {
		t.Error("nil receiver must return nil")
	}
	(&Task{}).SetDownstream(&Task{}) // nothing to record, must not panic
}

func TestTopologicalOrder(t *testing.T) {
	tests := []struct {
		name  string
		build func(d *DAG)
		want  []string
	}{
		{"insertion order when independent", func(d *DAG) {
			d.Func("c", noop)
			d.Func("a", noop)
			d.Func("b", noop)
		}, []string{"c", "a", "b"}},
		{"dependencies first, ties by insertion", func(d *DAG) {
			a, b, c, e := d.Func("a", noop), d.Func("b", noop), d.Func("c", noop), d.Func("e", noop)
			a.SetUpstream(c) // c -> a
			b.SetUpstream(e) // e -> b
		}, []string{"c", "a", "e", "b"}},
		{"diamond", func(d *DAG) {
			ts := chain(d, "end")
			s, l, r := d.Func("start", noop), d.Func("left", noop), d.Func("right", noop)
			s.SetDownstream(r, l)
			ts[0].SetUpstream(r, l)
		}, []string{"start", "left", "right", "end"}},
		{"duplicates are included", func(d *DAG) {
			d.Func("a", noop)
			d.Func("a", noop)
		}, []string{"a", "a"}},
		{"empty", func(*DAG) {}, []string{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := New("x")
			tc.build(d)
			order, err := d.TopologicalOrder()
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(order); !slices.Equal(got, tc.want) {
				t.Errorf("order = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestTopologicalOrderCycle(t *testing.T) {
	d := New("x")
	ts := chain(d, "root", "a", "b", "c", "leaf")
	ts[3].SetDownstream(ts[1]) // a -> b -> c -> a
	order, err := d.TopologicalOrder()
	if order != nil {
		t.Errorf("order = %v, want nil on a cycle", ids(order))
	}
	var ce *CycleError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v, want a *CycleError", err)
	}
	if ce.DAGID != "x" || !slices.Equal(ce.Cycle, []string{"a", "b", "c", "a"}) {
		t.Errorf("CycleError = %+v", ce)
	}
	if want := `DAG "x" has a cycle: a -> b -> c -> a`; err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}

	self := New("s")
	self.Func("t", noop).SetUpstream(self.Task("t"))
	if _, err := self.TopologicalOrder(); err == nil || err.Error() != `DAG "s" has a cycle: t -> t` {
		t.Errorf("self-loop: err = %v", err)
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		"a": true, "A-b_c.9": true, strings.Repeat("z", 250): true,
		"": false, strings.Repeat("z", 251): false, "a b": false, "a/b": false, "ä": false, "a:b": false,
	} {
		if got := ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}

func TestTaskGraph(t *testing.T) {
	d := New("x")
	a, b, c := d.Func("a", noop), d.Func("b", noop), d.Func("c", noop)
	a.SetDownstream(b)
	b.SetDownstream(b, c) // b -> b is left out of the graph
	g := newTaskGraph(d)

	if g.Node(1).ID() != 1 || g.Node(3) != nil || g.Node(-1) != nil {
		t.Error("Node returns wrong nodes")
	}
	if got := graph.NodesOf(g.Nodes()); len(got) != 3 || got[2].ID() != 2 {
		t.Errorf("Nodes() = %v", got)
	}
	if got := graph.NodesOf(g.From(1)); len(got) != 1 || got[0].ID() != 2 {
		t.Errorf("From(b) = %v, want [c] without the self-loop", got)
	}
	if got := graph.NodesOf(g.To(1)); len(got) != 1 || got[0].ID() != 0 {
		t.Errorf("To(b) = %v, want [a]", got)
	}
	if g.From(7).Len() != 0 || g.To(-2).Len() != 0 || g.From(2).Len() != 0 {
		t.Error("From/To of a missing node or a leaf is not empty")
	}
	if !g.HasEdgeFromTo(0, 1) || g.HasEdgeFromTo(1, 0) || g.HasEdgeFromTo(1, 1) || g.HasEdgeFromTo(0, 9) {
		t.Error("HasEdgeFromTo is wrong")
	}
	if !g.HasEdgeBetween(1, 0) || g.HasEdgeBetween(0, 2) {
		t.Error("HasEdgeBetween is wrong")
	}
	if e := g.Edge(0, 1); e == nil || e.From().ID() != 0 || e.To().ID() != 1 {
		t.Errorf("Edge(a, b) = %v", e)
	}
	if g.Edge(2, 0) != nil {
		t.Error("Edge(c, a) exists")
	}
	// gonum's own algorithms agree with TopologicalOrder.
	sorted, err := topo.Sort(g)
	if err != nil || len(sorted) != 3 || sorted[0].ID() != 0 || sorted[2].ID() != 2 {
		t.Errorf("topo.Sort = %v, %v", sorted, err)
	}
	if graph.NodesOf(g.Nodes())[0] != g.nodes[0] || g.nodes[2].ID() != 2 {
		t.Error("the node table was disturbed")
	}
}

func TestRegistryConcurrent(t *testing.T) {
	r := NewRegistry()
	d := New("shared", Schedule("@daily"), StartDate(jan1))
	d.Func("a", noop)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			x := New(fmt.Sprintf("d%d", i))
			x.Func("a", noop)
			r.Register(x)
			r.Validate()
			if _, err := d.ParsedSchedule(); err != nil {
				t.Error(err)
			}
			r.Lookup("d0")
		}()
	}
	wg.Wait()
	if n := len(r.DAGs()); n != 8 {
		t.Fatalf("%d DAGs registered, want 8", n)
	}
	if ps := r.Validate(); ps != nil {
		t.Fatalf("problems: %v", ps)
	}
}

func TestValidateEnv(t *testing.T) {
	d := New("envs", DefaultTaskOptions(Env(map[string]string{"OK": "1", "TRELLIS_DATABASE_URL": "x"})))
	d.Shell("a", "env", Env(map[string]string{"": "empty", "A=B": "eq", "NUL": "a\x00b"}), InheritEnv("HOME", "TRELLIS_API_TOKEN", ""))
	var got []string
	for _, p := range d.Validate() {
		got = append(got, p.String())
	}
	want := []string{
		`dag "envs": task "a": Env: an empty variable name`,
		`dag "envs": task "a": Env: variable name "A=B" contains '=' or a NUL byte`,
		`dag "envs": task "a": Env: the value of NUL contains a NUL byte`,
		`dag "envs": task "a": Env: variable name "TRELLIS_DATABASE_URL" starts with TRELLIS_, which is reserved for the variables Trellis sets and for its own configuration`,
		`dag "envs": task "a": InheritEnv: variable name "TRELLIS_API_TOKEN" starts with TRELLIS_, which is reserved for the variables Trellis sets and for its own configuration`,
		`dag "envs": task "a": InheritEnv: an empty variable name`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	ok := New("ok", DefaultTaskOptions(Env(map[string]string{"A": "dag", "B": "dag"})))
	task := ok.Shell("t", "env", Env(map[string]string{"B": "task"}), InheritEnv("HOME"), InheritEnv("HOME", "AWS_PROFILE"))
	if p := ok.Validate(); len(p) != 0 {
		t.Errorf("valid env options reported: %v", p)
	}
	if e := task.Env(); e["A"] != "dag" || e["B"] != "task" || len(e) != 2 {
		t.Errorf("Env() = %v, want the DAG default overridden by the task", e)
	}
	if i := task.InheritEnv(); strings.Join(i, ",") != "HOME,AWS_PROFILE" {
		t.Errorf("InheritEnv() = %v", i)
	}
	if New("x").TaskMetrics() || !New("y", TaskMetrics()).TaskMetrics() {
		t.Error("TaskMetrics option not reported")
	}
}
