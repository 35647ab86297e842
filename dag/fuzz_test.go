package dag

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

func FuzzParseSchedule(f *testing.F) {
	for _, s := range []string{
		"0 0 * * *", "*/5 * * * *", "0 0 * * * *", "15 30 9 * * 1-5", "0 12 1 jan,jul *",
		"0 0 29 2 *", "0 0 30 2 *", "@yearly", "@annually", "@monthly", "@weekly", "@daily",
		"@midnight", "@hourly", "@every 1h30m", "@every 1.5s", "@every -1s", "@every", "@once",
		"CRON_TZ=America/New_York 30 2 * * *", "TZ=Asia/Tokyo @daily", "CRON_TZ=UTC", "TZ=",
		"TZ=UTC TZ=UTC 0 0 * * *", "CRON_TZ=Local 0 0 * * *", "", " ", "61 * * * *", "*/0 * * * *",
		"1-2-3 * * * *", "1/2/3 * * * *", "? ? ? ? ?", "0 0 L * *", "0 0 * * 7", "a b c d e f",
		"CRON_TZ=Australia/Lord_Howe 15,45 1,2 * * *", "0 0 0 0 0 0 0",
	} {
		f.Add(s)
	}
	times := []time.Time{
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 3, 8, 6, 59, 59, 999, time.UTC),
		time.Date(2026, 11, 1, 5, 30, 0, 0, time.UTC),
		time.Date(1999, 12, 31, 23, 59, 59, 0, time.FixedZone("x", -3600)),
	}
	f.Fuzz(func(t *testing.T, expr string) {
		s, err := ParseSchedule(expr)
		if err != nil {
			if s != nil {
				t.Fatalf("ParseSchedule(%q) returned a schedule and an error", expr)
			}
			if want := fmt.Sprintf("invalid schedule %q: ", expr); !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("error %q does not start with %q", err, want)
			}
			return
		}
		if s.Expr() != expr || s.Location() == nil || s.Every() < 0 {
			t.Fatalf("ParseSchedule(%q) = %+v", expr, s)
		}
		for _, at := range times {
			n := s.Next(at)
			if !n.IsZero() && !n.After(at) {
				t.Fatalf("%q: Next(%s) = %s, not after", expr, at, n)
			}
			if s.Every() > 0 && !n.Equal(at.Add(s.Every())) {
				t.Fatalf("%q: Next(%s) = %s, want +%s", expr, at, n, s.Every())
			}
		}
	})
}

// buildFromOps builds two DAGs from fuzz bytes: each op byte picks an
// action, the following bytes its arguments. It exercises every builder
// path, good and bad.
func buildFromOps(data []byte) []*DAG {
	dags := []*DAG{New("d0", Schedule("@daily"), StartDate(jan1)), New("d1")}
	next := func() byte {
		if len(data) == 0 {
			return 0
		}
		b := data[0]
		data = data[1:]
		return b
	}
	pick := func(d *DAG, b byte) *Task {
		if len(d.tasks) == 0 {
			return nil
		}
		return d.tasks[int(b)%len(d.tasks)]
	}
	rules := append([]TriggerRule{"bogus"}, TriggerRules...)
	for len(data) > 0 {
		op := next()
		d := dags[op>>7]
		arg := next()
		id := fmt.Sprintf("t%d", arg%16)
		if arg%29 == 0 {
			id = "bad id"
		}
		switch op & 0x7f % 10 {
		case 0:
			d.Func(id, noop)
		case 1:
			cmd := "true"
			if arg%5 == 0 {
				cmd = ""
			}
			d.Shell(id, cmd, Retries(int(int8(next()))), Timeout(time.Duration(int8(next()))*time.Second))
		case 2:
			d.HTTP(id, HTTPRequest{Method: "POST", URL: "http://127.0.0.1:9/", Header: map[string]string{"k": id}})
		case 3:
			var fn func(*Context) ([]string, error)
			if arg%3 != 0 {
				fn = func(*Context) ([]string, error) { return nil, nil }
			}
			d.Branch(id, fn, Trigger(rules[int(next())%len(rules)]), Priority(int(int8(next()))))
		case 4, 5, 6:
			if u, v := pick(d, arg), pick(d, next()); u != nil {
				u.SetDownstream(v) // v may equal u: a self-loop
			}
		case 7:
			if u, v := pick(d, arg), pick(d, next()); v != nil {
				v.SetUpstream(u)
			}
		case 8: // edge across the two DAGs
			if u, v := pick(dags[0], arg), pick(dags[1], next()); u != nil && v != nil {
				u.SetDownstream(v)
			}
		case 9: // nil and stray tasks
			var nilTask *Task
			if u := pick(d, arg); u != nil {
				u.SetDownstream(nil, &Task{id: "stray"})
				nilTask.SetUpstream(u)
			}
		}
	}
	return dags
}

