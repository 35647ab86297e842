package state

import (
	"testing"

	"github.com/trellis-dag/trellis/dag"
)

// BenchmarkDecide measures one trigger-rule decision.
func BenchmarkDecide(b *testing.B) {
	vs := allVectors(3)
	i := 0
	for b.Loop() {
		Decide(dag.TriggerRules[i%len(dag.TriggerRules)], vs[i%len(vs)])
		i++
	}
}
