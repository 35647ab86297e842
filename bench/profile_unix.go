//go:build unix

package bench

import (
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
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

// writeHeapProfile writes the heap profile of this process to path.
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
	return f.Close()
}
