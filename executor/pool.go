package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of PoolConfig.
const (
	// DefaultRestartBackoff is the wait before restarting a child that
	// died; it doubles with every consecutive early death.
	DefaultRestartBackoff = 100 * time.Millisecond
	// DefaultMaxRestartBackoff caps the restart wait.
	DefaultMaxRestartBackoff = 30 * time.Second
	// DefaultStableAfter: a child that ran this long before dying starts
	// the backoff over.
	DefaultStableAfter = 10 * time.Second
	// DefaultReapInterval is how often the supervisor looks for processes
	// that tasks left behind.
	DefaultReapInterval = 2 * time.Second
	// DefaultDeadSweepFor is how long the tries of a dead child keep
	// being swept.
	DefaultDeadSweepFor = 10 * time.Second
	// stopMargin is added to Grace+KillGrace before Stop SIGKILLs
	// children that are still alive.
	stopMargin = 5 * time.Second
)

// ChildArgs are the command-line arguments that select the worker-child
// role of the trellis binary.
var ChildArgs = []string{"worker", "--child"}

// PoolConfig configures a Pool. Store and DatabaseURL are required.
type PoolConfig struct {
	// Store is the supervisor's own store handle, used to recover the
	// tries of a child that died.
	Store store.Store
	// DatabaseURL is passed to the children, which open their own store,
	// on their supervision channels (never in their environment).
	DatabaseURL string
	// Events, when set, receives the finishes the children report.
	Events Events
	// Clock and Logger as for WorkerConfig.
	Clock  clock.Clock
	Logger *slog.Logger

	// Processes is the number of worker children; default runtime.NumCPU().
	Processes int
	// Slots is how many tries each child runs at once; default DefaultSlots.
	Slots int
	// Hostname is recorded by the children; default os.Hostname().
	Hostname string

	// Executable is the binary to re-execute; default os.Executable().
	Executable string
	// Args select the worker-child role of Executable; default ChildArgs.
	Args []string
	// Env is added to the children's environment: this process's, without
	// Trellis's configuration (TRELLIS_*) and the PostgreSQL client
	// variables (PG*), which go on the supervision channel.
	Env []string
	// Stdout and Stderr receive the children's output; default the
	// supervisor's own.
	Stdout, Stderr io.Writer

	// HeartbeatInterval, Grace, KillGrace, PollInterval and MaxLeaks are
	// passed to each child's Worker (zero = the Worker default).
	HeartbeatInterval time.Duration
	Grace             time.Duration
	KillGrace         time.Duration
	PollInterval      time.Duration
	MaxLeaks          int
	// MemoryLimit, when positive, caps each worker process's data
	// segment (RLIMIT_DATA, set on the child with prlimit; Linux only) in
	// bytes, and sets the child's GOMEMLIMIT to 90% of it. A worker that
	// reaches it dies and is restarted; its tries are put back, and a try
	// running when two workers died in a row is failed.
	MemoryLimit int64
	// SpoolDir is passed to each child's Worker: where results the
	// database could not take at a child's stop are kept until the next
	// start. "" = DefaultSpoolDir(); "-" = none.
	SpoolDir string

	// RestartBackoff, MaxRestartBackoff and StableAfter shape restarts.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	StableAfter       time.Duration
	// ReapInterval is how often left-behind processes are looked for,
	// and how often the tries of recently dead children are failed again
	// (see DeadSweepFor).
	ReapInterval time.Duration
	// DeadSweepFor is how long after a child died its tries are failed
	// again on every ReapInterval: a claim the child had in flight when
	// it died may still commit in the database after the first recovery.
	DeadSweepFor time.Duration
	// KeepOrphans turns off the collection of processes that tasks and
	// dead children leave behind (on Linux the supervisor otherwise
	// becomes a child subreaper, kills such processes and reaps exited
	// children outside its own process group). Set it when embedding a
	// Pool in a process that starts other children in new process groups.
	KeepOrphans bool
}

