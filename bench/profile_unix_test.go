//go:build unix

package bench

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestMemoryNote(t *testing.T) {
	ms := &runtime.MemStats{Sys: 100 << 20, HeapReleased: 30 << 20, HeapAlloc: 40 << 20, HeapIdle: 35 << 20}
	got := memoryNote(Memory{RSS: 90 << 20, PSS: 80 << 20}, ms)
	for _, want := range []string{
		"rss 94371840\n", "pss 83886080\n",
		"go_held 73400320\n",                // 100 - 30 MiB
		"go_heap_idle_unreleased 5242880\n", // 35 - 30 MiB
		"not_go 20971520\n",                 // 90 - 70 MiB
	} {
		if !strings.Contains(got, want) {
			t.Errorf("memoryNote = %q, want a line %q", got, want)
		}
	}
}

func TestWriteHeapProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "serve-1.pprof")
	if err := writeHeapProfile(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		t.Errorf("heap profile: %v (size %d), want a non-empty file", err, sizeOf(fi))
	}
	note, err := os.ReadFile(strings.TrimSuffix(path, ".pprof") + ".txt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(note), "rss ") || !strings.Contains(string(note), "\nnot_go ") {
		t.Errorf("memory note %q lacks rss or not_go", note)
	}
}
