package executor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/trellis-dag/trellis/clock"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// Defaults of WorkerConfig and PoolConfig.
const (
	// DefaultSlots is how many tries one worker process runs at once.
	DefaultSlots = 16
	// DefaultHeartbeatInterval is how often a worker heartbeats itself and
	// its running tries. The scheduler's zombie threshold must be several
	// times larger.
	DefaultHeartbeatInterval = 5 * time.Second
	// DefaultGrace is how long a stopping worker lets running tries finish
	// before it cancels and requeues them.
	DefaultGrace = 30 * time.Second
	// DefaultKillGrace is the wait between SIGTERM and SIGKILL for a shell
	// task's process group, and how long a cancelled Func task has to
	// return before it is abandoned.
	DefaultKillGrace = 5 * time.Second
	// DefaultPollInterval is the safety poll of the claim loop; wake-ups
	// normally come from notifications and finished results.
	DefaultPollInterval = time.Second
	// DefaultLogFlushInterval bounds how long task log output stays
	// buffered in the worker.
	DefaultLogFlushInterval = 250 * time.Millisecond
	// DefaultLogFlushBytes flushes a task's log buffer once it holds this
	// much.
	DefaultLogFlushBytes = 64 << 10
	// DefaultMaxLogBytes is how much log of one try a worker sends to the
	// store: the stores' default cap. The worker keeps
	// store.MaxTruncationNote of it free and closes a cut log with its own
	// note, counting every byte dropped.
	DefaultMaxLogBytes = store.DefaultLogCap
	// DefaultMaxOutputBytes caps the JSON output of one try.
	DefaultMaxOutputBytes = 1 << 20
	// DefaultMaxLeaks is how many abandoned task goroutines a worker
	// process tolerates before it drains and exits to be replaced.
	DefaultMaxLeaks = 3
	// DefaultStoreTimeout bounds every store call of a worker.
	DefaultStoreTimeout = 30 * time.Second
)

// WorkerConfig configures a Worker. Store and Registry are required; zero
// values of the other fields take the defaults above.
type WorkerConfig struct {
	// Store is where tries are claimed and results recorded.
	Store store.Store
	// Registry holds the DAGs whose tasks this worker can run.
	Registry *dag.Registry
	// Clock tells the time; clock.Real{} when nil.
	Clock clock.Clock
	// Logger receives the worker's own log (not task logs).
	Logger *slog.Logger

	// ID identifies the worker in the store; default hostname-pid-random.
	ID string
	// Hostname and PID are recorded with the worker and its tries;
	// default os.Hostname() and os.Getpid().
	Hostname string
	PID      int
	// Slots is how many tries run at once.
	Slots int

	// HeartbeatInterval is how often the worker heartbeats.
	HeartbeatInterval time.Duration
	// Grace is how long Stop lets running tries finish.
	Grace time.Duration
	// KillGrace is the SIGTERM→SIGKILL wait for shell tasks and the wait
	// before a cancelled Func task is abandoned.
	KillGrace time.Duration
	// PollInterval is the safety poll of the claim loop.
	PollInterval time.Duration
	// PokeStandby makes the poke loop stand by for the workers that poke:
	// it claims only pokes already pokeStandbyLate overdue (those a poking worker
	// would have claimed), every PollInterval while it finds none, every
	// pokeGap while it does (see pokeLoop). A Pool sets it on every child
	// but the first, so that one process takes whole batches while the
	// others sleep.
	PokeStandby bool
	// FinishDelay, when positive, holds a finished result this long so
	// that more results share its commit. Results that finish while a
	// commit is in flight are always coalesced into the next one.
	FinishDelay time.Duration
	// LogFlushInterval and LogFlushBytes control task log batching.
	LogFlushInterval time.Duration
	LogFlushBytes    int
	// MaxLogBytes is how much log output of one try is sent to the store.
	MaxLogBytes int64
	// MaxOutputBytes caps the JSON output of one try.
	MaxOutputBytes int
	// MaxLeaks is how many abandoned task goroutines the worker tolerates;
	// when reached, it drains and closes LeakLimit. Negative = no limit.
	MaxLeaks int
	// StoreTimeout bounds each store call.
	StoreTimeout time.Duration
	// Events, when set, receives every finish the worker recorded.
	Events Events
	// SpoolDir is where a stopping worker writes the results it could not
	// record (the database unavailable), and where a starting worker
	// looks for such results to deliver. "" = results the store cannot
	// take when the worker stops are lost (logged). See DefaultSpoolDir.
	SpoolDir string
	// TaskEnv is added to the environment of every task (after the safe
	// base, before the task's own variables; see taskrun.TaskEnv). A
	// worker child passes its pool's mark (EnvPool), so the supervisor
	// recognises the processes of its tasks.
	TaskEnv []string
}

