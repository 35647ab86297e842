package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// FillRuns creates the runs n0 … n0+n-1 of dagID (recorded already, by
// SyncDAGs), a minute apart from 2026-01-01 and named fill__NNNNNNN, with
// one FireRuns per 2,000 runs that moves the DAG's schedule on from where
// it is: benchmarks fill a store with many runs this way.
func FillRuns(tb testing.TB, s store.Store, dagID string, n0, n int) {
	tb.Helper()
	ctx := context.Background()
	d, err := s.GetDAG(ctx, dagID)
	if err != nil {
		tb.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	prev := d.LastIntervalEnd
	for i := n0; i < n0+n; i += 2000 {
		f := store.Fire{DAGID: dagID, Prev: prev}
		for j := i; j < min(n0+n, i+2000); j++ {
			ld := t0.Add(time.Duration(j) * time.Minute)
			f.Runs = append(f.Runs, store.NewRun{DAGID: dagID, RunID: fmt.Sprintf("fill__%07d", j),
				RunType: store.RunScheduled, LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(time.Minute),
				Fingerprint: d.Fingerprint, QueuedAt: ld})
			f.Last = ld.Add(time.Minute)
		}
		res, err := s.FireRuns(ctx, []store.Fire{f}, time.Now())
		if err != nil || res[0].Err != nil {
			tb.Fatalf("fire runs from %d: %v %v", i, err, res[0].Err)
		}
		last := f.Last
		prev = &last
	}
}
