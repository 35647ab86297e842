//go:build linux

package executor

import (
	"os"
	"os/exec"
	"slices"
	"testing"
)

// TestChildrenFromTasks: the kernel's per-thread lists of children give
// the same processes as reading every process's stat (this kernel keeps
// the lists), and childrenOf uses them.
func TestChildrenFromTasks(t *testing.T) {
	var want []int
	for range 3 {
		cmd := exec.Command("sleep", "30")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		want = append(want, cmd.Process.Pid)
	}
	pids := func(ps []procInfo) []int {
		var out []int
		for _, p := range ps {
			out = append(out, p.PID)
		}
		slices.Sort(out)
		return out
	}
	scanned, err := childrenByScan(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	listed, ok := childrenFromTasks(os.Getpid())
	if !ok {
		t.Skip("this kernel keeps no lists of children (CONFIG_PROC_CHILDREN)")
	}
	if !slices.Equal(pids(listed), pids(scanned)) {
		t.Fatalf("children from the task lists %v, from a scan %v", pids(listed), pids(scanned))
	}
	got, err := childrenOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, pid := range want {
		if !slices.Contains(pids(got), pid) {
			t.Errorf("childrenOf misses child %d (got %v)", pid, pids(got))
		}
	}
	if _, ok := childrenFromTasks(1 << 30); ok {
		t.Error("childrenFromTasks of a process that does not exist said ok")
	}
}

// BenchmarkChildrenOf: one listing of this process's children from the
// kernel's per-thread lists and by reading every process's stat (what
// the pool's reaper does every ReapInterval).
func BenchmarkChildrenOf(b *testing.B) {
	b.Run("tasks", func(b *testing.B) {
		for b.Loop() {
			if _, ok := childrenFromTasks(os.Getpid()); !ok {
				b.Skip("no lists of children")
			}
		}
	})
	b.Run("scan", func(b *testing.B) {
		for b.Loop() {
			if _, err := childrenByScan(os.Getpid()); err != nil {
				b.Fatal(err)
			}
		}
	})
}
