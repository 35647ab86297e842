package postgres

import (
	"testing"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// TestPokesAgainArgs: the text arrays of pokesAgainSQL list the results
// in instance id order, whatever order they come in, and an empty list
// is an empty array.
func TestPokesAgainArgs(t *testing.T) {
	at := func(us int64) store.Result {
		return store.Result{Deferral: store.Deferral{Poke: true, NextCheckAt: time.UnixMicro(us)}}
	}
	results := []store.PokeResult{
		{Try: store.Try{ID: 30}, Lease: 3, Result: at(1_764_900_000_000_003)},
		{Try: store.Try{ID: 7}, Lease: 12, Result: at(-5)},
		{Try: store.Try{ID: 1_000_000_000_001}, Lease: 1, Result: at(0)},
	}
	want := [3]string{"{7,30,1000000000001}", "{12,3,1}", "{-5,1764900000000003,0}"}
	if got := pokesAgainArgs(results); got != want {
		t.Errorf("pokesAgainArgs(unsorted) = %q, want %q", got, want)
	}
	sorted := []store.PokeResult{results[1], results[0], results[2]}
	if got := pokesAgainArgs(sorted); got != want {
		t.Errorf("pokesAgainArgs(sorted) = %q, want %q", got, want)
	}
	if got := pokesAgainArgs(nil); got != [3]string{"{}", "{}", "{}"} {
		t.Errorf("pokesAgainArgs(nil) = %q, want three empty arrays", got)
	}
	if got := int8Array([]int64{-1, 0, 9_223_372_036_854_775_807}); got != "{-1,0,9223372036854775807}" {
		t.Errorf("int8Array = %q", got)
	}
}