func (c *PoolConfig) withDefaults() (PoolConfig, error) {
	cfg := *c
	var problems []error
	if cfg.Store == nil {
		problems = append(problems, errors.New("field Store is nil"))
	}
	if cfg.DatabaseURL == "" {
		problems = append(problems, errors.New("field DatabaseURL is empty"))
	}
	if cfg.Processes < 0 {
		problems = append(problems, fmt.Errorf("field Processes is %d, want at least 1", cfg.Processes))
	}
	if cfg.Slots < 0 {
		problems = append(problems, fmt.Errorf("field Slots is %d, want at least 1", cfg.Slots))
	}
	if cfg.MemoryLimit < 0 {
		problems = append(problems, fmt.Errorf("field MemoryLimit is negative (%d)", cfg.MemoryLimit))
	}
	if len(problems) > 0 {
		return cfg, fmt.Errorf("worker pool config: %w", errors.Join(problems...))
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	setDefault(&cfg.Processes, runtime.NumCPU())
	setDefault(&cfg.Slots, DefaultSlots)
	if cfg.Hostname == "" {
		cfg.Hostname = hostname()
	}
	if cfg.Executable == "" {
		exe, err := os.Executable()
		if err != nil {
			return cfg, fmt.Errorf("worker pool config: find own executable: %w", err)
		}
		cfg.Executable = exe
	}
	if cfg.Args == nil {
		cfg.Args = ChildArgs
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	setDefault(&cfg.Grace, DefaultGrace)
	setDefault(&cfg.KillGrace, DefaultKillGrace)
	setDefault(&cfg.RestartBackoff, DefaultRestartBackoff)
	setDefault(&cfg.MaxRestartBackoff, DefaultMaxRestartBackoff)
	setDefault(&cfg.StableAfter, DefaultStableAfter)
	setDefault(&cfg.ReapInterval, DefaultReapInterval)
	switch cfg.SpoolDir {
	case "":
		cfg.SpoolDir = DefaultSpoolDir()
	case "-":
		cfg.SpoolDir = ""
	}
	setDefault(&cfg.DeadSweepFor, DefaultDeadSweepFor)
	return cfg, nil
}

// Pool supervises worker child processes: it starts Processes children,
// restarts any that dies (recovering its tries at once with
// Store.RecoverWorkerTasks), kills processes tasks left behind, and on Stop
// shuts the children down gracefully. `trellis worker` runs one; to embed
// one (as `trellis serve` does), give it the process's Store and
// DatabaseURL, keep Args at ChildArgs (cmd/trellis dispatches
// `worker --child` to RunChild), Start it and Stop it at shutdown — Halt
// first to skip the grace period.
type Pool struct {
	cfg    PoolConfig
	poolID string // marks the environment of every process of this pool

	ctx      context.Context // store calls
	cancel   context.CancelFunc
	stopping chan struct{}
	halted   chan struct{}
	done     chan struct{}

	startOnce, stopOnce, haltOnce sync.Once
	started                       bool

	spawnReq chan spawnRequest
	spawnWG  sync.WaitGroup
	superWG  sync.WaitGroup
	chanWG   sync.WaitGroup // readers of the children's channels
	reapWG   sync.WaitGroup

	// procMu is held while a child is being started and while looking
	// for orphans, so a child between fork and registration in live is
	// never mistaken for an orphan.
	procMu sync.Mutex
	live   map[int]*child // by pid

	mu       sync.Mutex
	restarts int
	dead     map[string]deadChild // by worker id of a dead child
}

// child is one incarnation of a worker child process.
type child struct {
	index, gen int
	id         string
	cmd        *exec.Cmd
	startedAt  time.Time
	exited     chan struct{}
	waitErr    error
	running    atomic.Int64 // tries it runs, as it last reported
}

type spawnRequest struct {
	index, gen int
	reply      chan spawnReply
}

type spawnReply struct {
	c   *child
	err error
}

// NewPool checks cfg and returns a pool ready to Start.
func NewPool(cfg PoolConfig) (*Pool, error) {
	c, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Pool{
		cfg:      c,
		poolID:   fmt.Sprintf("%d-%s", os.Getpid(), randomSuffix()),
		stopping: make(chan struct{}),
		halted:   make(chan struct{}),
		done:     make(chan struct{}),
		spawnReq: make(chan spawnRequest),
		live:     map[int]*child{},
		dead:     map[string]deadChild{},
	}, nil
}

// Processes returns the configured number of children.
func (p *Pool) Processes() int { return p.cfg.Processes }

// Workers returns how many children are alive now.
func (p *Pool) Workers() int {
	p.procMu.Lock()
	defer p.procMu.Unlock()
	return len(p.live)
}

// Slots returns how many tries the live children can run at once.
func (p *Pool) Slots() int { return p.Workers() * p.cfg.Slots }

// RunningTries returns how many tries the live children run, as they
// last reported.
func (p *Pool) RunningTries() int {
	p.procMu.Lock()
	defer p.procMu.Unlock()
	n := 0
	for _, c := range p.live {
		n += int(c.running.Load())
	}
	return n
}

// Restarts returns how many times a child was restarted.
func (p *Pool) Restarts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restarts
}

// PIDs returns the pids of the live children.
func (p *Pool) PIDs() []int {
	p.procMu.Lock()
	defer p.procMu.Unlock()
	out := make([]int, 0, len(p.live))
	for pid := range p.live {
		out = append(out, pid)
	}
	return out
}

// Done is closed when the pool has stopped.
func (p *Pool) Done() <-chan struct{} { return p.done }

// Start makes the process a child subreaper (Linux) and starts the
// children. Cancelling ctx later halts and stops the pool; call Stop to
// wait for it.
func (p *Pool) Start(ctx context.Context) error {
	err := errors.New("worker pool already started")
	p.startOnce.Do(func() { err = p.start(ctx) })
	return err
}

func (p *Pool) start(ctx context.Context) error {
	if !p.cfg.KeepOrphans {
		if err := becomeSubreaper(); err != nil {
			p.cfg.Logger.Warn("cannot collect orphaned task processes", "err", err)
		}
	}
	p.ctx, p.cancel = context.WithCancel(context.WithoutCancel(ctx))
	p.started = true
	p.spawnWG.Add(1)
	go p.spawnLoop()
	for i := range p.cfg.Processes {
		p.superWG.Add(1)
		go p.supervise(i)
	}
	p.reapWG.Add(1)
	go p.reapLoop()
	go func() {
		select {
		case <-ctx.Done():
			p.Halt()
			p.Stop()
		case <-p.stopping:
		}
	}()
	p.cfg.Logger.Info("worker pool started", "processes", p.cfg.Processes, "slots", p.cfg.Slots)
	return nil
}

// Stop stops the children gracefully and waits: each gets SIGTERM, so it
// stops claiming, lets its tries finish within Grace and requeues the
// rest; a child still alive after Grace+KillGrace plus a margin is
// SIGKILLed and its tries recovered. No child outlives Stop.
func (p *Pool) Stop() {
	p.stopOnce.Do(func() {
		close(p.stopping)
		if !p.started {
			close(p.done)
			return
		}
		p.shutdown()
	})
	<-p.done
}

// Halt makes the children halt: tries are cancelled and requeued at once
// instead of being given the grace period. It may be called during Stop
// (the CLI does so on a second signal).
func (p *Pool) Halt() {
	p.haltOnce.Do(func() {
		close(p.halted)
		p.signalAll(syscall.SIGTERM) // a second SIGTERM halts a stopping child
	})
}

func (p *Pool) shutdown() {
	log := p.cfg.Logger
	log.Info("worker pool stopping", "workers", p.Workers())
	p.signalAll(syscall.SIGTERM)

	supervised := make(chan struct{})
	go func() { p.superWG.Wait(); close(supervised) }()
	deadline := p.cfg.Clock.NewTimer(p.cfg.Grace + p.cfg.KillGrace + stopMargin)
	select {
	case <-supervised:
	case <-deadline.C():
	case <-p.halted:
		deadline.Reset(p.cfg.KillGrace + stopMargin)
		select {
		case <-supervised:
		case <-deadline.C():
		}
	}
	deadline.Stop()
	select {
	case <-supervised:
	default:
		log.Warn("worker processes did not stop in time; killing them", "workers", p.Workers())
		p.signalAll(syscall.SIGKILL)
		<-supervised
	}
	close(p.spawnReq)
	p.spawnWG.Wait()
	p.reapWG.Wait()
	p.chanWG.Wait()
	p.reapOrphans()
	p.sweepDead()
	p.cancel()
	log.Info("worker pool stopped")
	close(p.done)
}

// signalAll sends sig to every live child (SIGKILL to its whole process
// group).
func (p *Pool) signalAll(sig syscall.Signal) {
	p.procMu.Lock()
	defer p.procMu.Unlock()
	for pid := range p.live {
		if sig == syscall.SIGKILL {
			_ = killProcessGroup(pid, sig)
		}
		_ = syscall.Kill(pid, sig)
	}
}

// spawnLoop starts every child from one goroutine locked to its OS
// thread: Pdeathsig fires when the thread that forked a child exits, so
// the forking thread must live as long as the pool.
func (p *Pool) spawnLoop() {
	defer p.spawnWG.Done()
	runtime.LockOSThread()
	// Never unlocked: when the loop ends, the thread exits with the
	// goroutine, which sends Pdeathsig to any child somehow still alive.
	for req := range p.spawnReq {
		c, err := p.startChild(req.index, req.gen)
		req.reply <- spawnReply{c: c, err: err}
	}
}

func (p *Pool) spawn(index, gen int) (*child, error) {
	reply := make(chan spawnReply, 1)
	select {
	case p.spawnReq <- spawnRequest{index: index, gen: gen, reply: reply}:
	case <-p.stopping:
		return nil, errors.New("pool is stopping")
	}
	r := <-reply
	return r.c, r.err
}

// childConfig is what child slot index, generation gen, is told.
func (p *Pool) childConfig(index, gen int) ChildConfig {
	id := fmt.Sprintf("%s-%d-w%d.%d", p.cfg.Hostname, os.Getpid(), index, gen)
	return ChildConfig{
		WorkerID:          id,
		DatabaseURL:       p.cfg.DatabaseURL,
		Slots:             p.cfg.Slots,
		Hostname:          p.cfg.Hostname,
		HeartbeatInterval: p.cfg.HeartbeatInterval,
		Grace:             p.cfg.Grace,
		KillGrace:         p.cfg.KillGrace,
		PollInterval:      p.cfg.PollInterval,
		MaxLeaks:          p.cfg.MaxLeaks,
		SpoolDir:          p.cfg.SpoolDir,
		ParentPID:         os.Getpid(),
		Pool:              p.poolID,
		Procs:             childProcs(runtime.GOMAXPROCS(0), p.cfg.Processes, p.cfg.DatabaseURL),
		// The first child pokes; the others claim only what it leaves
		// overdue: one batch a wake-up instead of one per child.
		PokeStandby: index > 0,
	}
}

func (p *Pool) startChild(index, gen int) (*child, error) {
	cc := p.childConfig(index, gen)
	id := cc.WorkerID
	own, theirs, err := socketPair()
	if err != nil {
		return nil, fmt.Errorf("start worker process %s: %w", id, err)
	}
	defer theirs.Close() // the child has its copy
	environ := os.Environ()
	cmd := exec.Command(p.cfg.Executable, p.cfg.Args...)
	cmd.Env = childEnviron(environ, append(append(slices.Clone(p.cfg.Env), cc.Env()...), EnvChannelFD+"=3"))
	if p.cfg.MemoryLimit > 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("GOMEMLIMIT=%d", p.cfg.MemoryLimit/10*9))
	}
	cmd.ExtraFiles = []*os.File{theirs} // fd 3
	cmd.Stdout, cmd.Stderr = p.cfg.Stdout, p.cfg.Stderr
	cmd.SysProcAttr = childSysProcAttr()
	cmd.WaitDelay = time.Second // do not hang on output pipes a grandchild holds

	p.procMu.Lock()
	defer p.procMu.Unlock()
	select {
	case <-p.stopping:
		_ = own.Close()
		return nil, errors.New("pool is stopping")
	default:
	}
	if err := cmd.Start(); err != nil {
		_ = own.Close()
		return nil, fmt.Errorf("start worker process %s: %w", id, err)
	}
	if p.cfg.MemoryLimit > 0 {
		if err := limitMemory(cmd.Process.Pid, p.cfg.MemoryLimit); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			_ = own.Close()
			return nil, fmt.Errorf("start worker process %s: limit its memory to %d bytes: %w", id, p.cfg.MemoryLimit, err)
		}
	}
	c := &child{index: index, gen: gen, id: id, cmd: cmd, startedAt: p.cfg.Clock.Now(), exited: make(chan struct{})}
	pid := cmd.Process.Pid
	p.live[pid] = c
	if err := sendHello(own, hello{DatabaseURL: p.cfg.DatabaseURL, ConnEnv: connEnviron(environ)}); err != nil {
		// The child fails to start without it and is restarted.
		p.cfg.Logger.Error("worker process", "worker", id, "err", err)
	}
	reported := make(chan struct{})
	p.chanWG.Add(1)
	go func() {
		defer p.chanWG.Done()
		defer close(reported)
		childReports(own, p.cfg.Events, &c.running, p.cfg.Logger.With("worker", id))
	}()
	go func() {
		c.waitErr = cmd.Wait()
		p.procMu.Lock()
		delete(p.live, pid)
		p.procMu.Unlock()
		close(c.exited)
		// The reports end with the child, unless a process it started
		// kept its end of the channel: read what is left, briefly.
		select {
		case <-reported:
		case <-time.After(channelDrainTimeout):
			_ = own.Close()
		}
	}()
	p.cfg.Logger.Info("worker process started", "worker", id, "pid", pid)
	return c, nil
}

