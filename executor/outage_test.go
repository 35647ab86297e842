package executor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// outageDAG is n Func tasks that wait for release, counting their runs.
func outageDAG(id string, n int, started *sync.WaitGroup, release <-chan struct{}, runs *atomic.Int64) *dag.DAG {
	d := dag.New(id)
	for i := range n {
		d.Func(fmt.Sprintf("t%02d", i), func(*dag.Context) error {
			runs.Add(1)
			started.Done()
			<-release
			return nil
		})
	}
	return d
}

// assertSucceededOnce checks every task of the run succeeded on its first
// try.
func assertSucceededOnce(t *testing.T, st store.Store, dagID, runID string, n int) {
	t.Helper()
	tis := tasksOf(t, st, dagID, runID)
	if len(tis) != n {
		t.Fatalf("run %s has %d task instances, want %d", runID, len(tis), n)
	}
	for id, ti := range tis {
		if ti.State != state.Success || ti.TryNumber != 1 {
			t.Errorf("%s/%s: %s on try %d (%q), want success on try 1", runID, id, ti.State, ti.TryNumber, ti.Error)
		}
	}
}

// TestPostgresOutageLosesNoResult: tries that finish while PostgreSQL is
// unreachable are recorded once it returns — by the worker that ran them
// when it is still running, from the spool by the next worker when it had
// to stop meanwhile — each on its first try.
func TestPostgresOutageLosesNoResult(t *testing.T) {
	direct := testdb.Postgres(t)
	proxy := testdb.ProxyTo(t, direct)
	real := openStore(t, direct)
	viaProxy := openStore(t, proxy.ProxiedURL(t, direct))
	spool := t.TempDir()
	const n = 8

	t.Run("worker keeps its results across the outage", func(t *testing.T) {
		var started sync.WaitGroup
		started.Add(n)
		release := make(chan struct{})
		var runs atomic.Int64
		d := outageDAG("outage1", n, &started, release, &runs)
		reg := dag.NewRegistry()
		reg.Register(d)
		syncDAGs(t, real, d)
		w := newTestWorker(t, viaProxy, reg, func(c *WorkerConfig) {
			c.Slots, c.SpoolDir, c.StoreTimeout = n, spool, 2*time.Second
		})
		startRun(t, real, d, "r1", nil)
		started.Wait()
		proxy.Cut()
		close(release)
		// Longer than the old finisher's whole retry budget (~1.3 s).
		time.Sleep(4 * time.Second)
		if run, _ := real.GetRun(context.Background(), "outage1", "r1"); run.State.Terminal() {
			t.Fatalf("run %s during the outage", run.State)
		}
		proxy.Restore()
		if run := waitRun(t, real, "outage1", "r1", 30*time.Second); run.State != state.RunSuccess {
			t.Fatalf("run = %s after the outage, want success", run.State)
		}
		assertSucceededOnce(t, real, "outage1", "r1", n)
		if got := runs.Load(); got != n {
			t.Errorf("tasks ran %d times, want %d", got, n)
		}
		w.Stop()
	})

	t.Run("a stopping worker spools and the next one delivers", func(t *testing.T) {
		var started sync.WaitGroup
		started.Add(n)
		release := make(chan struct{})
		var runs atomic.Int64
		d := outageDAG("outage2", n, &started, release, &runs)
		reg := dag.NewRegistry()
		reg.Register(d)
		syncDAGs(t, real, d)
		tweak := func(c *WorkerConfig) { c.Slots, c.SpoolDir, c.StoreTimeout = n, spool, time.Second }
		w := newTestWorker(t, viaProxy, reg, tweak)
		startRun(t, real, d, "r1", nil)
		started.Wait()
		proxy.Cut()
		close(release)
		waitCond(t, 10*time.Second, "the tries to return", func() bool { return w.Running() == 0 })
		w.Stop()
		files, _ := filepath.Glob(filepath.Join(spool, "*"+spoolExt))
		if len(files) != 1 {
			t.Fatalf("spool files %v, want the stopped worker's", files)
		}
		if b, err := os.ReadFile(files[0]); err != nil || len(b) == 0 {
			t.Fatalf("spool file %s: %d bytes, %v", files[0], len(b), err)
		}
		proxy.Restore()
		newTestWorker(t, viaProxy, reg, tweak)
		if run := waitRun(t, real, "outage2", "r1", 30*time.Second); run.State != state.RunSuccess {
			t.Fatalf("run = %s after the next start, want success", run.State)
		}
		assertSucceededOnce(t, real, "outage2", "r1", n)
		if got := runs.Load(); got != n {
			t.Errorf("tasks ran %d times, want %d", got, n)
		}
		if left, _ := filepath.Glob(filepath.Join(spool, "*")); len(left) != 0 {
			t.Errorf("spool folder holds %v after delivery, want nothing", left)
		}
	})
}

// tinyDisk mounts a tmpfs of size bytes for the test (root only, Linux).
func tinyDisk(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs to fill needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		t.Skipf("cannot mount a tmpfs (%v); this test needs a kernel and privileges that allow it", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fillDisk writes a file into dir until the file system is full and
// returns a function that frees the space again.
func fillDisk(t *testing.T, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("create filler: %v", err)
	}
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	_ = f.Close()
	return func() {
		if err := os.Remove(path); err != nil {
			t.Fatalf("remove filler: %v", err)
		}
	}
}

// TestSQLiteDiskFullLosesNoResult: tries that finish while the SQLite
// file's disk is full are recorded once space is freed, each on its first
// try; the store reports the full disk as store.ErrUnavailable.
func TestSQLiteDiskFullLosesNoResult(t *testing.T) {
	disk := tinyDisk(t, 8<<20)
	st := openStore(t, "sqlite:"+filepath.Join(disk, "trellis.db"))
	const n = 8
	var started sync.WaitGroup
	started.Add(n)
	release := make(chan struct{})
	var runs atomic.Int64
	d := outageDAG("diskfull", n, &started, release, &runs)
	reg := dag.NewRegistry()
	reg.Register(d)
	syncDAGs(t, st, d)
	newTestWorker(t, st, reg, func(c *WorkerConfig) {
		c.Slots, c.SpoolDir, c.StoreTimeout = n, t.TempDir(), 2*time.Second
	})
	run := startRun(t, st, d, "r1", nil)
	started.Wait()
	free := fillDisk(t, disk)
	tis := tasksOf(t, st, "diskfull", "r1")
	err := st.AppendLog(context.Background(), store.Try{ID: tis["t00"].ID, TryNumber: 1}, make([]byte, 1<<20))
	if !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("AppendLog on a full disk = %v, want store.ErrUnavailable", err)
	}
	close(release)
	time.Sleep(3 * time.Second)
	if r, _ := st.GetRun(context.Background(), "diskfull", "r1"); r.State.Terminal() {
		t.Fatalf("run %s while the disk is full", r.State)
	}
	free()
	if r := waitRun(t, st, "diskfull", run.RunID, 30*time.Second); r.State != state.RunSuccess {
		t.Fatalf("run = %s after space was freed, want success", r.State)
	}
	assertSucceededOnce(t, st, "diskfull", "r1", n)
	if got := runs.Load(); got != n {
		t.Errorf("tasks ran %d times, want %d", got, n)
	}
}
