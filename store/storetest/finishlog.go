package storetest

import (
	"bytes"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// testFinishLog checks Result.Log: FinishTasks appends a try's final log
// chunk in the transaction that records the result, after the chunks
// AppendLog sent before, within the same cap, and not when the result is
// refused.
func testFinishLog(t *testing.T, e *env) {
	e.started(newSpec("fl", tk("a"), tk("b"), tk("big"), tk("c", up("a"))), "run")
	a := e.claimNamed("fl", "a")
	b := e.claimNamed("fl", "b")
	big := e.claimNamed("fl", "big")
	must(t, "AppendLog", e.s.AppendLog(e.ctx, att(a), []byte("early\n")))
	// big's log is nearly full before its final chunk.
	first := bytes.Repeat([]byte("x"), LogCap-4)
	must(t, "AppendLog big", e.s.AppendLog(e.ctx, att(big), first))

	ra, rb, rbig := succeed(a), succeed(b), succeed(big)
	ra.Log, rb.Log, rbig.Log = []byte("last of a\n"), []byte("only b\n"), []byte("0123456789")
	out := e.finish(ra, rb, rbig)
	for i, o := range out {
		if !o.Applied || o.State != state.Success {
			t.Errorf("outcome %d = %+v, want applied success", i, o)
		}
	}
	readLog := func(task string, try int) string {
		t.Helper()
		got, err := e.s.ReadLog(e.ctx, "fl", "run", task, try)
		must(t, "ReadLog "+task, err)
		return string(got)
	}
	if got := readLog("a", 1); got != "early\nlast of a\n" {
		t.Errorf("log of a = %q, want the appended chunk then the final one", got)
	}
	if got := readLog("b", 1); got != "only b\n" {
		t.Errorf("log of b = %q, want its final chunk", got)
	}
	got := readLog("big", 1)
	if !strings.HasPrefix(got, string(first)+"0123") || strings.HasPrefix(got, string(first)+"01234") ||
		!strings.Contains(got[LogCap:], "truncated") {
		t.Errorf("log of big ends with %q, want 4 more bytes then a truncation marker", got[LogCap-8:])
	}
	// The release still happened in the same finish.
	if ti := e.ti("fl", "run", "c"); ti.State != state.Queued {
		t.Errorf("c = %s after a finished, want queued", ti.State)
	}

	// A refused (duplicate) report does not touch the log.
	dup := succeed(b)
	dup.Log = []byte("late duplicate\n")
	if out := e.finish(dup); out[0].Applied {
		t.Errorf("duplicate report applied: %+v", out[0])
	}
	if got := readLog("b", 1); got != "only b\n" {
		t.Errorf("log of b after a refused report = %q, want unchanged", got)
	}

	// A result without Log leaves a try's log as AppendLog made it.
	c := e.claimNamed("fl", "c")
	must(t, "AppendLog c", e.s.AppendLog(e.ctx, att(c), []byte("c runs\n")))
	e.finish(result(c, state.Failed))
	if got := readLog("c", 1); got != "c runs\n" {
		t.Errorf("log of c = %q", got)
	}
	if _, err := e.s.FinishTasks(e.ctx, []store.Result{{Try: att(c), State: state.Success, Log: []byte("x")}}); err != nil {
		t.Errorf("FinishTasks of a finished try with a log: %v, want a refused outcome", err)
	}
	if got := readLog("c", 1); got != "c runs\n" {
		t.Errorf("log of c after a refused report = %q", got)
	}
}