func FuzzBuildDAG(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 2, 4, 0, 1})                              // a -> b
	f.Add([]byte{0, 1, 0, 2, 0, 3, 4, 0, 1, 4, 1, 2, 4, 2, 0})      // a -> b -> c -> a
	f.Add([]byte{0, 1, 4, 0, 0})                                    // self-loop
	f.Add([]byte{0, 1, 0, 1, 1, 5, 200, 3})                         // duplicate ids, negative retries
	f.Add([]byte{0, 1, 128, 2, 8, 0, 0, 9, 0})                      // cross-DAG and nil edges
	f.Add([]byte{3, 3, 99, 7, 2, 4, 1, 1, 2, 0, 29, 7, 0, 1, 7, 1}) // branch, bad id, bogus rule
	f.Add([]byte{0, 1, 0, 2, 0, 3, 0, 4, 4, 0, 1, 4, 1, 0, 4, 2, 3, 4, 3, 2, 5, 3, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		dags := buildFromOps(data)
		problems := Validate(dags)
		cyclic := map[string]bool{}
		for _, p := range problems {
			if p.Message == "" {
				t.Fatalf("problem without message: %+v", p)
			}
			if c, ok := strings.CutPrefix(p.Message, "cycle: "); ok {
				cyclic[p.DAGID] = true
				checkCycle(t, dags, p.DAGID, strings.Split(c, " -> "))
			}
		}
		again := buildFromOps(data)
		for i, d := range dags {
			if d.Fingerprint() != again[i].Fingerprint() {
				t.Fatal("the same build gave two fingerprints")
			}
			order, err := d.TopologicalOrder()
			if (err != nil) != cyclic[d.id] {
				t.Fatalf("DAG %s: TopologicalOrder error %v, cycle reported %v", d.id, err, cyclic[d.id])
			}
			if err == nil {
				checkOrder(t, d, order)
			}
			var buf bytes.Buffer
			for _, w := range []func(*bytes.Buffer, *DAG) error{
				func(b *bytes.Buffer, d *DAG) error { return WriteDOT(b, d) },
				func(b *bytes.Buffer, d *DAG) error { return WriteText(b, d) },
				func(b *bytes.Buffer, d *DAG) error { return WriteJSON(b, d) },
			} {
				buf.Reset()
				if err := w(&buf, d); err != nil {
					t.Fatal(err)
				}
			}
			if !json.Valid(buf.Bytes()) {
				t.Fatalf("invalid JSON: %s", buf.Bytes())
			}
		}
	})
}

// checkCycle asserts that ids (first repeated last) follow edges of the DAG.
func checkCycle(t *testing.T, dags []*DAG, dagID string, ids []string) {
	t.Helper()
	if len(ids) < 2 || ids[0] != ids[len(ids)-1] {
		t.Fatalf("cycle %v does not end where it starts", ids)
	}
	for _, d := range dags {
		if d.id != dagID {
			continue
		}
		for i := 0; i+1 < len(ids); i++ {
			if !hasEdge(d, ids[i], ids[i+1]) {
				t.Fatalf("cycle %v: no edge %s -> %s", ids, ids[i], ids[i+1])
			}
		}
	}
}

func hasEdge(d *DAG, from, to string) bool {
	for _, t := range d.tasks {
		if t.id != from {
			continue
		}
		for _, w := range t.downTasks() {
			if w.id == to {
				return true
			}
		}
	}
	return false
}

// ids returns the ids of ts.
func ids(ts []*Task) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = t.id
	}
	return out
}

// checkOrder asserts order holds every task once, each after its upstream.
func checkOrder(t *testing.T, d *DAG, order []*Task) {
	t.Helper()
	if len(order) != len(d.tasks) {
		t.Fatalf("order has %d tasks, DAG %d", len(order), len(d.tasks))
	}
	pos := make(map[*Task]int, len(order))
	for i, x := range order {
		if _, dup := pos[x]; dup {
			t.Fatalf("task %s twice in order", x.id)
		}
		pos[x] = i
	}
	for _, x := range d.tasks {
		for _, w := range x.downTasks() {
			if pos[w] <= pos[x] {
				t.Fatalf("edge %s -> %s goes backwards in %v", x.id, w.id, ids(order))
			}
		}
	}
}