func (c *WorkerConfig) withDefaults() (WorkerConfig, error) {
	cfg := *c
	var problems []error
	if cfg.Store == nil {
		problems = append(problems, errors.New("field Store is nil"))
	}
	if cfg.Registry == nil {
		problems = append(problems, errors.New("field Registry is nil"))
	}
	if cfg.Slots < 0 {
		problems = append(problems, fmt.Errorf("field Slots is %d, want at least 1", cfg.Slots))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"HeartbeatInterval", cfg.HeartbeatInterval}, {"Grace", cfg.Grace},
		{"KillGrace", cfg.KillGrace}, {"PollInterval", cfg.PollInterval},
		{"FinishDelay", cfg.FinishDelay}, {"LogFlushInterval", cfg.LogFlushInterval},
		{"StoreTimeout", cfg.StoreTimeout},
	} {
		if d.v < 0 {
			problems = append(problems, fmt.Errorf("field %s is negative (%v)", d.name, d.v))
		}
	}
	if len(problems) > 0 {
		return cfg, fmt.Errorf("worker config: %w", errors.Join(problems...))
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Hostname == "" {
		cfg.Hostname = hostname()
	}
	if cfg.PID == 0 {
		cfg.PID = os.Getpid()
	}
	if cfg.ID == "" {
		cfg.ID = fmt.Sprintf("%s-%d-%s", cfg.Hostname, cfg.PID, randomSuffix())
	}
	setDefault(&cfg.Slots, DefaultSlots)
	setDefault(&cfg.HeartbeatInterval, DefaultHeartbeatInterval)
	setDefault(&cfg.Grace, DefaultGrace)
	setDefault(&cfg.KillGrace, DefaultKillGrace)
	setDefault(&cfg.PollInterval, DefaultPollInterval)
	setDefault(&cfg.LogFlushInterval, DefaultLogFlushInterval)
	setDefault(&cfg.LogFlushBytes, DefaultLogFlushBytes)
	setDefault(&cfg.MaxLogBytes, DefaultMaxLogBytes)
	setDefault(&cfg.MaxOutputBytes, DefaultMaxOutputBytes)
	setDefault(&cfg.MaxLeaks, DefaultMaxLeaks)
	setDefault(&cfg.StoreTimeout, DefaultStoreTimeout)
	cfg.Logger = cfg.Logger.With("worker", cfg.ID)
	return cfg, nil
}

// DefaultSpoolDir is the spool folder of a Pool's workers when none is
// given: trellis/spool under $XDG_STATE_HOME (~/.local/state by default),
// or under the temporary folder when there is no home.
func DefaultSpoolDir() string {
	if d := os.Getenv("XDG_STATE_HOME"); filepath.IsAbs(d) {
		return filepath.Join(d, "trellis", "spool")
	}
	if h, err := os.UserHomeDir(); err == nil && h != "" {
		return filepath.Join(h, ".local", "state", "trellis", "spool")
	}
	return filepath.Join(os.TempDir(), "trellis-spool")
}

// setDefault sets *p to def when it is zero.
func setDefault[T comparable](p *T, def T) {
	var zero T
	if *p == zero {
		*p = def
	}
}

func hostname() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return "localhost"
	}
	return h
}

func randomSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux and always fills b
	return hex.EncodeToString(b[:])
}