// supervise keeps child slot index alive until the pool stops.
func (p *Pool) supervise(index int) {
	defer p.superWG.Done()
	log := p.cfg.Logger
	failures := 0
	for gen := 0; ; gen++ {
		c, err := p.spawn(index, gen)
		if err != nil {
			select {
			case <-p.stopping:
				return
			default:
			}
			failures++
			delay := restartDelay(failures, p.cfg.RestartBackoff, p.cfg.MaxRestartBackoff)
			log.Error("cannot start worker process", "err", err, "retry_in", delay)
			if !p.sleep(delay) {
				return
			}
			continue
		}
		<-c.exited
		stopping := p.isStopping()
		code, clean := exitCode(c.waitErr)
		ran := p.cfg.Clock.Now().Sub(c.startedAt)
		if stopping && clean && code == ExitOK {
			return
		}
		p.recover(c, code)
		if stopping {
			return
		}
		switch {
		case code == ExitRecycle:
			failures = 0
		case ran >= p.cfg.StableAfter:
			failures = 1
		default:
			failures++
		}
		delay := time.Duration(0)
		if code != ExitRecycle {
			delay = restartDelay(failures, p.cfg.RestartBackoff, p.cfg.MaxRestartBackoff)
		}
		p.mu.Lock()
		p.restarts++
		p.mu.Unlock()
		log.Info("restarting worker process", "worker", c.id, "restart_in", delay)
		if !p.sleep(delay) {
			return
		}
	}
}

