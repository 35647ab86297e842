package scheduler

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// TestStartCreatesPools: pools declared in code are created when missing
// and left alone when they exist (resized through the API meanwhile);
// DefaultPoolSlots sizes default_pool.
func TestStartCreatesPools(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		st := b.open(t, clock.NewFake(now))
		ctx := context.Background()
		d := shellDAG("pooled", "", time.Time{})
		reg := registry(d)
		reg.RegisterPool("warehouse", 4, "the warehouse")
		slots := 10
		s := New(Config{Store: st, Registry: reg, Clock: clock.NewFake(now), Logger: testLogger(t), DefaultPoolSlots: &slots})
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		s.Stop()
		p, err := st.GetPool(ctx, "warehouse")
		if err != nil || p.Slots != 4 || p.Description != "the warehouse" {
			t.Fatalf("warehouse after start: %+v, %v", p, err)
		}
		if p, err := st.GetPool(ctx, dag.DefaultPool); err != nil || p.Slots != 10 {
			t.Fatalf("default_pool after start: %+v, %v; want 10 slots", p, err)
		}
		resized := 7
		if _, err := st.UpdatePool(ctx, "warehouse", storePatch(&resized)); err != nil {
			t.Fatal(err)
		}
		s = New(Config{Store: st, Registry: reg, Clock: clock.NewFake(now), Logger: testLogger(t)})
		if err := s.Start(ctx); err != nil {
			t.Fatal(err)
		}
		s.Stop()
		if p, _ := st.GetPool(ctx, "warehouse"); p.Slots != 7 {
			t.Errorf("a restart reset the resized pool to %d slots, want 7", p.Slots)
		}
		if p, _ := st.GetPool(ctx, dag.DefaultPool); p.Slots != 10 {
			t.Errorf("default_pool %d slots after a start without DefaultPoolSlots, want 10 kept", p.Slots)
		}

		// A task taking more slots than its declared pool has is refused.
		bad := dag.New("too_big")
		bad.Shell("t", "true", dag.Pool("warehouse"), dag.PoolSlots(5))
		reg2 := registry(bad)
		reg2.RegisterPool("warehouse", 4, "")
		err = New(Config{Store: st, Registry: reg2, Clock: clock.NewFake(now), Logger: testLogger(t)}).Start(ctx)
		var inv *InvalidDAGsError
		if !errors.As(err, &inv) || !strings.Contains(err.Error(), "PoolSlots 5 is more than pool") {
			t.Errorf("start with a task bigger than its pool: %v", err)
		}
	})
}

func storePatch(slots *int) store.PoolPatch { return store.PoolPatch{Slots: slots} }
