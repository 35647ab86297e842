package dag

import (
	"fmt"
	"strings"
	"testing"
)

// manyDAGs builds n scheduled DAGs of ten tasks each: a chain with a
// fan-in edge every third task, each DAG with its own cron schedule.
func manyDAGs(n int) []*DAG {
	dags := make([]*DAG, n)
	for i := range dags {
		d := New(fmt.Sprintf("dag_%05d", i), Schedule(fmt.Sprintf("%d %d * * *", i%60, i%24)), StartDate(jan1))
		ts := make([]*Task, 10)
		for j := range ts {
			ts[j] = d.Shell(fmt.Sprintf("task_%d", j), "true", Retries(j%3))
			if j > 0 {
				ts[j].SetUpstream(ts[j-1])
			}
			if j >= 3 && j%3 == 0 {
				ts[j].SetUpstream(ts[j-3])
			}
		}
		dags[i] = d
	}
	return dags
}

// bigDAG builds one DAG of n tasks: a chain through all of them (the
// deepest search) plus an edge from task i/2 to every task i.
func bigDAG(n int) *DAG {
	d := New("big", Schedule("@hourly"), StartDate(jan1))
	ts := make([]*Task, n)
	for i := range ts {
		ts[i] = d.Func(fmt.Sprintf("task_%06d", i), noop)
		if i > 0 {
			ts[i].SetUpstream(ts[i-1])
			if h := i / 2; h != i-1 {
				ts[i].SetUpstream(ts[h])
			}
		}
	}
	return d
}

func BenchmarkValidate10kDAGs(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		dags := manyDAGs(10_000) // fresh, so schedules are parsed every time
		b.StartTimer()
		if ps := Validate(dags); len(ps) != 0 {
			b.Fatalf("unexpected problems: %v", ps[0])
		}
	}
}

func BenchmarkValidate100kTasks(b *testing.B) {
	d := bigDAG(100_000)
	dags := []*DAG{d}
	for b.Loop() {
		if ps := Validate(dags); len(ps) != 0 {
			b.Fatalf("unexpected problems: %v", ps[0])
		}
	}
}

// BenchmarkValidate100kTasksCycle validates one DAG of 100,000 tasks that
// form a single strongly connected component, the worst case of the cycle
// search.
func BenchmarkValidate100kTasksCycle(b *testing.B) {
	d := bigDAG(100_000)
	d.tasks[len(d.tasks)-1].SetDownstream(d.tasks[0])
	dags := []*DAG{d}
	for b.Loop() {
		ps := Validate(dags)
		if len(ps) != 1 || !strings.HasPrefix(ps[0].Message, "cycle: task_000000 -> task_000001 -> ") {
			b.Fatalf("problems: %d", len(ps))
		}
	}
}

func BenchmarkTopologicalOrder100kTasks(b *testing.B) {
	d := bigDAG(100_000)
	for b.Loop() {
		if _, err := d.TopologicalOrder(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkFingerprint100kTasks(b *testing.B) {
	d := bigDAG(100_000)
	for b.Loop() {
		d.Fingerprint()
	}
}

func BenchmarkParseSchedule(b *testing.B) {
	for b.Loop() {
		if _, err := ParseSchedule("CRON_TZ=Europe/Paris 0 3 * * 1-5"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkNextZoned(b *testing.B) {
	s, err := ParseSchedule("CRON_TZ=Europe/Paris 0 3 * * 1-5")
	if err != nil {
		b.Fatal(err)
	}
	at := jan1
	for b.Loop() {
		at = s.Next(at)
	}
}

// BenchmarkValidateManyCycles validates one DAG of 100,000 tasks forming
// 50,000 two-task cycles: many components, each reported.
func BenchmarkValidateManyCycles(b *testing.B) {
	d := New("pairs")
	for i := 0; i < 50_000; i++ {
		x, y := d.Func(fmt.Sprintf("x%d", i), noop), d.Func(fmt.Sprintf("y%d", i), noop)
		x.SetDownstream(y)
		y.SetDownstream(x)
	}
	dags := []*DAG{d}
	for b.Loop() {
		if ps := Validate(dags); len(ps) != 50_000 {
			b.Fatalf("%d problems, want 50000", len(ps))
		}
	}
}
