package bench

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
)

func TestParseProcFiles(t *testing.T) {
	for _, tc := range []struct {
		stat string
		ppid int
	}{
		{"123 (trellis) S 45 123 123 0 -1", 45},
		{"123 (a (weird) name) R 7 1 1", 7},
		{"9 (x y) S 1", 1},
	} {
		got, err := parentPID([]byte(tc.stat))
		if err != nil || got != tc.ppid {
			t.Errorf("parentPID(%q) = %d, %v; want %d", tc.stat, got, err, tc.ppid)
		}
	}
	for _, bad := range []string{"123 trellis S 45", "1 (x) S", "1 (x) S notanumber"} {
		if _, err := parentPID([]byte(bad)); err == nil {
			t.Errorf("parentPID(%q) accepted", bad)
		}
	}
	rollup := "55-7f ---p 00000000 00:00 0  [rollup]\nRss:                1772 kB\nPss:                 227 kB\nPss_Anon:  116 kB\n"
	if m, err := parseRollup([]byte(rollup)); err != nil || m.RSS != 1772<<10 || m.PSS != 227<<10 {
		t.Errorf("parseRollup = %+v, %v; want RSS 1772 KiB, PSS 227 KiB", m, err)
	}
	if _, err := parseRollup([]byte("Rss: 12 kB\n")); err == nil {
		t.Error("parseRollup accepted a rollup without Pss")
	}
	if n, err := residentPages([]byte("5000 1234 200 10 0 900 0\n")); err != nil || n != 1234 {
		t.Errorf("residentPages = %d, %v; want 1234", n, err)
	}
	if _, err := residentPages([]byte("5000")); err == nil {
		t.Error("residentPages accepted one field")
	}
}

// TestTreeMemoryCountsChildren starts a child process and checks that
// the tree's memory includes it.
func TestTreeMemoryCountsChildren(t *testing.T) {
	self, err := TreeMemory(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	alone := self.RSS
	if alone < 1<<20 || self.PSS == 0 || self.PSS > self.RSS {
		t.Fatalf("TreeMemory of this process = %+v, implausible", self)
	}
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = child.Process.Kill(); _ = child.Wait() }()
	m, err := TreeMemory(child.Process.Pid)
	own := m.RSS
	if err != nil || own == 0 {
		t.Fatalf("TreeMemory(child) = %+v, %v", m, err)
	}
	s := NewSampler(os.Getpid(), rssInterval)
	s.Start()
	s.Stop()
	peakMem, ok := s.Peak()
	peak := peakMem.RSS
	if !ok || peak < alone/2+own {
		t.Errorf("sampler peak %d (ok %v) with a child of %d bytes; this process alone had %d", peak, ok, own, alone)
	}
	if _, err := TreeMemory(1 << 30); err == nil {
		t.Error("TreeMemory of a process that does not exist succeeded")
	}
}

// TestTreeFindsGrandchildren checks that both ways of walking the tree
// find a grandchild (a shell's child).
func TestTreeFindsGrandchildren(t *testing.T) {
	sh := exec.Command("sh", "-c", "sleep 30 & echo $!; wait")
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sh.Process.Kill(); _ = sh.Wait() }()
	var grandchild int
	if _, err := fmt.Fscan(out, &grandchild); err != nil {
		t.Fatal(err)
	}
	for name, walk := range map[string]func(int) ([]int, error){"tree": tree, "treeByParents": treeByParents} {
		pids, err := walk(os.Getpid())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if pids[0] != os.Getpid() || !slices.Contains(pids, sh.Process.Pid) || !slices.Contains(pids, grandchild) {
			t.Errorf("%s = %v, want this process, the shell %d and its child %d", name, pids, sh.Process.Pid, grandchild)
		}
	}
}

// TestSamplerPause: Pause and Resume each take a sample, and between
// them the periodic samples are skipped (a CPU window leaves the
// sampler's reads out).
func TestSamplerPause(t *testing.T) {
	s := NewSampler(os.Getpid(), rssInterval) // not started: ticks by hand
	s.tick()
	if n := s.samples.Load(); n != 1 {
		t.Fatalf("a tick took %d samples, want 1", n)
	}
	s.Pause()
	s.tick()
	s.tick()
	if n := s.samples.Load(); n != 2 {
		t.Errorf("%d samples after Pause and two ticks, want 2 (Pause's own)", n)
	}
	s.Resume()
	s.tick()
	if n := s.samples.Load(); n != 4 {
		t.Errorf("%d samples after Resume and a tick, want 4", n)
	}
}