// deadChild is when and how a child died.
type deadChild struct {
	at    time.Time
	cause string
}

// recover handles a child that exited on its own: its running tries are
// put back without using a try (or failed when poison, see
// recoverWorker), its worker row removed, and processes its tasks left
// behind killed.
func (p *Pool) recover(c *child, code int) {
	log := p.cfg.Logger
	if code == ExitRecycle {
		log.Info("worker process recycled after abandoning task goroutines", "worker", c.id)
	} else {
		log.Warn("worker process died", "worker", c.id, "pid", c.cmd.Process.Pid, "err", c.waitErr)
	}
	cause := fmt.Sprintf("worker %s (pid %d) died: %v", c.id, c.cmd.Process.Pid, c.waitErr)
	if c.waitErr == nil {
		cause = fmt.Sprintf("worker %s (pid %d) exited with status %d", c.id, c.cmd.Process.Pid, code)
	}
	p.recoverWorker(c.id, cause)
	p.mu.Lock()
	p.dead[c.id] = deadChild{at: p.cfg.Clock.Now(), cause: cause}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(p.ctx, DefaultStoreTimeout)
	defer cancel()
	if err := p.cfg.Store.DeregisterWorker(ctx, c.id); err != nil && !errors.Is(err, store.ErrNotFound) {
		log.Warn("deregister dead worker", "worker", c.id, "err", err)
	}
	if n := p.reapOrphans(); n > 0 {
		log.Warn("killed processes left behind by a dead worker's tasks", "worker", c.id, "processes", n)
	}
}

