package dag

import (
	"encoding/hex"
	"testing"
	"time"
)

// fpConfig holds every input of fpDAG; each sensitivity case changes one.
type fpConfig struct {
	schedule                    string
	idA, idB                    string
	kindB                       string // "shell" or "http"
	trigger                     TriggerRule
	retries                     int
	retryDelay, backoff, timeou time.Duration
	priority                    int
	command                     string
	method, url, body           string
	header                      map[string]string
	reverse, extraEdge          bool
	reorder                     bool // add tasks and edges in another order

	// Not part of the structure: must not change the fingerprint.
	description string
	tags        []string
	params      map[string]any
	start       time.Time
	fn          func(*Context) error
}

func baseFP() fpConfig {
	return fpConfig{
		schedule: "0 3 * * *", idA: "a", idB: "b", kindB: "shell", trigger: AllSuccess,
		retries: 1, retryDelay: 10 * time.Second, backoff: time.Minute, timeou: time.Hour, priority: 2,
		command: "echo hi", method: "POST", url: "http://127.0.0.1:9/hook", body: "{}",
		header: map[string]string{"X-One": "1", "X-Two": "2"}, fn: noop,
	}
}

func fpDAG(c fpConfig) *DAG {
	d := New("fp", Schedule(c.schedule), Description(c.description), Tags(c.tags...), Params(c.params), StartDate(c.start))
	topts := []TaskOption{Trigger(c.trigger), Retries(c.retries), RetryDelay(c.retryDelay),
		ExponentialBackoff(c.backoff), Timeout(c.timeou), Priority(c.priority)}
	addA := func() *Task { return d.Func(c.idA, c.fn, topts...) }
	addB := func() *Task {
		if c.kindB == "http" {
			return d.HTTP(c.idB, HTTPRequest{Method: c.method, URL: c.url, Header: c.header, Body: c.body})
		}
		return d.Shell(c.idB, c.command)
	}
	addH := func() *Task {
		return d.HTTP("h", HTTPRequest{Method: c.method, URL: c.url, Header: c.header, Body: c.body})
	}
	var a, b, h *Task
	if c.reorder {
		h, b, a = addH(), addB(), addA()
	} else {
		a, b, h = addA(), addB(), addH()
	}
	switch {
	case c.reverse:
		b.SetDownstream(a)
	case c.reorder:
		h.SetUpstream(b)
		a.SetDownstream(b)
	default:
		a.SetDownstream(b)
		b.SetDownstream(h)
	}
	if c.reverse {
		b.SetDownstream(h)
	}
	if c.extraEdge {
		a.SetDownstream(h)
	}
	return d
}

func TestFingerprintStable(t *testing.T) {
	base := fpDAG(baseFP()).Fingerprint()
	if b, err := hex.DecodeString(base); err != nil || len(b) != 32 {
		t.Fatalf("Fingerprint() = %q, want 64 hex digits", base)
	}
	// Pinned so that an accidental change of the encoding is noticed: every
	// stored DAG would look changed. Change fingerprintVersion with it.
	const pinned = "f97a41c83f5ec3c8c0119c9f7cf34df48327b0437bc919ad3832b7d469c8605e"
	if base != pinned {
		t.Errorf("Fingerprint() = %s, want the pinned %s", base, pinned)
	}

	same := map[string]func(*fpConfig){
		"rebuilt":                 func(*fpConfig) {},
		"tasks and edges reorder": func(c *fpConfig) { c.reorder = true },
		"header map rebuilt": func(c *fpConfig) {
			c.header = map[string]string{}
			c.header["X-Two"] = "2"
			c.header["X-One"] = "1"
		},
		"description":   func(c *fpConfig) { c.description = "other" },
		"tags":          func(c *fpConfig) { c.tags = []string{"x"} },
		"params":        func(c *fpConfig) { c.params = map[string]any{"k": 1} },
		"start date":    func(c *fpConfig) { c.start = jan1 },
		"function body": func(c *fpConfig) { c.fn = func(*Context) error { return Skip("x") } },
	}
	for name, mutate := range same {
		c := baseFP()
		mutate(&c)
		for range 3 { // map iteration order varies between calls
			if got := fpDAG(c).Fingerprint(); got != base {
				t.Errorf("%s: fingerprint changed (%s != %s)", name, got, base)
			}
		}
	}
}

func TestFingerprintSensitive(t *testing.T) {
	base := fpDAG(baseFP()).Fingerprint()
	changes := map[string]func(*fpConfig){
		"schedule":      func(c *fpConfig) { c.schedule = "0 4 * * *" },
		"no schedule":   func(c *fpConfig) { c.schedule = "" },
		"task id":       func(c *fpConfig) { c.idA = "a2" },
		"ids swapped":   func(c *fpConfig) { c.idA, c.idB = "b", "a" },
		"kind":          func(c *fpConfig) { c.kindB = "http" },
		"trigger rule":  func(c *fpConfig) { c.trigger = AllDone },
		"retries":       func(c *fpConfig) { c.retries = 2 },
		"retry delay":   func(c *fpConfig) { c.retryDelay = 11 * time.Second },
		"backoff":       func(c *fpConfig) { c.backoff = 2 * time.Minute },
		"timeout":       func(c *fpConfig) { c.timeou = time.Hour + time.Nanosecond },
		"priority":      func(c *fpConfig) { c.priority = -2 },
		"shell command": func(c *fpConfig) { c.command = "echo hi " },
		"HTTP method":   func(c *fpConfig) { c.method = "PUT" },
		"HTTP URL":      func(c *fpConfig) { c.url = "http://127.0.0.1:9/hook2" },
		"HTTP body":     func(c *fpConfig) { c.body = "" },
		"HTTP header":   func(c *fpConfig) { c.header = map[string]string{"X-One": "1", "X-Two": "3"} },
		"HTTP header key": func(c *fpConfig) {
			c.header = map[string]string{"X-One": "1", "X-Three": "2"}
		},
		"edge reversed": func(c *fpConfig) { c.reverse = true },
		"edge added":    func(c *fpConfig) { c.extraEdge = true },
	}
	seen := map[string]string{base: "base"}
	for name, mutate := range changes {
		c := baseFP()
		mutate(&c)
		got := fpDAG(c).Fingerprint()
		if other, dup := seen[got]; dup {
			t.Errorf("%s: fingerprint equals that of %s", name, other)
		}
		seen[got] = name
	}
}

func TestFingerprintFieldBoundaries(t *testing.T) {
	// Length prefixes keep "ab"+"c" apart from "a"+"bc".
	d1 := New("x")
	d1.Shell("ab", "c")
	d2 := New("x")
	d2.Shell("a", "bc")
	if d1.Fingerprint() == d2.Fingerprint() {
		t.Error(`task "ab" running "c" and task "a" running "bc" have the same fingerprint`)
	}
	// Duplicate task ids (an invalid DAG) still give an order-independent value.
	d3 := New("dup")
	d3.Shell("t", "one")
	d3.Shell("t", "two")
	d4 := New("dup")
	d4.Shell("t", "two")
	d4.Shell("t", "one")
	if d3.Fingerprint() != d4.Fingerprint() {
		t.Error("fingerprint of duplicate ids depends on insertion order")
	}
}
