package storetest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

const readyLine = "TRELLIS_STORETEST_CHILD_READY"

// testClaimProcesses: 8 goroutines in this process and 8 in a second
// process (this test binary run again) claim from the same queue at the
// same time; no instance is handed out twice and none is missed.
func testClaimProcesses(t *testing.T, e *env) {
	url, ok := testdb.URL(t)
	if !ok {
		t.Fatalf("open did not create its database with internal/testdb; the second process cannot find it")
	}
	const n = 3000
	var tasks []store.TaskSpec
	for _, id := range names(n, "t") {
		tasks = append(tasks, tk(id))
	}
	e.started(newSpec("mp", tasks...), "r")

	outFile := filepath.Join(t.TempDir(), "child-claims.json")
	cmd := exec.CommandContext(e.ctx, os.Args[0], "-test.run="+runPattern(t.Name()), "-test.count=1")
	cmd.Env = append(os.Environ(), testdb.EnvChildURL+"="+url, envChild+"=claim", envOut+"="+outFile)
	stdin, err := cmd.StdinPipe()
	must(t, "child stdin", err)
	stdout, err := cmd.StdoutPipe()
	must(t, "child stdout", err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	must(t, "start child", cmd.Start())
	var childOut strings.Builder
	ready := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sent := false
		for sc.Scan() {
			childOut.WriteString(sc.Text() + "\n")
			if !sent && sc.Text() == readyLine {
				ready <- true
				sent = true
			}
		}
		if !sent {
			ready <- false
		}
	}()
	if !<-ready {
		_ = cmd.Wait()
		t.Fatalf("child did not get ready:\n%s\n%s", childOut.String(), stderr.String())
	}
	// Go: both processes claim at once.
	_, _ = io.WriteString(stdin, "go\n")
	_ = stdin.Close()
	mine := claimConcurrently(t, e.s, 8, 5, store.Worker{ID: "parent", Hostname: "p", PID: os.Getpid()})
	if err := cmd.Wait(); err != nil {
		t.Fatalf("child failed: %v\n%s\n%s", err, childOut.String(), stderr.String())
	}
	b, err := os.ReadFile(outFile)
	must(t, "read child claims", err)
	var theirs []int64
	must(t, "parse child claims", json.Unmarshal(b, &theirs))
	if len(mine) == 0 || len(theirs) == 0 {
		t.Errorf("claims: %d here, %d in the child; want both processes to claim", len(mine), len(theirs))
	}
	checkClaims(t, append(mine, theirs...), n)
	tis, total, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{States: []state.TaskState{state.Running}})
	must(t, "ListTaskInstances", err)
	if total != n {
		t.Errorf("%d running instances, want %d", total, n)
	}
	for _, ti := range tis {
		if ti.TryNumber != 1 {
			t.Errorf("instance %s has try %d, want 1", ti.TaskID, ti.TryNumber)
		}
	}
}

// runPattern is a -test.run pattern matching exactly the test name.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// runChild is the second process of testClaimProcesses.
func runChild(t *testing.T, role string, open func(t *testing.T) store.Store) {
	if role != "claim" {
		t.Fatalf("unknown %s role %q", envChild, role)
	}
	// Only the test that started us runs here (-test.run); its name is the
	// one that matches.
	t.Run("ClaimAcrossProcesses", func(t *testing.T) {
		s := open(t)
		fmt.Println(readyLine)
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != "go" {
			t.Fatalf("child: no go signal: %q %v", line, err)
		}
		ids := claimConcurrently(t, s, 8, 5, store.Worker{ID: "child", Hostname: "c", PID: os.Getpid()})
		b, err := json.Marshal(ids)
		must(t, "marshal", err)
		must(t, "write claims", os.WriteFile(os.Getenv(envOut), b, 0o600))
	})
}