func (p *Pool) isStopping() bool {
	select {
	case <-p.stopping:
		return true
	default:
		return false
	}
}

// sleep waits d or until the pool stops; false means stopping.
func (p *Pool) sleep(d time.Duration) bool {
	if d <= 0 {
		return !p.isStopping()
	}
	t := p.cfg.Clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C():
		return true
	case <-p.stopping:
		return false
	}
}

// recoverWorker puts the running tries of dead worker id back without
// using a try, failing those its death made poison (two deaths in a row
// under one try; Store.RecoverWorkerTasks).
func (p *Pool) recoverWorker(id, cause string) {
	ctx, cancel := context.WithTimeout(p.ctx, DefaultStoreTimeout)
	defer cancel()
	rec, err := p.cfg.Store.RecoverWorkerTasks(ctx, id, cause, p.cfg.Clock.Now())
	if err != nil {
		p.cfg.Logger.Error("recover tries of dead worker; the zombie sweep will", "worker", id, "err", err)
		return
	}
	if len(rec.Requeued) > 0 {
		p.cfg.Logger.Warn("put back the tries of a dead worker without using a try", "worker", id, "tries", len(rec.Requeued))
	}
	if len(rec.Failed) > 0 {
		p.cfg.Logger.Warn("failed tries whose workers died twice in a row running them", "worker", id, "tries", len(rec.Failed), "cause", cause)
	}
}

