package scheduler

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
)

// envSeconds reads a duration in whole seconds from name, or def.
func envSeconds(b *testing.B, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number of seconds", name, v)
	}
	return time.Duration(n) * time.Second
}

// benchDatabase creates a PostgreSQL database of its own for a benchmark,
// dropped at the end. A database (not just a schema) keeps the wake-ups of
// other tests sharing the server out of the measurement: LISTEN channels
// are per database.
func benchDatabase(b *testing.B) string {
	b.Helper()
	ctx := context.Background()
	base := os.Getenv(testdb.EnvURL)
	if base == "" {
		base = testdb.DefaultURL
	}
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		b.Fatalf("connect %s: %v", base, err)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "trellis_sched_bench_" + hex.EncodeToString(rnd[:])
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		b.Fatalf("create database: %v", err)
	}
	b.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			b.Errorf("drop database %s: %v", name, err)
		}
		_ = admin.Close(context.Background())
	})
	u, err := url.Parse(base)
	if err != nil {
		b.Fatalf("parse %s: %v", base, err)
	}
	u.Path = "/" + name
	return u.String()
}

// percentile returns the p-th percentile (0–100) of sorted durations.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkFireLag measures how late runs are created for 1,000 DAGs on
// "@every 1s" against PostgreSQL: lag = (CreateRun returned) − (interval
// end). "aligned" gives every DAG the same StartDate, so all 1,000 fall due
// at the same instant every second (Airflow's usual case); "staggered"
// spreads their grids over the second. Runs of intervals ending in the
// measured window that were never created count as missed. The window is
// TRELLIS_BENCH_FIRE_SECONDS (default 10 s) after a 2 s warm-up.
func BenchmarkFireLag(b *testing.B) {
	for _, mode := range []string{"aligned", "staggered"} {
		b.Run(mode, func(b *testing.B) {
			for range b.N {
				fireLag(b, mode == "staggered")
			}
		})
	}
}

func fireLag(b *testing.B, staggered bool) {
	const nDAGs = 1000
	window := envSeconds(b, "TRELLIS_BENCH_FIRE_SECONDS", 10*time.Second)
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reg := dag.NewRegistry()
	for i := range nDAGs {
		start := base
		if staggered {
			start = base.Add(time.Duration(i) * time.Second / nDAGs)
		}
		d := dag.New(fmt.Sprintf("lag%04d", i), dag.Schedule("@every 1s"), dag.StartDate(start), dag.MaxActiveRuns(1_000_000))
		d.Shell("t", "true")
		reg.Register(d)
	}
	st := &timingStore{Store: openPostgresURL(b, benchDatabase(b), clock.Real{}, 24)}

	var mu sync.Mutex
	type sample struct {
		end time.Time
		lag time.Duration
	}
	var samples []sample
	s := New(Config{Store: st, Registry: reg, Logger: testLogger(b), FireConcurrency: 16,
		OnRunCreated: func(r store.Run, at time.Time) {
			mu.Lock()
			samples = append(samples, sample{r.IntervalEnd, at.Sub(r.IntervalEnd)})
			mu.Unlock()
		}})
	b.ResetTimer()
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	from := time.Now().Add(2 * time.Second).Truncate(time.Second)
	to := from.Add(window)
	<-time.After(time.Until(to.Add(2 * time.Second))) // the measured window, and time for its last fires
	s.Stop()
	b.StopTimer()

	// Expected: every interval of every DAG ending in (from, to].
	expected := 0
	for i := range nDAGs {
		off := time.Duration(0)
		if staggered {
			off = time.Duration(i) * time.Second / nDAGs
		}
		for e := from.Truncate(time.Second).Add(off); !e.After(to); e = e.Add(time.Second) {
			if e.After(from) {
				expected++
			}
		}
	}
	var lags []time.Duration
	for _, sm := range samples {
		if sm.end.After(from) && !sm.end.After(to) {
			lags = append(lags, sm.lag)
		}
	}
	slices.Sort(lags)
	missed := expected - len(lags)
	b.ReportMetric(ms(percentile(lags, 50)), "fire_lag_p50_ms")
	b.ReportMetric(ms(percentile(lags, 99)), "fire_lag_p99_ms")
	b.ReportMetric(ms(percentile(lags, 100)), "fire_lag_max_ms")
	b.ReportMetric(float64(missed), "runs_missed")
	b.ReportMetric(float64(len(lags))/window.Seconds(), "runs/s")
	b.Logf("%d DAGs, window %s: %d runs expected, %d created in the window, p50 %.1f ms, p99 %.1f ms, max %.1f ms; store calls:",
		nDAGs, window, expected, len(lags), ms(percentile(lags, 50)), ms(percentile(lags, 99)), ms(percentile(lags, 100)))
	st.report(b)
}

// BenchmarkIdleCPU measures the CPU the scheduler process uses with 10,000
// schedules that are not due (hourly, first interval ending in two hours):
// CPU seconds (user + system, of this process) per wall second over
// TRELLIS_BENCH_IDLE_SECONDS (default 35 s, so one periodic resync falls in
// the window). The PostgreSQL case uses a database of its own so no other
// process's wake-ups reach the scheduler. The SQLite store polls the file
// for other processes' commits while subscribed, which is included.
func BenchmarkIdleCPU(b *testing.B) {
	for _, kind := range []string{"postgres", "sqlite"} {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				idleCPU(b, kind)
			}
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func idleCPU(b *testing.B, kind string) {
	const nDAGs = 10_000
	window := envSeconds(b, "TRELLIS_BENCH_IDLE_SECONDS", 35*time.Second)
	start := time.Now().Add(time.Hour).Truncate(time.Hour)
	reg := dag.NewRegistry()
	for i := range nDAGs {
		d := dag.New(fmt.Sprintf("idle%05d", i), dag.Schedule("@hourly"), dag.StartDate(start))
		d.Shell("t", "true")
		reg.Register(d)
	}
	var st store.Store
	if kind == "postgres" {
		st = openPostgresURL(b, benchDatabase(b), clock.Real{}, 0)
	} else {
		st = openSQLite(b, clock.Real{})
	}
	s := New(Config{Store: st, Registry: reg, Logger: testLogger(b)})
	t0 := time.Now()
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	startup := time.Since(t0)
	defer s.Stop()
	b.ResetTimer()
	cpu0, wall0 := cpuTime(), time.Now()
	<-time.After(window)
	cpu, wall := cpuTime()-cpu0, time.Since(wall0)
	b.StopTimer()
	if runs, n, err := st.ListRuns(context.Background(), store.RunQuery{Limit: 1}); err != nil || n != 0 {
		b.Fatalf("idle schedules created runs: %v %d %v", runs, n, err)
	}
	b.ReportMetric(cpu.Seconds()/wall.Seconds(), "cpu_s/s")
	b.ReportMetric(startup.Seconds(), "startup_s")
	b.Logf("%s, %d idle schedules: %.4f CPU s per wall s over %s (%s CPU); start-up (sync + load) %s",
		kind, nDAGs, cpu.Seconds()/wall.Seconds(), wall.Round(time.Millisecond), cpu.Round(time.Millisecond), startup.Round(time.Millisecond))
}
