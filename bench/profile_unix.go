//go:build unix

package bench

import (
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/trellis-dag/trellis/executor"
)

// HeapProfileOnSignal writes a heap profile of this process, after a
// garbage collection, on each SIGUSR1, as EnvHeapProfile asks (a worker
// process adds its pid to the name). It returns
// the function that stops listening for the signal and waits, or nil when
// no profile was asked for.
func HeapProfileOnSignal(lookupEnv func(string) (string, bool), logf func(string, ...any)) (stop func()) {
	base, ok := lookupEnv(EnvHeapProfile)
	if !ok || base == "" {
		return nil
	}
	if child, ok := lookupEnv(executor.EnvChild); ok && child != "" {
		base += "-" + strconv.Itoa(os.Getpid()) // one file per worker process
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for k := 1; ; k++ {
			select {
			case <-done:
				return
			case <-sig:
			}
			path := base + "-" + strconv.Itoa(k) + ".pprof"
			if err := writeHeapProfile(path); err != nil {
				logf("heap profile: %v", err)
			}
		}
	})
	return func() {
		signal.Stop(sig)
		close(done)
		wg.Wait()
	}
}

// writeHeapProfile writes the heap profile of this process to path, and
// beside it (path with .txt for .pprof) how its resident memory divides
// between the Go runtime and the rest (memoryNote).
func writeHeapProfile(path string) error {
	runtime.GC()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	m, err := ProcessMemory(os.Getpid())
	if err != nil {
		return err
	}
	return os.WriteFile(strings.TrimSuffix(path, ".pprof")+".txt", []byte(memoryNote(m, &ms)), 0o644)
}

// memoryNote tells how the resident memory m of a process divides: what
// the Go runtime holds from the OS (Sys less what it released), of it the
// live heap, and the rest, which is memory the runtime does not manage
// (the SQLite engine's allocations and caches, mapped files).
func memoryNote(m Memory, ms *runtime.MemStats) string {
	goHeld := ms.Sys - ms.HeapReleased
	other := int64(m.RSS) - int64(goHeld)
	return fmt.Sprintf("rss %d\npss %d\ngo_held %d\ngo_heap_alloc %d\ngo_heap_idle_unreleased %d\nnot_go %d\n",
		m.RSS, m.PSS, goHeld, ms.HeapAlloc, ms.HeapIdle-ms.HeapReleased, other)
}
