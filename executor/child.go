package executor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

// Environment variables through which a Pool configures its children.
// None is secret: the database URL travels on the supervision channel
// (see LoadChild), and a child's environment holds none of Trellis's
// configuration (every other TRELLIS_* variable is removed).
const (
	// EnvChild holds the worker id; its presence marks a worker child.
	EnvChild = "TRELLIS_WORKER_CHILD"
	// EnvDatabaseURL is the variable of the command line's database URL;
	// a Pool never passes it on.
	EnvDatabaseURL       = "TRELLIS_DATABASE_URL"
	EnvSlots             = "TRELLIS_WORKER_SLOTS"
	EnvHostname          = "TRELLIS_WORKER_HOSTNAME"
	EnvHeartbeatInterval = "TRELLIS_WORKER_HEARTBEAT_INTERVAL"
	EnvGrace             = "TRELLIS_WORKER_GRACE"
	EnvKillGrace         = "TRELLIS_WORKER_KILL_GRACE"
	EnvMaxLeaks          = "TRELLIS_WORKER_MAX_LEAKS"
	EnvPollInterval      = "TRELLIS_WORKER_POLL_INTERVAL"
	// EnvPokeStandby is "1" for a child whose poke loop stands by
	// (WorkerConfig.PokeStandby).
	EnvPokeStandby = "TRELLIS_WORKER_POKE_STANDBY"
	EnvSpoolDir    = "TRELLIS_WORKER_SPOOL_DIR"
	// EnvProcs is how many CPUs the child's Go runtime runs goroutines on
	// at once (its GOMAXPROCS; see ApplyChildProcs).
	EnvProcs = "TRELLIS_WORKER_PROCS"
	// EnvParentPID is the supervisor's pid; a child whose parent changed
	// knows the supervisor died.
	EnvParentPID = "TRELLIS_WORKER_PARENT_PID"
	// EnvPool marks every process a pool starts, and every process those
	// start, so the supervisor recognises orphans it may kill.
	EnvPool = "TRELLIS_WORKER_POOL"
)

// Exit codes of a worker child.
const (
	// ExitOK: the child was asked to stop and stopped.
	ExitOK = 0
	// ExitError: the child could not start (bad configuration, store
	// unreachable).
	ExitError = 1
	// ExitRecycle: the child drained after abandoning MaxLeaks task
	// goroutines and wants to be replaced; the supervisor restarts it at
	// once.
	ExitRecycle = 75
)

// ChildConfig is what a Pool tells a worker child.
type ChildConfig struct {
	WorkerID string
	// DatabaseURL is sent on the supervision channel, never in the
	// environment: Env leaves it out and LoadChild fills it in.
	DatabaseURL       string
	Slots             int
	Hostname          string
	HeartbeatInterval time.Duration
	Grace             time.Duration
	KillGrace         time.Duration
	PollInterval      time.Duration
	MaxLeaks          int
	SpoolDir          string
	ParentPID         int
	Pool              string
	// Procs is the child's GOMAXPROCS (ApplyChildProcs); 0 leaves the
	// runtime's default.
	Procs int
	// PokeStandby: the child's poke loop stands by for another child's
	// (WorkerConfig.PokeStandby).
	PokeStandby bool
}

// IsChild reports whether this process was started by a Pool as a worker
// child (EnvChild is set).
func IsChild() bool {
	v, ok := os.LookupEnv(EnvChild)
	return ok && v != ""
}

// Env returns the environment variables that carry c, all but its
// DatabaseURL.
func (c ChildConfig) Env() []string {
	standby := "0"
	if c.PokeStandby {
		standby = "1"
	}
	return []string{
		EnvChild + "=" + c.WorkerID,
		EnvSlots + "=" + strconv.Itoa(c.Slots),
		EnvHostname + "=" + c.Hostname,
		EnvHeartbeatInterval + "=" + c.HeartbeatInterval.String(),
		EnvGrace + "=" + c.Grace.String(),
		EnvKillGrace + "=" + c.KillGrace.String(),
		EnvPollInterval + "=" + c.PollInterval.String(),
		EnvMaxLeaks + "=" + strconv.Itoa(c.MaxLeaks),
		EnvSpoolDir + "=" + c.SpoolDir,
		EnvParentPID + "=" + strconv.Itoa(c.ParentPID),
		EnvPool + "=" + c.Pool,
		EnvProcs + "=" + strconv.Itoa(c.Procs),
		EnvPokeStandby + "=" + standby,
	}
}