// sweepDead recovers again the tries of children that died within
// DeadSweepFor, catching claims that committed after they died.
func (p *Pool) sweepDead() {
	now := p.cfg.Clock.Now()
	p.mu.Lock()
	var ids, causes []string
	for id, d := range p.dead {
		if now.Sub(d.at) > p.cfg.DeadSweepFor {
			delete(p.dead, id)
			continue
		}
		ids, causes = append(ids, id), append(causes, d.cause)
	}
	p.mu.Unlock()
	for i, id := range ids {
		p.recoverWorker(id, causes[i])
	}
}

// reapLoop kills processes tasks left behind and sweeps the tries of
// recently dead children every ReapInterval.
func (p *Pool) reapLoop() {
	defer p.reapWG.Done()
	t := p.cfg.Clock.NewTimer(p.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stopping:
			return
		case <-t.C():
			if n := p.reapOrphans(); n > 0 {
				p.cfg.Logger.Warn("killed processes left behind by tasks", "processes", n)
			}
			p.sweepDead()
			t.Reset(p.cfg.ReapInterval)
		}
	}
}

// reapOrphans kills and reaps the processes of this pool that were
// re-parented to the supervisor (it is a subreaper): everything a dead
// child or a finished task left behind. Only processes carrying this
// pool's EnvPool mark are touched, so other children of an embedding
// process are safe. It returns how many it killed.
func (p *Pool) reapOrphans() int {
	if p.cfg.KeepOrphans {
		return 0
	}
	p.procMu.Lock()
	defer p.procMu.Unlock()
	mark := EnvPool + "=" + p.poolID
	seen := map[int]bool{}
	killed := 0
	// Killing a process re-parents its own children to us: scan again
	// until a scan finds nothing new (bounded, in case something keeps
	// forking). A process already handled in this call is left to the
	// next one.
	for range 50 {
		procs, err := childrenOf(os.Getpid())
		if err != nil {
			p.cfg.Logger.Warn("look for orphaned processes", "err", err)
			return killed
		}
		found := 0
		for _, pr := range procs {
			if _, ok := p.live[pr.PID]; ok || seen[pr.PID] {
				continue
			}
			if pr.State == 'Z' {
				if !p.ownZombie(pr) {
					continue
				}
			} else if !processEnvironHas(pr.PID, mark) {
				continue
			}
			seen[pr.PID] = true
			killAndReap(pr)
			found++
			if pr.State != 'Z' {
				killed++
			}
		}
		if found == 0 {
			break
		}
	}
	return killed
}

// ownZombie reports whether an exited child (whose environment can no
// longer be read) may be reaped: anything not in the supervisor's own
// process group. Worker children and the tasks they start each lead their
// own group, so that is where every zombie of the pool is; children an
// embedding process starts in its own group are left to their owner (set
// KeepOrphans if it starts children in new groups).
func (p *Pool) ownZombie(pr procInfo) bool {
	return pr.PGID != syscall.Getpgrp()
}

// restartDelay is the wait before restarting a child after failures
// consecutive early deaths: base doubled per failure, capped at max; 0
// for no failures.
func restartDelay(failures int, base, max time.Duration) time.Duration {
	if failures <= 0 {
		return 0
	}
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}

// exitCode returns a child's exit code and whether it exited by itself
// (not by a signal).
func exitCode(err error) (code int, clean bool) {
	if err == nil {
		return 0, true
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return -1, false
		}
		return ee.ExitCode(), true
	}
	return -1, false
}
