// Command testbin is the binary the executor's process tests and
// benchmarks drive. It knows the DAGs of package testdags and has three
// roles:
//
//	testbin pool [flags]       a worker pool (what `trellis worker` runs)
//	testbin child              a worker child, started by the pool
//	testbin scheduler [flags]  a scheduler (what `trellis scheduler` runs)
//
// The pool and the scheduler read the database URL from
// TRELLIS_DATABASE_URL; a child gets it from its pool on the supervision
// channel. The pool stops
// gracefully on the first SIGTERM or SIGINT and halts on the second; the
// scheduler stops on the first.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/trellis-dag/trellis/executor"
	"github.com/trellis-dag/trellis/executor/internal/testdags"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: testbin pool [flags] | testbin child | testbin scheduler [flags]")
		os.Exit(2)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	switch os.Args[1] {
	case "child":
		os.Exit(child(logger))
	case "pool":
		os.Exit(pool(logger, os.Args[2:]))
	case "scheduler":
		os.Exit(runScheduler(logger, os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "testbin: unknown role %q\n", os.Args[1])
		os.Exit(2)
	}
}

func open(ctx context.Context, url string, logger *slog.Logger) (store.Store, error) {
	return dial.Open(ctx, url, dial.Options{Logger: logger, ConnectTimeout: 10 * time.Second})
}

func child(logger *slog.Logger) int {
	cfg, ch, err := executor.LoadChild(os.LookupEnv, logger)
	if err != nil {
		logger.Error("testbin child", "err", err)
		return executor.ExitError
	}
	logger = logger.With("worker", cfg.WorkerID)
	ctx := context.Background()
	var st store.Store
	err = ch.WithConnEnv(func() (err error) { st, err = open(ctx, cfg.DatabaseURL, logger); return err })
	if err != nil {
		logger.Error("testbin child: open store", "err", err)
		ch.Close()
		return executor.ExitError
	}
	defer st.Close()
	return executor.RunChild(ctx, executor.ChildOptions{
		Config:   cfg,
		Store:    st,
		Registry: testdags.Registry(),
		Logger:   logger,
		Channel:  ch,
	})
}

func pool(logger *slog.Logger, args []string) int {
	fs := flag.NewFlagSet("pool", flag.ContinueOnError)
	processes := fs.Int("processes", 0, "worker processes (0 = CPU count)")
	slots := fs.Int("slots", 0, "slots per process (0 = default)")
	grace := fs.Duration("grace", 0, "shutdown grace")
	killGrace := fs.Duration("kill-grace", 0, "SIGTERM to SIGKILL wait")
	heartbeat := fs.Duration("heartbeat", 0, "heartbeat interval")
	maxLeaks := fs.Int("max-leaks", 0, "abandoned goroutines before a child is recycled")
	hostname := fs.String("hostname", "", "hostname recorded by the workers")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	url := os.Getenv(executor.EnvDatabaseURL)
	ctx := context.Background()
	st, err := open(ctx, url, logger)
	if err != nil {
		logger.Error("testbin pool: open store", "err", err)
		return 1
	}
	defer st.Close()
	p, err := executor.NewPool(executor.PoolConfig{
		Store:             st,
		DatabaseURL:       url,
		Logger:            logger,
		Processes:         *processes,
		Slots:             *slots,
		Hostname:          *hostname,
		Args:              []string{"child"},
		Grace:             *grace,
		KillGrace:         *killGrace,
		HeartbeatInterval: *heartbeat,
		MaxLeaks:          *maxLeaks,
	})
	if err != nil {
		logger.Error("testbin pool", "err", err)
		return 2
	}
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := p.Start(ctx); err != nil {
		logger.Error("testbin pool", "err", err)
		return 1
	}
	fmt.Println("pool started")
	<-sigs
	go p.Stop()
	select {
	case <-p.Done():
	case <-sigs:
		p.Halt()
		<-p.Done()
	}
	fmt.Printf("pool stopped restarts=%d\n", p.Restarts())
	return 0
}

// runScheduler runs a scheduler over the test DAGs until SIGTERM or
// SIGINT.
func runScheduler(logger *slog.Logger, args []string) int {
	fs := flag.NewFlagSet("scheduler", flag.ContinueOnError)
	zombie := fs.Duration("zombie-threshold", 0, "heartbeat age of a zombie (0 = default)")
	sweep := fs.Duration("zombie-interval", 0, "zombie sweep interval (0 = default)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx := context.Background()
	st, err := open(ctx, os.Getenv(executor.EnvDatabaseURL), logger)
	if err != nil {
		logger.Error("testbin scheduler: open store", "err", err)
		return 1
	}
	defer st.Close()
	s := scheduler.New(scheduler.Config{
		Store:               st,
		Registry:            testdags.Registry(),
		Logger:              logger,
		ZombieThreshold:     *zombie,
		ZombieCheckInterval: *sweep,
	})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	if err := s.Start(ctx); err != nil {
		logger.Error("testbin scheduler", "err", err)
		return 1
	}
	fmt.Println("scheduler started")
	<-sigs
	s.Stop()
	fmt.Println("scheduler stopped")
	return 0
}
