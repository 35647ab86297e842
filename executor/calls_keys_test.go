package executor

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// TestWorkerCallsByKeys: calls under ConcurrencyByKeys(1, "user") on two
// workers never run twice at once for one user while the two users' calls
// do run together, and a call lacking the field fails its caller's
// Result with an error naming the field.
func TestWorkerCallsByKeys(t *testing.T) {
	type args struct {
		User string `json:"user,omitempty"`
		N    int    `json:"n"`
	}
	for _, be := range backends {
		t.Run(be.name, func(t *testing.T) {
			st := openStore(t, be.url(t))
			var mu sync.Mutex
			running, most := map[string]int{}, map[string]int{}
			together := 0
			d := dag.New("bykeys")
			k := dag.NewCallable(d, "sync_user", func(c *dag.Context, a args) (int, error) {
				mu.Lock()
				running[a.User]++
				most[a.User] = max(most[a.User], running[a.User])
				if running["u"] > 0 && running["v"] > 0 {
					together++
				}
				mu.Unlock()
				time.Sleep(30 * time.Millisecond)
				mu.Lock()
				running[a.User]--
				mu.Unlock()
				return a.N, nil
			}, dag.ConcurrencyByKeys(1, "user"))
			var missing error
			d.Func("a", func(c *dag.Context) error {
				var ins []args
				for n := range 4 {
					ins = append(ins, args{"u", n}, args{"v", n})
				}
				for _, f := range k.Map(c, ins) {
					if _, err := f.Result(c); err != nil {
						return err
					}
				}
				_, missing = k.Call(c, args{N: 9}).Result(c)
				return nil
			})
			reg := dag.NewRegistry()
			reg.Register(d)
			syncDAGs(t, st, d)
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Slots = 8 })
			newTestWorker(t, st, reg, func(c *WorkerConfig) { c.Slots = 8; c.ID = "w2" })
			startRun(t, st, d, "r1", nil)
			run := waitRun(t, st, d.ID(), "r1", 30*time.Second)
			if run.State != state.RunSuccess {
				t.Fatalf("run %s: %s", run.State, describeTasks(t, st, d.ID(), "r1"))
			}
			mu.Lock()
			defer mu.Unlock()
			if most["u"] != 1 || most["v"] != 1 {
				t.Errorf("most calls of one user at once: %v, want 1 each", most)
			}
			if together == 0 {
				t.Errorf("the calls of u and v never ran together")
			}
			if missing == nil || !strings.Contains(missing.Error(), `the arguments have no field "user"`) {
				t.Errorf("call without the field: %v, want an error naming it", missing)
			}
		})
	}
}