// ChildConfigFromEnv reads the configuration a Pool passed to this child
// through lookup (os.LookupEnv), all but the DatabaseURL (see LoadChild).
// Unset optional values are zero (the Worker defaults); malformed ones are
// errors naming the variable.
func ChildConfigFromEnv(lookup func(string) (string, bool)) (ChildConfig, error) {
	var c ChildConfig
	var problems []error
	str := func(name string, required bool) string {
		v, ok := lookup(name)
		if required && (!ok || v == "") {
			problems = append(problems, fmt.Errorf("%s is not set", name))
		}
		return v
	}
	num := func(name string) int {
		v, ok := lookup(name)
		if !ok || v == "" {
			return 0
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s=%q is not an integer", name, v))
		}
		return n
	}
	dur := func(name string) time.Duration {
		v, ok := lookup(name)
		if !ok || v == "" {
			return 0
		}
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			problems = append(problems, fmt.Errorf("%s=%q is not a non-negative duration such as 5s", name, v))
		}
		return d
	}
	c.WorkerID = str(EnvChild, true)
	c.Hostname = str(EnvHostname, false)
	c.Pool = str(EnvPool, false)
	c.SpoolDir = str(EnvSpoolDir, false)
	c.Slots = num(EnvSlots)
	c.MaxLeaks = num(EnvMaxLeaks)
	c.ParentPID = num(EnvParentPID)
	c.Procs = num(EnvProcs)
	c.HeartbeatInterval = dur(EnvHeartbeatInterval)
	c.Grace = dur(EnvGrace)
	c.KillGrace = dur(EnvKillGrace)
	c.PollInterval = dur(EnvPollInterval)
	switch v := str(EnvPokeStandby, false); v {
	case "", "0":
	case "1":
		c.PokeStandby = true
	default:
		problems = append(problems, fmt.Errorf("%s=%q, want 0 or 1", EnvPokeStandby, v))
	}
	if c.Slots < 0 {
		problems = append(problems, fmt.Errorf("%s=%d, want at least 1", EnvSlots, c.Slots))
	}
	if c.Procs < 0 {
		problems = append(problems, fmt.Errorf("%s=%d, want at least 1", EnvProcs, c.Procs))
	}
	if len(problems) > 0 {
		return ChildConfig{}, fmt.Errorf("worker child environment: %w", errors.Join(problems...))
	}
	return c, nil
}

// childProcs returns the GOMAXPROCS of each of processes worker children
// of a supervisor whose runtime uses procs CPUs, on the database at
// databaseURL. On PostgreSQL, an equal share, rounded up, so that together
// they use every CPU: left to its default, each child's runtime would size
// itself to every CPU, and with one child per CPU the idle contexts spin
// looking for work and wake each other's threads at every hand-off (a
// no-op try lasts microseconds), CPU that the scheduler, the database and
// the other children need (docs/benchmarks.md, "Session 8: gocpu"). A
// task that computes in parallel gets the share, not the host. On SQLite
// 0, the runtime's default: each child runs the database engine itself,
// and held to its share `wide` lost 10-30 % (docs/benchmarks.md, "Session
// 8 on a quiet machine").
func childProcs(procs, processes int, databaseURL string) int {
	if procs < 1 || processes < 1 {
		return 0
	}
	if backend, _, err := dial.ParseURL(databaseURL); err != nil || backend != dial.Postgres {
		return 0
	}
	return (procs + processes - 1) / processes
}

// ApplyChildProcs sets this worker child's GOMAXPROCS to c.Procs, unless
// GOMAXPROCS is in its environment (lookup: os.LookupEnv), which the
// runtime applied already and which wins, or c.Procs is 0.
func ApplyChildProcs(c ChildConfig, lookup func(string) (string, bool)) {
	if _, set := lookup("GOMAXPROCS"); set || c.Procs < 1 {
		return
	}
	runtime.GOMAXPROCS(c.Procs)
}

// ChildOptions are what the worker-child role needs besides its
// ChildConfig: the store opened on Config.DatabaseURL and the DAGs of the
// binary.
type ChildOptions struct {
	Config   ChildConfig
	Store    store.Store
	Registry *dag.Registry
	// Logger receives the child's log. RunChild and the Worker label their
	// lines with worker=<Config.WorkerID>; Logger should not carry it too.
	Logger *slog.Logger
	Clock  clock.Clock
	// Channel, from LoadChild, takes the Worker's finishes to the pool;
	// nil when the child runs without one. RunChild closes it.
	Channel *Channel
}

