package dag

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"
)

// RunInfo identifies the task try a Context belongs to.
type RunInfo struct {
	DAGID         string
	RunID         string
	TaskID        string
	TryNumber     int
	LogicalDate   time.Time
	IntervalStart time.Time
	IntervalEnd   time.Time
	Params        map[string]any
	// Env is the task's environment as NAME=value, as a Shell task's
	// process would get it; Context.Getenv reads it.
	Env []string
	// Resumed is set when the try continues a deferral: Resumable tasks
	// run Continue, Sensors poke again.
	Resumed bool
	// DeferredState is the State saved by the last deferral (nil = none).
	DeferredState []byte
	// EventPayload is the payload of the event or API call that continued
	// the task (nil = none).
	EventPayload []byte
	// TriggerTimeout is the deadline of the wait the try continues (zero
	// = none).
	TriggerTimeout time.Time
}

// OutputIO stores and reads task outputs (XCom values) as JSON. The
// executor supplies one backed by the store; tests and `dags test` use an
// in-memory one.
type OutputIO interface {
	// SetOutput records the JSON output of the current task try.
	SetOutput(json []byte) error
	// Output returns the JSON output of taskID in the same run, or
	// ErrNoOutput when it has none.
	Output(taskID string) ([]byte, error)
}

// ErrNoOutput is returned by Context.Output when the task recorded no output.
var ErrNoOutput = errors.New("task has no output")

// Context is passed to Func and Branch tasks. It is a context.Context that
// is cancelled on timeout, run cancellation and shutdown.
type Context struct {
	context.Context
	info   RunInfo
	logger *slog.Logger
	io     OutputIO
	calls  Caller
	envs   EnvSource // when set, the environment Getenv reads
}

// EnvSource gives the environment of the try a Context made by
// InitContext belongs to: Environ is called with the Context's RunInfo on
// each Getenv, so it should compute the environment once and keep it.
type EnvSource interface {
	Environ(info *RunInfo) []string
}

// lazyEnv is an environment computed on its first use.
type lazyEnv struct {
	once sync.Once
	f    func() []string
	env  []string
}

func (l *lazyEnv) Environ(*RunInfo) []string {
	l.once.Do(func() { l.env = l.f() })
	return l.env
}

// WithLazyEnv returns a copy of c whose environment (Getenv) is computed
// by f on first use instead of RunInfo.Env: for a runner that calls many
// short functions (a worker's Sensor pokes) most of which never read it.
func (c *Context) WithLazyEnv(f func() []string) *Context {
	cc := *c
	cc.envs = &lazyEnv{f: f}
	return &cc
}

// NewLazyEnvContext is NewContext with WithLazyEnv(env), made in one
// step.
func NewLazyEnvContext(ctx context.Context, info RunInfo, logger *slog.Logger, io OutputIO, env func() []string) *Context {
	c := NewContext(ctx, info, logger, io)
	c.envs = &lazyEnv{f: env}
	return c
}

// NewContext returns a Context for one task try. The executor and the
// `dags test` runner call it; DAG authors receive one.
func NewContext(ctx context.Context, info RunInfo, logger *slog.Logger, io OutputIO) *Context {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Context{Context: ctx, info: info, logger: logger, io: io}
}

// InitContext sets *c to a Context for one task try, as NewContext
// returns one, whose environment (Getenv) env gives when not nil (instead
// of info.Env): for a runner that keeps each try's Context inside a
// structure of its own, made with the try's other parts in one
// allocation (a worker's Sensor pokes), rather than allocating it apart.
// *c is overwritten, so it must be a Context no task has been given.
func InitContext(c *Context, ctx context.Context, info RunInfo, logger *slog.Logger, io OutputIO, env EnvSource) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	*c = Context{Context: ctx, info: info, logger: logger, io: io, envs: env}
}

// WithCaller returns a copy of c whose calls of callables go to k (the
// executor and `dags test` set it).
func (c *Context) WithCaller(k Caller) *Context {
	cc := *c
	cc.calls = k
	return &cc
}

// DAGID returns the DAG id.
func (c *Context) DAGID() string { return c.info.DAGID }

// RunID returns the run id.
func (c *Context) RunID() string { return c.info.RunID }

// TaskID returns the task id.
func (c *Context) TaskID() string { return c.info.TaskID }

// TryNumber returns the try, 1 on the first.
func (c *Context) TryNumber() int { return c.info.TryNumber }

// LogicalDate returns the run's logical date (the start of its interval).
func (c *Context) LogicalDate() time.Time { return c.info.LogicalDate }

// DataInterval returns the run's data interval [start, end).
func (c *Context) DataInterval() (start, end time.Time) {
	return c.info.IntervalStart, c.info.IntervalEnd
}

// Params returns a copy of the run's params: the DAG's Params overlaid by
// the run's conf. To read one param, Param does without the copy.
func (c *Context) Params() map[string]any { return maps.Clone(c.info.Params) }

// Param returns the run's param key (as Params()[key] would, the DAG's
// Params overlaid by the run's conf) and whether it is set, without
// copying the params: for checks that run often, such as a Sensor's. The
// value is shared with the run's other tasks: a map or slice in it must
// not be modified.
func (c *Context) Param(key string) (any, bool) {
	v, ok := c.info.Params[key]
	return v, ok
}

// Getenv returns the value of the variable key in the task's environment:
// the variables set with Env, those inherited with InheritEnv, the safe
// base (PATH, HOME, …) and the TRELLIS_* variables of the try, as a Shell
// task would see them; "" when it is not set. Func tasks run inside the
// worker process, so use Getenv rather than os.Getenv for these.
func (c *Context) Getenv(key string) string {
	env := c.info.Env
	if c.envs != nil {
		env = c.envs.Environ(&c.info)
	}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// Logger returns a logger that writes into the task's log.
func (c *Context) Logger() *slog.Logger { return c.logger }

// SetOutput records v, encoded as JSON, as the task's output.
func (c *Context) SetOutput(v any) error {
	b, err := marshalOutput(v)
	if err != nil {
		return err
	}
	if c.io == nil {
		return errors.New("set output: no output store in this context")
	}
	return c.io.SetOutput(b)
}

// Output decodes the output of taskID in this run into into.
func (c *Context) Output(taskID string, into any) error {
	if c.io == nil {
		return errors.New("read output: no output store in this context")
	}
	b, err := c.io.Output(taskID)
	if err != nil {
		return err
	}
	return unmarshalOutput(taskID, b, into)
}
