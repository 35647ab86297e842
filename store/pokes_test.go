package store

import (
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
)

func TestCheckPokeResults(t *testing.T) {
	again := func(id int64) PokeResult {
		return PokeResult{Try: Try{ID: id}, Result: Result{State: state.Deferred, Deferral: Deferral{Poke: true, NextCheckAt: time.Unix(1, 0)}}}
	}
	if err := CheckPokeResults([]PokeResult{again(3), again(1), again(2)}); err != nil {
		t.Errorf("three instances once each: %v", err)
	}
	for _, tc := range []struct {
		name    string
		results []PokeResult
		want    string
	}{
		{"twice", []PokeResult{again(5), again(2), again(7), again(2)}, "result 3: instance 2 is reported twice"},
		{"twice, first ids", []PokeResult{again(1), again(1)}, "result 1: instance 1 is reported twice"},
		{"no next check", []PokeResult{again(1), {Try: Try{ID: 2}, Result: Result{State: state.Deferred}}}, "result 1 (instance 2)"},
		{"running", []PokeResult{{Try: Try{ID: 2}, Result: Result{State: state.Running}}}, `state "running" is not an outcome`},
	} {
		err := CheckPokeResults(tc.results)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}
