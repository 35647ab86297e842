package testdags

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// DAGs of the concurrency limit tests. Each try of their tasks records
// when its function started (LimitStartName) and, when it returns, when
// it started and ended (LimitEndName), in Unix nanoseconds: the function
// runs within its try's claim and finish, so the recorded intervals of
// tries whose claims respected a limit respect it too.
const (
	// LimitPool is LimitPoolTasks independent tasks in pool LimitPoolName.
	LimitPool = "lim_pool"
	// LimitCap is one task with MaxActive(LimitCapMax), for many runs.
	LimitCap = "lim_cap"
	// LimitKeys is LimitKeyTasks tasks under the concurrency key
	// "cust:{{.Params.customer}}" with limit 1.
	LimitKeys = "lim_keys"
	// LimitHot is LimitHotTasks tasks under the key "hot" with limit 1 and
	// priority 10.
	LimitHot = "lim_hot"
	// LimitCold is LimitColdTasks tasks, each under a key of its own
	// ("cold:" + task id) with limit 1.
	LimitCold = "lim_cold"
	// LimitGrow is LimitGrowTasks tasks in pool LimitGrowPool.
	LimitGrow = "lim_grow"
)

// Sizes and names of the limit DAGs.
const (
	LimitPoolName  = "lim3"
	LimitPoolTasks = 200
	LimitCapMax    = 2
	LimitKeyTasks  = 8
	LimitHotTasks  = 4
	LimitColdTasks = 8
	LimitGrowPool  = "grow"
	LimitGrowTasks = 6
)

// LimitStartName and LimitEndName are the trace files of one try of a
// limit DAG's task.
func LimitStartName(dagID, runID, taskID string, try int) string {
	return fmt.Sprintf("lim.%s.%s.%s.%d.start", dagID, runID, taskID, try)
}

// LimitEndName: see LimitStartName.
func LimitEndName(dagID, runID, taskID string, try int) string {
	return fmt.Sprintf("lim.%s.%s.%s.%d.end", dagID, runID, taskID, try)
}

// ParseLimitName splits a trace file name of a limit DAG's try; ok is
// false for other files. Run and task ids of the limit DAGs hold no dot.
func ParseLimitName(name string) (dagID, runID, taskID string, try int, end bool, ok bool) {
	parts := strings.Split(name, ".")
	if len(parts) != 6 || parts[0] != "lim" || (parts[5] != "start" && parts[5] != "end") {
		return "", "", "", 0, false, false
	}
	try, err := strconv.Atoi(parts[4])
	if err != nil {
		return "", "", "", 0, false, false
	}
	return parts[1], parts[2], parts[3], try, parts[5] == "end", true
}

// limitTask records its try's start, works 5-25 ms — or, while the run's
// conf has "hold": true and ReleaseName does not exist, until it does —
// and records its start and end.
func limitTask(c *dag.Context) error {
	start := time.Now()
	if err := write(LimitStartName(c.DAGID(), c.RunID(), c.TaskID(), c.TryNumber()), strconv.FormatInt(start.UnixNano(), 10)); err != nil {
		return err
	}
	work := time.After(time.Duration(5+rand.IntN(20)) * time.Millisecond)
	if hold, _ := c.Params()["hold"].(bool); hold {
		for {
			if _, err := os.Stat(filepath.Join(Dir(), ReleaseName)); err == nil {
				break
			}
			select {
			case <-c.Done():
				return c.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	select {
	case <-work:
	case <-c.Done():
		return c.Err()
	}
	return write(LimitEndName(c.DAGID(), c.RunID(), c.TaskID(), c.TryNumber()),
		fmt.Sprintf("%d %d", start.UnixNano(), time.Now().UnixNano()))
}

func limitDAGs() []*dag.DAG {
	pool := newDAG(LimitPool)
	for i := range LimitPoolTasks {
		pool.Func(fmt.Sprintf("p%03d", i), limitTask, dag.Pool(LimitPoolName))
	}
	capped := newDAG(LimitCap, dag.MaxActiveRuns(64))
	capped.Func("capped", limitTask, dag.MaxActive(LimitCapMax))
	keys := newDAG(LimitKeys, dag.Params(map[string]any{"customer": "nobody"}))
	for i := range LimitKeyTasks {
		keys.Func(fmt.Sprintf("k%02d", i), limitTask, dag.ConcurrencyKey("cust:{{.Params.customer}}", 1))
	}
	hot := newDAG(LimitHot)
	for i := range LimitHotTasks {
		hot.Func(fmt.Sprintf("h%02d", i), limitTask, dag.ConcurrencyKey("hot", 1), dag.Priority(10))
	}
	cold := newDAG(LimitCold)
	for i := range LimitColdTasks {
		cold.Func(fmt.Sprintf("c%02d", i), limitTask, dag.ConcurrencyKey("cold:{{.TaskID}}", 1))
	}
	grow := newDAG(LimitGrow)
	for i := range LimitGrowTasks {
		grow.Func(fmt.Sprintf("g%02d", i), limitTask, dag.Pool(LimitGrowPool))
	}
	return []*dag.DAG{pool, capped, keys, hot, cold, grow}
}
