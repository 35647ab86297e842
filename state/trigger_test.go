package state

import (
	"fmt"
	"testing"

	"github.com/trellis-dag/trellis/dag"
)

// pending marks an upstream instance that has not finished (none, queued,
// running, up_for_retry…) in the expansions below.
const pending TaskState = "pending"

// expand turns counts into one state per upstream instance.
func expand(u Upstream) []TaskState {
	var out []TaskState
	add := func(s TaskState, n int) {
		for range n {
			out = append(out, s)
		}
	}
	add(Success, u.Success)
	add(Failed, u.Failed)
	add(Skipped, u.Skipped)
	add(UpstreamFailed, u.UpstreamFailed)
	add(Removed, u.Removed)
	add(pending, u.Total-u.Done())
	return out
}

// specDecide is an independent statement of Airflow's trigger rules over the
// list of upstream instance states, written with "any"/"every" predicates
// instead of counts. Removed instances are dropped first.
func specDecide(rule dag.TriggerRule, ups []TaskState) Decision {
	if len(ups) == 0 || rule == dag.Always {
		return Run
	}
	var live []TaskState
	for _, s := range ups {
		if s != Removed {
			live = append(live, s)
		}
	}
	in := func(s TaskState, set []TaskState) bool {
		for _, x := range set {
			if s == x {
				return true
			}
		}
		return false
	}
	anyIn := func(set ...TaskState) bool {
		for _, s := range live {
			if in(s, set) {
				return true
			}
		}
		return false
	}
	everyIn := func(set ...TaskState) bool {
		for _, s := range live {
			if !in(s, set) {
				return false
			}
		}
		return true
	}
	finished := everyIn(Success, Failed, Skipped, UpstreamFailed)
	switch rule {
	case dag.AllSuccess:
		if anyIn(Failed, UpstreamFailed) {
			return FailUpstream
		}
		if anyIn(Skipped) {
			return Skip
		}
		if everyIn(Success) {
			return Run
		}
	case dag.AllFailed:
		if anyIn(Success, Skipped) {
			return Skip
		}
		if everyIn(Failed, UpstreamFailed) {
			return Run
		}
	case dag.AllDone:
		if finished {
			return Run
		}
	case dag.AllSkipped:
		if anyIn(Success, Failed, UpstreamFailed) {
			return Skip
		}
		if everyIn(Skipped) {
			return Run
		}
	case dag.OneSuccess:
		if anyIn(Success) {
			return Run
		}
		if finished && everyIn(Skipped) {
			return Skip
		}
		if finished {
			return FailUpstream
		}
	case dag.OneFailed:
		if anyIn(Failed, UpstreamFailed) {
			return Run
		}
		if finished {
			return Skip
		}
	case dag.OneDone:
		if anyIn(Success, Failed) {
			return Run
		}
		if finished {
			return Skip
		}
	case dag.NoneFailed:
		if anyIn(Failed, UpstreamFailed) {
			return FailUpstream
		}
		if everyIn(Success, Skipped) {
			return Run
		}
	case dag.NoneFailedMinOneSuccess:
		if anyIn(Failed, UpstreamFailed) {
			return FailUpstream
		}
		if everyIn(Skipped) {
			return Skip
		}
		if everyIn(Success, Skipped) {
			return Run
		}
	case dag.NoneSkipped:
		if anyIn(Skipped) {
			return Skip
		}
		if finished {
			return Run
		}
	}
	return Wait
}

// allVectors returns every count vector with Total ≤ maxTotal.
func allVectors(maxTotal int) []Upstream {
	var out []Upstream
	for total := 0; total <= maxTotal; total++ {
		for s := 0; s <= total; s++ {
			for f := 0; s+f <= total; f++ {
				for k := 0; s+f+k <= total; k++ {
					for uf := 0; s+f+k+uf <= total; uf++ {
						for r := 0; s+f+k+uf+r <= total; r++ {
							out = append(out, Upstream{Total: total, Success: s, Failed: f,
								Skipped: k, UpstreamFailed: uf, Removed: r})
						}
					}
				}
			}
		}
	}
	return out
}