// poolMark is the environment entry that marks the processes of pool.
func poolMark(pool string) []string {
	if pool == "" {
		return nil
	}
	return []string{EnvPool + "=" + pool}
}

// childSignals are the signals that stop a worker child.
var childSignals = []os.Signal{syscall.SIGTERM, syscall.SIGINT}

// RunChild runs the worker-child role: one Worker until the process is
// told to stop. The first SIGTERM or SIGINT stops it gracefully, a second
// one halts it; if the supervisor died (Pdeathsig, or the parent pid
// changed) it halts at once. It returns the process exit code: ExitOK,
// ExitError when the worker cannot start, ExitRecycle after draining for
// leaked goroutines. The caller should exit with it promptly so leaked
// goroutines die.
//
// ctx ending counts as the first signal: the command's context (from
// signal.NotifyContext) takes a signal that arrives before RunChild
// installs its own handler, so such a signal still stops the worker
// gracefully and the next one halts it. The Worker itself runs on a
// context that does not end with ctx.
func RunChild(ctx context.Context, opts ChildOptions) int {
	c := opts.Config
	base := opts.Logger
	if base == nil {
		base = slog.New(slog.DiscardHandler)
	}
	log := base.With("worker", c.WorkerID)
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, childSignals...)
	defer signal.Stop(sigs)
	stopCtx := ctx
	ctxDone := stopCtx.Done()
	ctx = context.WithoutCancel(ctx)

	var events Events
	if opts.Channel != nil {
		events = opts.Channel
		defer opts.Channel.Close()
	}
	w, err := NewWorker(WorkerConfig{
		Store:             opts.Store,
		Registry:          opts.Registry,
		Clock:             opts.Clock,
		Logger:            base, // the Worker adds worker=<id>
		ID:                c.WorkerID,
		Hostname:          c.Hostname,
		Slots:             c.Slots,
		HeartbeatInterval: c.HeartbeatInterval,
		Grace:             c.Grace,
		KillGrace:         c.KillGrace,
		PollInterval:      c.PollInterval,
		PokeStandby:       c.PokeStandby,
		MaxLeaks:          c.MaxLeaks,
		SpoolDir:          c.SpoolDir,
		Events:            events,
		TaskEnv:           poolMark(c.Pool),
	})
	if err != nil {
		log.Error("worker child", "err", err)
		return ExitError
	}
	if opts.Channel != nil {
		opts.Channel.start(w.Running)
	}
	if err := w.Start(ctx); err != nil {
		log.Error("worker child", "err", err)
		return ExitError
	}

	parentCheck := time.NewTicker(time.Second)
	defer parentCheck.Stop()
	parentGone := func() bool { return c.ParentPID > 0 && os.Getppid() != c.ParentPID }
	code := ExitOK
	stopping := false
	leakLimit := w.LeakLimit()
	stop := func(halt bool) {
		if halt {
			w.Halt()
		}
		if !stopping {
			stopping = true
			go w.Stop()
		}
	}
	for {
		select {
		case <-ctxDone:
			ctxDone = nil
			if stopping {
				// Already stopping: a signal that reached sigs too ended
				// ctx (or the worker drains for leaks).
				continue
			}
			// The first signal. When it was delivered after Notify above,
			// sigs gets it too: Notify takes the lock signal delivery
			// holds, so once it returns that copy is in sigs; drop it, it
			// is not a second signal.
			signal.Notify(sigs, childSignals...)
			select {
			case <-sigs:
			default:
			}
			log.Info("stop requested; stopping gracefully", "cause", context.Cause(stopCtx))
			stop(false)
		case s := <-sigs:
			switch {
			case parentGone():
				log.Warn("supervisor is gone; halting", "signal", s.String())
				stop(true)
			case stopping:
				log.Info("second signal; halting", "signal", s.String())
				stop(true)
			default:
				log.Info("signal; stopping gracefully", "signal", s.String())
				stop(false)
			}
		case <-parentCheck.C:
			if parentGone() {
				log.Warn("supervisor is gone; halting")
				stop(true)
			}
		case <-leakLimit:
			leakLimit = nil
			code = ExitRecycle
			log.Warn("draining to be replaced: too many abandoned task goroutines")
			stop(false)
		case <-w.Done():
			return code
		}
	}
}
