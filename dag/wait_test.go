package dag

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateWaitingTasks(t *testing.T) {
	check := func(*Context) (bool, error) { return true, nil }
	tests := []struct {
		name  string
		build func(d *DAG)
		want  []string // substrings, one problem each
	}{
		{"valid", func(d *DAG) {
			d.Resumable("r", Steps{Start: noop, Continue: noop}, SoftFail())
			d.Sensor("s", check, PokeInterval(time.Second), SensorTimeout(time.Hour), SoftFail())
			d.Approval("a", Approvers("ops", "alice"), ApprovalTimeout(time.Hour))
			d.Shell("sh", "true", PokeInterval(time.Minute), SoftFail())
		}, nil},
		{"nil steps", func(d *DAG) { d.Resumable("r", Steps{}) },
			[]string{"nil Start step", "nil Continue step"}},
		{"nil check", func(d *DAG) { d.Sensor("s", nil) }, []string{"nil check function"}},
		{"options on the wrong kind", func(d *DAG) {
			d.Func("f", noop, PokeInterval(time.Second), SensorTimeout(time.Hour), SoftFail(),
				Approvers("x"), ApprovalTimeout(time.Hour))
		}, []string{"PokeInterval applies to sensor and shell tasks, not to a func task",
			"SensorTimeout applies to sensor tasks", "SoftFail applies to", "Approvers applies to approval tasks",
			"ApprovalTimeout applies to approval tasks"}},
		{"bad values", func(d *DAG) {
			d.Sensor("s", check, PokeInterval(0), SensorTimeout(-time.Second))
			d.Approval("a", Approvers(), ApprovalTimeout(-time.Second))
			d.Approval("b", Approvers(""))
		}, []string{"PokeInterval must be positive, got 0s", "SensorTimeout must be positive, got -1s",
			"Approvers names nobody", "ApprovalTimeout must not be negative", "Approvers holds an empty name"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := New("w")
			tc.build(d)
			probs := d.Validate()
			if len(probs) != len(tc.want) {
				t.Fatalf("problems = %v, want %d: %q", probs, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(probs[i].String(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, probs[i], w)
				}
			}
		})
	}
}

func TestScheduleOnEventKey(t *testing.T) {
	for key, want := range map[string]string{
		"user.signup":            "",
		"":                       "event key is empty",
		"a\nb":                   "control character",
		strings.Repeat("k", 251): "more than 250",
	} {
		d := New("e", ScheduleOnEvent(key))
		d.Func("f", noop)
		probs := d.Validate()
		if want == "" {
			if len(probs) != 0 || d.EventKey() != key {
				t.Errorf("key %q: problems %v, EventKey %q", key, probs, d.EventKey())
			}
			continue
		}
		if len(probs) != 1 || !strings.Contains(probs[0].Message, "ScheduleOnEvent: ") || !strings.Contains(probs[0].Message, want) {
			t.Errorf("key %q: problems %v, want one with %q", key, probs, want)
		}
	}
}

func TestDefer(t *testing.T) {
	c := NewContext(context.Background(), RunInfo{TaskID: "t"}, nil, nil)
	err := c.Defer(Wait{State: map[string]int{"n": 1}, Event: "done:1", After: time.Minute, Timeout: time.Hour})
	d, ok := IsDefer(err)
	if !ok || string(d.State) != `{"n":1}` || d.Event != "done:1" || d.After != time.Minute || d.Timeout != time.Hour {
		t.Fatalf("Defer = %#v (%v)", d, ok)
	}
	if IsPermanent(err) {
		t.Error("a good deferral is permanent")
	}
	for _, w := range []Wait{{After: -1}, {Timeout: -1}, {Event: "a\x00"}, {State: make(chan int)}} {
		err := c.Defer(w)
		if _, ok := IsDefer(err); ok || !IsPermanent(err) {
			t.Errorf("Defer(%+v) = %v, want a permanent failure", w, err)
		}
	}
	if err := c.DeferredState(new(int)); !errors.Is(err, ErrNoDeferredState) {
		t.Errorf("DeferredState with none = %v", err)
	}
	if err := c.EventPayload(new(int)); !errors.Is(err, ErrNoEventPayload) {
		t.Errorf("EventPayload with none = %v", err)
	}
	c = NewContext(context.Background(), RunInfo{TaskID: "t", Resumed: true,
		DeferredState: []byte(`"abc"`), EventPayload: []byte(`{"rows":3}`)}, nil, nil)
	var s string
	var p struct{ Rows int }
	if err := c.DeferredState(&s); err != nil || s != "abc" || !c.Resumed() {
		t.Errorf("DeferredState = %q, %v", s, err)
	}
	if err := c.EventPayload(&p); err != nil || p.Rows != 3 {
		t.Errorf("EventPayload = %+v, %v", p, err)
	}
	if err := c.EventPayload(&s); err == nil || !strings.Contains(err.Error(), `event payload of task "t"`) {
		t.Errorf("EventPayload into a string = %v", err)
	}
}

func TestDescribeMarksWaitingTasks(t *testing.T) {
	d := New("w", ScheduleOnEvent("go"))
	s := d.Sensor("s", func(*Context) (bool, error) { return true, nil }, PokeInterval(5*time.Second))
	a := d.Approval("a", Approvers("ops"))
	s.SetDownstream(a)
	var b strings.Builder
	if err := WriteText(&b, d); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"on event go", "s (sensor, waits: poke every 5s)", "a (approval, waits for ops)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("text %q lacks %q", b.String(), want)
		}
	}
	j := ToJSON(d)
	if !j.Tasks[0].Waits || j.EventKey != "go" {
		t.Errorf("JSON = %+v", j)
	}
}
