package bench

import (
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"strconv"

	"github.com/trellis-dag/trellis/executor"
)

// Environment variables through which `trellis bench --cpuprofile` and
// `--trace` ask the worker children for a CPU profile and an execution
// trace: each child writes "<value>-<pid>.pprof" or "<value>-<pid>.trace".
const (
	EnvCPUProfile = "TRELLIS_BENCH_CPUPROFILE"
	EnvTrace      = "TRELLIS_BENCH_TRACE"
	// EnvHeapProfile asks the scale scenario's server for a heap profile
	// "<value>-<k>.pprof" on each SIGUSR1 (k counts from 1).
	EnvHeapProfile = "TRELLIS_BENCH_HEAPPROFILE"
)

// profiler holds a running CPU profile and execution trace of this
// process.
type profiler struct {
	cpu, tr *os.File
}

// start begins a CPU profile into cpuPath and an execution trace into
// tracePath; an empty path skips that one.
func (p *profiler) start(cpuPath, tracePath string) error {
	if cpuPath != "" {
		f, err := os.Create(cpuPath)
		if err != nil {
			return fmt.Errorf("CPU profile: %w", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return fmt.Errorf("CPU profile %s: %w", cpuPath, err)
		}
		p.cpu = f
	}
	if tracePath != "" {
		f, err := os.Create(tracePath)
		if err != nil {
			return errors.Join(fmt.Errorf("execution trace: %w", err), p.stop())
		}
		if err := trace.Start(f); err != nil {
			_ = f.Close()
			return errors.Join(fmt.Errorf("execution trace %s: %w", tracePath, err), p.stop())
		}
		p.tr = f
	}
	return nil
}

// stop ends what start began and closes the files.
func (p *profiler) stop() error {
	var errs []error
	if p.cpu != nil {
		pprof.StopCPUProfile()
		errs = append(errs, p.cpu.Close())
		p.cpu = nil
	}
	if p.tr != nil {
		trace.Stop()
		errs = append(errs, p.tr.Close())
		p.tr = nil
	}
	return errors.Join(errs...)
}

// StartChildProfile starts a CPU profile and an execution trace of this
// process, as EnvCPUProfile and EnvTrace ask, when it is a worker child
// (executor.EnvChild is set). It returns the function that stops them and
// closes their files, or nil when there is nothing to record.
func StartChildProfile(lookupEnv func(string) (string, bool)) (stop func() error, err error) {
	if child, ok := lookupEnv(executor.EnvChild); !ok || child == "" {
		return nil, nil
	}
	pid := strconv.Itoa(os.Getpid())
	var cpuPath, tracePath string
	if v, ok := lookupEnv(EnvCPUProfile); ok && v != "" {
		cpuPath = v + "-" + pid + ".pprof"
	}
	if v, ok := lookupEnv(EnvTrace); ok && v != "" {
		tracePath = v + "-" + pid + ".trace"
	}
	if cpuPath == "" && tracePath == "" {
		return nil, nil
	}
	p := &profiler{}
	if err := p.start(cpuPath, tracePath); err != nil {
		return nil, fmt.Errorf("worker process: %w", err)
	}
	return p.stop, nil
}