func TestDecideEveryRuleEveryCombination(t *testing.T) {
	vectors := allVectors(3)
	// Compositions of n ≤ 3 into six parts (five states and pending):
	// 1 + 6 + 21 + 56.
	if len(vectors) != 84 {
		t.Fatalf("enumerated %d vectors, want 84", len(vectors))
	}
	seen := map[dag.TriggerRule]map[Decision]bool{}
	for _, rule := range dag.TriggerRules {
		seen[rule] = map[Decision]bool{}
		for _, u := range vectors {
			want := specDecide(rule, expand(u))
			got := Decide(rule, u)
			if got != want {
				t.Errorf("Decide(%s, %+v) = %s, want %s", rule, u, got, want)
			}
			seen[rule][got] = true
			if u.Done() == u.Total && got == Wait {
				t.Errorf("Decide(%s, %+v) waits although every upstream finished", rule, u)
			}
		}
	}
	// Every rule can wait, run and end a task some other way, except the
	// rules that never skip or fail a task.
	wantSeen := map[dag.TriggerRule][]Decision{
		dag.AllSuccess:              {Wait, Run, Skip, FailUpstream},
		dag.AllFailed:               {Wait, Run, Skip},
		dag.AllDone:                 {Wait, Run},
		dag.AllSkipped:              {Wait, Run, Skip},
		dag.OneSuccess:              {Wait, Run, Skip, FailUpstream},
		dag.OneFailed:               {Wait, Run, Skip},
		dag.OneDone:                 {Wait, Run, Skip},
		dag.NoneFailed:              {Wait, Run, FailUpstream},
		dag.NoneFailedMinOneSuccess: {Wait, Run, Skip, FailUpstream},
		dag.NoneSkipped:             {Wait, Run, Skip},
		dag.Always:                  {Run},
	}
	for rule, ds := range wantSeen {
		if len(seen[rule]) != len(ds) {
			t.Errorf("rule %s produced %v, want exactly %v", rule, seen[rule], ds)
		}
		for _, d := range ds {
			if !seen[rule][d] {
				t.Errorf("rule %s never produced %s", rule, d)
			}
		}
	}
}

// TestDecideExamples pins Airflow's documented behaviour on hand-picked
// cases, independently of specDecide.
func TestDecideExamples(t *testing.T) {
	u := func(total, s, f, k, uf, r int) Upstream {
		return Upstream{Total: total, Success: s, Failed: f, Skipped: k, UpstreamFailed: uf, Removed: r}
	}
	cases := []struct {
		rule dag.TriggerRule
		u    Upstream
		want Decision
	}{
		// No upstream: runs whatever the rule.
		{dag.AllSuccess, u(0, 0, 0, 0, 0, 0), Run},
		{dag.OneSuccess, u(0, 0, 0, 0, 0, 0), Run},
		{dag.AllSkipped, u(0, 0, 0, 0, 0, 0), Run},
		// always runs at once, even with nothing finished.
		{dag.Always, u(3, 0, 0, 0, 0, 0), Run},
		// all_success: fails fast, skips propagate at once, failure wins.
		{dag.AllSuccess, u(3, 2, 0, 0, 0, 0), Wait},
		{dag.AllSuccess, u(3, 3, 0, 0, 0, 0), Run},
		{dag.AllSuccess, u(3, 0, 1, 0, 0, 0), FailUpstream},
		{dag.AllSuccess, u(3, 0, 0, 0, 1, 0), FailUpstream},
		{dag.AllSuccess, u(3, 0, 0, 1, 0, 0), Skip},
		{dag.AllSuccess, u(3, 0, 1, 1, 0, 0), FailUpstream},
		// Removed upstream instances are left out.
		{dag.AllSuccess, u(3, 2, 0, 0, 0, 1), Run},
		{dag.AllSuccess, u(1, 0, 0, 0, 0, 1), Run},
		// all_failed.
		{dag.AllFailed, u(2, 0, 1, 0, 0, 0), Wait},
		{dag.AllFailed, u(2, 0, 1, 0, 1, 0), Run},
		{dag.AllFailed, u(2, 1, 0, 0, 0, 0), Skip},
		{dag.AllFailed, u(2, 0, 0, 1, 0, 0), Skip},
		// all_done: anything finished.
		{dag.AllDone, u(3, 1, 1, 0, 0, 0), Wait},
		{dag.AllDone, u(3, 0, 1, 1, 1, 0), Run},
		// all_skipped.
		{dag.AllSkipped, u(2, 0, 0, 1, 0, 0), Wait},
		{dag.AllSkipped, u(2, 0, 0, 2, 0, 0), Run},
		{dag.AllSkipped, u(2, 0, 0, 0, 1, 0), Skip},
		// one_success: runs at the first success.
		{dag.OneSuccess, u(3, 1, 0, 0, 0, 0), Run},
		{dag.OneSuccess, u(3, 0, 1, 1, 0, 0), Wait},
		{dag.OneSuccess, u(2, 0, 0, 2, 0, 0), Skip},
		{dag.OneSuccess, u(2, 0, 1, 1, 0, 0), FailUpstream},
		// one_failed: runs at the first failure, upstream_failed counts.
		{dag.OneFailed, u(3, 0, 0, 0, 1, 0), Run},
		{dag.OneFailed, u(2, 1, 0, 0, 0, 0), Wait},
		{dag.OneFailed, u(2, 1, 0, 1, 0, 0), Skip},
		// one_done: success or failed, not upstream_failed.
		{dag.OneDone, u(3, 0, 1, 0, 0, 0), Run},
		{dag.OneDone, u(2, 0, 0, 0, 1, 0), Wait},
		{dag.OneDone, u(2, 0, 0, 1, 1, 0), Skip},
		// none_failed: skips do not propagate, even when all skipped.
		{dag.NoneFailed, u(2, 0, 0, 2, 0, 0), Run},
		{dag.NoneFailed, u(2, 1, 0, 1, 0, 0), Run},
		{dag.NoneFailed, u(3, 0, 0, 0, 1, 0), FailUpstream},
		{dag.NoneFailed, u(3, 1, 0, 1, 0, 0), Wait},
		// none_failed_min_one_success: skipped only when all skipped.
		{dag.NoneFailedMinOneSuccess, u(2, 0, 0, 2, 0, 0), Skip},
		{dag.NoneFailedMinOneSuccess, u(2, 1, 0, 1, 0, 0), Run},
		{dag.NoneFailedMinOneSuccess, u(2, 0, 1, 0, 0, 0), FailUpstream},
		{dag.NoneFailedMinOneSuccess, u(2, 0, 0, 1, 0, 0), Wait},
		// none_skipped: failures do not stop it.
		{dag.NoneSkipped, u(2, 0, 2, 0, 0, 0), Run},
		{dag.NoneSkipped, u(2, 0, 0, 1, 0, 0), Skip},
		{dag.NoneSkipped, u(2, 1, 0, 0, 0, 0), Wait},
	}
	for _, c := range cases {
		if got := Decide(c.rule, c.u); got != c.want {
			t.Errorf("Decide(%s, %+v) = %s, want %s", c.rule, c.u, got, c.want)
		}
	}
}

