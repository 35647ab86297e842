//go:build linux

package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

// Timing of TestMultiHost.
const (
	// mhCut is how long worker host B's link stays down. It is kept well
	// below mhZombieThreshold on purpose: a worker cut off for longer than
	// the threshold cannot be told from a dead one, so its tries are taken
	// away and run again (at-least-once), which is the designed behaviour
	// but not the exactly-once outcome this test asserts. After the link
	// returns, TCP retransmission backs off, so B may need a few more
	// seconds to reach the database: 6 s + ~6 s stays well below 20 s.
	mhCut = 6 * time.Second
	// mhZombieThreshold is given to both schedulers explicitly (rather
	// than relying on the 60 s default) so the margin above is visible
	// here; workers heartbeat every second.
	mhZombieThreshold = 20 * time.Second
	// mhSleep is what every task sleeps: 5,000 tasks on 32 slots take
	// ~30 s, long enough to cut a link and crash a host mid-run.
	mhSleep = 200 * time.Millisecond
	// mhTasks is the size of the DAG of e2e/internal/multihostbin (100
	// chains of 50 tasks); the last task of each chain fails its first try.
	mhTasks, mhChainLength = 5000, 50
)

// TestMultiHost runs Trellis on four hosts made of network namespaces,
// sharing one PostgreSQL that listens on the lab's bridge: a scheduler and
// the API on host A, a worker pool on each of B and C. It runs a
// 5,000-task DAG, cuts B's link for a few seconds mid-run and restores it,
// then kills every process of host A and starts a scheduler and the API
// on host D. Every task must succeed exactly once: one success in the
// store with the expected try number, one line in the side-effect file.
func TestMultiHost(t *testing.T) {
	l := newLab(t, "a", "b", "c", "d")
	bin, err := buildCommand("multihostbin", "github.com/trellis-dag/trellis/e2e/internal/multihostbin")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cl, err := testdb.StartCluster(ctx, testdb.ClusterOptions{
		Listen:    l.hubAddr(),
		TrustNets: []string{labNet + ".0/24"},
		Start:     func(start func() error) error { return inNetns(l.hub, start) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cl.Stop(); err != nil {
			t.Error(err)
		}
	})
	// The test watches the database over the server's Unix socket; the
	// hosts reach it over the lab's network only.
	st, err := dial.Open(ctx, cl.URL, dial.Options{Migrate: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })

	const token = "multihost-e2e-token"
	effects := filepath.Join(t.TempDir(), "effects.log")
	dbAddr := net.JoinHostPort(l.hubAddr(), strconv.Itoa(cl.Port))
	env := []string{"TRELLIS_DATABASE_URL=" + cl.TCPURL(l.hubAddr()), "TRELLIS_API_TOKEN=" + token}
	start := func(host string, args ...string) *proc {
		t.Helper()
		p := launchCmd(t, l.command(host, append([]string{bin}, args...)...), env)
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("start %s on host %s: %v", strings.Join(args, " "), host, err)
		}
		p.wait()
		return p
	}
	startControl := func(host string) *client {
		t.Helper()
		start(host, "scheduler", "--zombie-threshold", mhZombieThreshold.String(), "--zombie-check-interval", "1s")
		api := startServing(t, launchCmd(t, l.command(host, bin, "api", "--addr", l.host(host).addr+":8080"), env))
		c := newClient(t, api.url, token)
		c.http = l.httpClient()
		return c
	}

	apiA := startControl("a")
	for _, h := range []string{"b", "c"} {
		start(h, "worker", "--processes", "2", "--slots", "8", "--hostname", "host-"+h, "--heartbeat-interval", "1s")
	}
	eventually(t, 90*time.Second, "the scheduler records the DAG and both worker hosts register", func() (bool, string) {
		if _, err := st.GetDAG(ctx, "multihost"); err != nil {
			return false, err.Error()
		}
		ws, err := st.ListWorkers(ctx)
		if err != nil {
			return false, err.Error()
		}
		hosts := map[string]bool{}
		for _, w := range ws {
			hosts[w.Hostname] = true
		}
		return hosts["host-b"] && hosts["host-c"], fmt.Sprintf("workers on %v", hosts)
	})

	began := time.Now()
	apiA.ok(http.StatusOK, http.MethodPost, "/api/v1/dags/multihost/dagRuns", map[string]any{
		"dag_run_id": "multihost",
		"conf":       map[string]any{"effects": effects, "sleep": mhSleep.String()},
	})
	p := &mhProgress{t: t, st: st}

	// Cut B while it runs tasks, with a fifth of the run done.
	p.waitFor(60*time.Second, "a fifth of the tasks succeed while host B runs some", func(s mhSnapshot) bool {
		return s.success >= mhTasks/5 && s.running["host-b"] > 0
	})
	before := p.snapshot()
	t.Logf("%v: cutting host B's link (%s)", time.Since(began).Round(time.Millisecond), before)
	l.cut("b")
	cutAt := time.Now()
	if err := l.dial("b", dbAddr, time.Second); err == nil {
		t.Fatalf("host B reaches the database at %s with its link down", dbAddr)
	}
	time.Sleep(time.Until(cutAt.Add(mhCut)))
	during := p.snapshot()
	l.restore("b")
	restoredAt := time.Now()
	t.Logf("%v: host B's link restored (%s)", time.Since(began).Round(time.Millisecond), during)
	// The chains are independent, so nothing host C needs is locked by
	// the transactions B left open when its link went down.
	if during.byHost["host-c"] <= before.byHost["host-c"] {
		t.Errorf("host C finished no task while B was cut off (%d successes before, %d after)", before.byHost["host-c"], during.byHost["host-c"])
	}
	p.waitFor(60*time.Second, "host B finishes tasks again and half the tasks succeed", func(s mhSnapshot) bool {
		return s.byHost["host-b"] > during.byHost["host-b"]+50 && s.success >= mhTasks/2
	})

	// Host A dies with the scheduler and the API; the run goes on, since
	// finishing a task queues the next, until the chains' last tasks fail
	// their first tries: their retries wait for a scheduler.
	if r, err := st.GetRun(ctx, "multihost", "multihost"); err != nil || r.State != state.RunRunning {
		t.Fatalf("run before host A's crash: %+v, %v; want running", r, err)
	}
	l.crash("a")
	t.Logf("%v: host A crashed (%s)", time.Since(began).Round(time.Millisecond), p.snapshot())
	p.waitFor(90*time.Second, "a retry falls due with no scheduler alive", func(s mhSnapshot) bool {
		return s.overdueRetries > 0
	})
	t.Logf("%v: starting a scheduler and the API on host D (%s)", time.Since(began).Round(time.Millisecond), p.snapshot())
	apiD := startControl("d")

	eventually(t, 120*time.Second, "the run succeeds", func() (bool, string) {
		r := apiD.ok(http.StatusOK, http.MethodGet, "/api/v1/dags/multihost/dagRuns/multihost", nil)
		return r["state"] == "success", fmt.Sprintf("run %v; tasks: %s", r["state"], p.snapshot())
	})
	t.Logf("%v: run succeeded", time.Since(began).Round(time.Millisecond))

	// Every task succeeded once in the store: one try, two for the chains'
	// last tasks, which failed the first on purpose; on B or C.
	tis, _, err := st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{"multihost"}, Limit: 2 * mhTasks})
	if err != nil {
		t.Fatal(err)
	}
	if len(tis) != mhTasks {
		t.Fatalf("%d task instances, want %d", len(tis), mhTasks)
	}
	want := map[string]int{} // task id -> try number
	hosts := map[string]int{}
	bad, endedCutOff := 0, 0
	for _, ti := range tis {
		// B's tries that ended while it was cut off had their results
		// recorded once it was back.
		if ti.Hostname == "host-b" && ti.EndedAt != nil && ti.EndedAt.After(cutAt) && ti.EndedAt.Before(restoredAt) {
			endedCutOff++
		}
		try := 1
		if strings.HasSuffix(ti.TaskID, fmt.Sprintf("_t%02d", mhChainLength-1)) {
			try = 2
		}
		want[ti.TaskID] = try
		hosts[ti.Hostname]++
		if (ti.State != state.Success || ti.TryNumber != try) && bad < 20 {
			bad++
			t.Errorf("task %s: %s after %d tries on %q, want success after %d (error %q)", ti.TaskID, ti.State, ti.TryNumber, ti.Hostname, try, ti.Error)
		}
	}
	if len(hosts) != 2 || hosts["host-b"] == 0 || hosts["host-c"] == 0 {
		t.Errorf("tasks ran on %v, want hosts host-b and host-c", hosts)
	}
	t.Logf("tasks per host: %v; tries of host B that ended while it was cut off: %d", hosts, endedCutOff)
	if endedCutOff == 0 {
		t.Errorf("no try of host B ended while it was cut off: the cut did not catch B at work")
	}

	// Every task's side effect happened once, by the try that succeeded.
	f, err := os.Open(effects)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]int{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		task, tryText, ok := strings.Cut(sc.Text(), " ")
		try, err := strconv.Atoi(tryText)
		if !ok || err != nil {
			t.Fatalf("side-effect file: bad line %q", sc.Text())
		}
		seen[task]++
		if w, ok := want[task]; !ok || w != try {
			t.Errorf("side effect of task %s try %d; want one of try %d", task, try, w)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	dups, missing := 0, 0
	for task := range want {
		switch n := seen[task]; {
		case n == 0:
			missing++
		case n > 1:
			dups++
			if dups <= 20 {
				t.Errorf("task %s ran its side effect %d times", task, n)
			}
		}
	}
	if dups > 0 || missing > 0 {
		t.Errorf("side effects: %d tasks ran twice or more, %d never ran, of %d", dups, missing, mhTasks)
	}
}

// mhProgress watches the multihost run in the store.
type mhProgress struct {
	t  *testing.T
	st store.Store
}

// mhSnapshot counts the run's task instances.
type mhSnapshot struct {
	success        int
	byHost         map[string]int // successes per host
	running        map[string]int // running per host
	overdueRetries int            // up for retry with the retry time 2 s past
	states         map[state.TaskState]int
}

func (s mhSnapshot) String() string {
	return fmt.Sprintf("states %v, successes per host %v", s.states, s.byHost)
}

func (p *mhProgress) snapshot() mhSnapshot {
	p.t.Helper()
	tis, _, err := p.st.ListTaskInstances(context.Background(), store.TaskQuery{DAGIDs: []string{"multihost"}, Limit: 2 * mhTasks})
	if err != nil {
		p.t.Fatalf("list task instances: %v", err)
	}
	s := mhSnapshot{byHost: map[string]int{}, running: map[string]int{}, states: map[state.TaskState]int{}}
	now := time.Now()
	for _, ti := range tis {
		s.states[ti.State]++
		switch ti.State {
		case state.Success:
			s.success++
			s.byHost[ti.Hostname]++
		case state.Running:
			s.running[ti.Hostname]++
		case state.UpForRetry:
			if ti.NextRetryAt != nil && now.Sub(*ti.NextRetryAt) > 2*time.Second {
				s.overdueRetries++
			}
		}
	}
	return s
}

// waitFor polls the run until cond holds, failing the test after timeout.
func (p *mhProgress) waitFor(timeout time.Duration, what string, cond func(mhSnapshot) bool) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := p.snapshot()
		if cond(s) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s: not after %v (%s)", what, timeout, s)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
