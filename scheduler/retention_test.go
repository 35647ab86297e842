package scheduler

import (
	"context"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

var _ PurgeMetrics = (*api.Metrics)(nil)

// TestPurgerPolicy: a pass deletes the runs past the server's retention
// or their DAG's own, the logs past the log retention, keeps the rest,
// and counts what it deleted in the metrics.
func TestPurgerPolicy(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		st := b.open(t, clock.Real{})
		start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
		keep := shellDAG("keep", "", start)
		short := shellDAG("short", "", start, dag.Retention(time.Hour))
		forever := shellDAG("forever", "", start, dag.Retention(dag.KeepForever))
		reg := registry(keep, short, forever)
		var specs []store.DAGSpec
		for _, d := range reg.DAGs() {
			specs = append(specs, store.SpecFromDAG(d))
		}
		if err := st.SyncDAGs(ctx, specs); err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		day := 24 * time.Hour
		runs := []struct {
			d     *dag.DAG
			id    string
			ended time.Duration // ago
		}{
			{keep, "k-old", 40 * day}, {keep, "k-mid", 10 * day}, {keep, "k-new", day},
			{short, "s-old", 2 * time.Hour}, {short, "s-new", time.Minute},
			{forever, "f-old", 400 * day},
		}
		for i, r := range runs {
			ld := start.Add(time.Duration(i) * time.Hour)
			if _, _, err := st.CreateRun(ctx, store.NewRun{DAGID: r.d.ID(), RunID: r.id, RunType: store.RunManual,
				LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld, Fingerprint: r.d.Fingerprint(), QueuedAt: ld}); err != nil {
				t.Fatal(err)
			}
			if _, err := st.StartRuns(ctx, r.d.ID(), ld); err != nil {
				t.Fatal(err)
			}
		}
		w := store.Worker{ID: "w", Hostname: "h", PID: 1, Slots: 100, StartedAt: now, HeartbeatAt: now}
		if err := st.RegisterWorker(ctx, w); err != nil {
			t.Fatal(err)
		}
		claimed, err := st.ClaimTasks(ctx, w, 100, now)
		if err != nil || len(claimed) != len(runs) {
			t.Fatalf("claimed %d, %v; want %d", len(claimed), err, len(runs))
		}
		for _, c := range claimed {
			if err := st.AppendLog(ctx, store.Try{ID: c.ID, TryNumber: c.TryNumber}, []byte("log")); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range runs {
			if _, err := st.SetRunState(ctx, r.d.ID(), r.id, state.RunSuccess, now.Add(-r.ended)); err != nil {
				t.Fatal(err)
			}
		}

		m := api.NewMetrics(nil)
		p := NewPurger(RetentionConfig{Store: st, Registry: reg, Runs: 30 * day, Logs: 7 * day, Batch: 1,
			Pause: time.Millisecond, Logger: testLogger(t), Metrics: m})
		got, err := p.Pass(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// k-old and s-old go with their logs; k-mid and f-old lose theirs.
		if want := (store.Purged{Runs: 2, TaskInstances: 2, Logs: 4}); got != want {
			t.Errorf("pass purged %+v, want %+v", got, want)
		}
		left, _, err := st.ListRuns(ctx, store.RunQuery{OrderBy: "run_id"})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range left {
			ids = append(ids, r.RunID)
		}
		if want := []string{"f-old", "k-mid", "k-new", "s-new"}; !equalStrings(ids, want) {
			t.Errorf("runs left %v, want %v", ids, want)
		}
		for id, want := range map[string]string{"k-mid": "", "f-old": "", "k-new": "log", "s-new": "log"} {
			d := map[byte]string{'k': "keep", 'f': "forever", 's': "short"}[id[0]]
			b, err := st.ReadLog(ctx, d, id, "t", 1)
			if string(b) != want || (want != "" && err != nil) {
				t.Errorf("log of %s = %q, %v; want %q", id, b, err, want)
			}
		}
		fams := gather(t, m)
		for kind, want := range map[string]float64{"runs": 2, "task_instances": 2, "logs": 4} {
			if got := counter(fams, "trellis_purged_total", kind); got != want {
				t.Errorf("trellis_purged_total{kind=%q} = %v, want %v", kind, got, want)
			}
		}
		if again, err := p.Pass(ctx); err != nil || again != (store.Purged{}) {
			t.Errorf("second pass purged %+v, %v; want nothing", again, err)
		}

		// Started, it runs a pass at once and stops when asked.
		if err := p.Start(ctx); err != nil {
			t.Fatal(err)
		}
		p.Stop()
		p.Stop()
	})
}

// TestPurgerEnabled: without retentions a purger has nothing to do.
func TestPurgerEnabled(t *testing.T) {
	start := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	plain := registry(shellDAG("a", "", start))
	if NewPurger(RetentionConfig{Registry: plain}).Enabled() {
		t.Error("enabled without any retention")
	}
	for name, cfg := range map[string]RetentionConfig{
		"runs":    {Registry: plain, Runs: time.Hour},
		"logs":    {Registry: plain, Logs: time.Hour},
		"per DAG": {Registry: registry(shellDAG("b", "", start, dag.Retention(time.Hour)))},
	} {
		if !NewPurger(cfg).Enabled() {
			t.Errorf("%s: not enabled", name)
		}
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
