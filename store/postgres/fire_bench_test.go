package postgres_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// BenchmarkFireRuns: one FireRuns call firing a run for each of 100 DAGs
// of 10 tasks (what a scheduler tick does with 100 due DAGs): schedule
// check, run and instance inserts, schedule advance, admission.
func BenchmarkFireRuns(b *testing.B) {
	const dags = 100
	s := benchStore(b)
	ctx := context.Background()
	specs := make([]store.DAGSpec, dags)
	for d := range specs {
		specs[d] = layeredSpec(fmt.Sprintf("fire%03d", d), 5, 2)
	}
	if err := s.SyncDAGs(ctx, specs); err != nil {
		b.Fatal(err)
	}
	var prev *time.Time
	i := 0
	for b.Loop() {
		ld := bt0.Add(time.Duration(i) * time.Hour)
		last := ld.Add(time.Hour)
		fires := make([]store.Fire, dags)
		for d, sp := range specs {
			fires[d] = store.Fire{DAGID: sp.DAGID, Prev: prev, Last: last, Runs: []store.NewRun{{
				DAGID: sp.DAGID, RunID: fmt.Sprintf("r%d", i), RunType: store.RunScheduled, LogicalDate: ld,
				IntervalStart: ld, IntervalEnd: last, Fingerprint: sp.Fingerprint, QueuedAt: ld}}}
		}
		res, err := s.FireRuns(ctx, fires, last)
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range res {
			if r.Err != nil || len(r.Created) != 1 {
				b.Fatalf("fire %s: %v, %d created; want 1", r.DAGID, r.Err, len(r.Created))
			}
		}
		prev = &last
		i++
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/fire")
}