// testAtomic: a finish that fails at any point inside its transaction
// leaves nothing of itself behind; retried, it applies completely.
func testAtomic(t *testing.T, e *env) {
	fi, ok := e.s.(FaultInjector)
	if !ok {
		t.Fatalf("%T does not implement storetest.FaultInjector", e.s)
	}
	const n = 150
	var tasks []store.TaskSpec
	roots, mids := names(n, "r"), names(n, "m")
	for i := range n {
		tasks = append(tasks, tk(roots[i]), tk(mids[i], up(roots[i])))
	}
	tasks = append(tasks, tk("join", up(mids...)))
	sp := newSpec("atom", tasks...)
	e.started(sp, "run")

	snapshot := func() (store.Run, []store.TaskInstance) {
		tis, _, err := e.s.ListTaskInstances(e.ctx, store.TaskQuery{DAGIDs: []string{"atom"}, OrderBy: "id"})
		must(t, "ListTaskInstances", err)
		return e.run("atom", "run"), tis
	}
	// finishAll fails at each point in turn, checking nothing changed, and
	// then succeeds.
	finishAll := func(cs []store.Claimed) {
		t.Helper()
		rs := make([]store.Result, len(cs))
		for i, c := range cs {
			rs[i] = result(c, state.Success)
			rs[i].Output = json.RawMessage(fmt.Sprintf(`{"i": %d}`, i))
		}
		runBefore, tisBefore := snapshot()
		for i, point := range []string{FaultFinishRecorded, FaultFinishReleased, FaultFinishSettled,
			FaultFinishRecorded, FaultFinishReleased, FaultFinishSettled} {
			// The second round finishes and claims in one transaction:
			// neither the finish nor the claim may stay.
			withClaim := i >= 3
			hit := false
			fi.SetFaultHook(func(p string) error {
				if p == point {
					hit = true
					return fmt.Errorf("fault injected by storetest")
				}
				return nil
			})
			var err error
			if withClaim {
				_, _, err = e.s.FinishAndClaim(e.ctx, rs, e.w, 1000, t0.Add(2*time.Minute))
			} else {
				_, err = e.s.FinishTasks(e.ctx, rs)
			}
			fi.SetFaultHook(nil)
			if !hit {
				t.Fatalf("finish (with claim %v) never reached fault point %s", withClaim, point)
			}
			if err == nil {
				t.Fatalf("finish (with claim %v) succeeded although it failed at %s", withClaim, point)
			}
			runAfter, tisAfter := snapshot()
			if !reflect.DeepEqual(runBefore, runAfter) {
				t.Errorf("failure at %s changed the run: %+v → %+v", point, runBefore, runAfter)
			}
			if !reflect.DeepEqual(tisBefore, tisAfter) {
				for i := range tisBefore {
					if i < len(tisAfter) && !reflect.DeepEqual(tisBefore[i], tisAfter[i]) {
						t.Errorf("failure at %s changed %s: %+v → %+v", point, tisBefore[i].TaskID, tisBefore[i], tisAfter[i])
						break
					}
				}
				t.Fatalf("failure at %s (with claim %v) left partial changes", point, withClaim)
			}
		}
		for i, o := range e.finish(rs...) {
			if !o.Applied {
				t.Fatalf("retried finish of %s not applied", cs[i].TaskID)
			}
		}
	}
	cs := e.claim(1000)
	if len(cs) != n {
		t.Fatalf("claimed %d roots, want %d", len(cs), n)
	}
	finishAll(cs) // releases every mid
	cs = e.claim(1000)
	if len(cs) != n {
		t.Fatalf("claimed %d mids, want %d", len(cs), n)
	}
	finishAll(cs) // releases the join
	j := e.claimOne("join")
	finishAll([]store.Claimed{j}) // ends the run
	r := e.wantRunState("atom", "run", state.RunSuccess)
	if r.EndedAt == nil || !r.EndedAt.Equal(t0.Add(3*time.Minute)) {
		t.Errorf("run end %v", r.EndedAt)
	}
}