func TestDecideBadInput(t *testing.T) {
	bad := []Upstream{
		{Total: 1, Success: 2},
		{Total: -1},
		{Total: 2, Failed: -1},
		{Total: 3, Success: 1, Failed: 1, Skipped: 1, Removed: 1},
	}
	for _, u := range bad {
		if u.Valid() == nil {
			t.Errorf("Upstream %+v: Valid() = nil, want an error", u)
		}
		for _, rule := range dag.TriggerRules {
			if rule == dag.Always {
				continue
			}
			if got := Decide(rule, u); got != Wait {
				t.Errorf("Decide(%s, %+v) = %s, want wait for inconsistent counts", rule, u, got)
			}
		}
	}
	if got := Decide("no_such_rule", Upstream{Total: 1, Success: 1}); got != Wait {
		t.Errorf("unknown rule decided %s, want wait", got)
	}
}

func TestDecisionNames(t *testing.T) {
	cases := []struct {
		d     Decision
		name  string
		state TaskState
	}{
		{Wait, "wait", None},
		{Run, "run", Scheduled},
		{Skip, "skip", Skipped},
		{FailUpstream, "upstream_failed", UpstreamFailed},
		{Decision(42), "Decision(42)", None},
	}
	for _, c := range cases {
		if c.d.String() != c.name || c.d.State() != c.state {
			t.Errorf("%d: String %q State %q, want %q %q", int(c.d), c.d.String(), c.d.State(), c.name, c.state)
		}
	}
	if fmt.Sprint(FailUpstream) != "upstream_failed" {
		t.Errorf("fmt does not use String")
	}
}

func TestUpstreamAdd(t *testing.T) {
	u := Upstream{Total: 7}
	for _, s := range []TaskState{Success, Failed, Skipped, UpstreamFailed, Removed, Running, None} {
		u = u.Add(s)
	}
	want := Upstream{Total: 7, Success: 1, Failed: 1, Skipped: 1, UpstreamFailed: 1, Removed: 1}
	if u != want || u.Done() != 5 {
		t.Errorf("Add gave %+v (done %d), want %+v (done 5)", u, u.Done(), want)
	}
}
