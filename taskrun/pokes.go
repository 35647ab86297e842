package taskrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
)

// Pokes runs the checks of n Sensor pokes, try(i) describing the i-th,
// and calls done(i, outcome) once for each, from any goroutine, before it
// returns. Each poke is run as Poke runs it, but no goroutine, channel or
// timer is made per check: the checks run one after another on one
// goroutine, and on up to parallel goroutines when some are slow — every
// pokeSpread while the batch runs, each check that has been running since
// the last look gets one more goroutine beside it taking the next checks,
// so a check that waits (a request, a query) holds up the rest for about
// that long and a thousand checks that do not wait cost one goroutine, and
// no hand-off of the processor, between them; each check costs one
// allocation (checkScope) and its "not yet" a slot of a block of
// deferrals. One watchdog per batch (the
// same timer) cancels a check's context when its timeout (the task's
// Timeout or Try.Limit, whichever is shorter) passes or ctx ends, and
// abandons a check that ignores that for its KillGrace: its outcome is
// delivered failed with Abandoned set, another goroutine takes over the
// rest of the batch, and the abandoned one is left running, writing
// nowhere. Checks not started when ctx ends are not run: their outcome is
// failed with ctx's cause.
func Pokes(ctx context.Context, n, parallel int, try func(i int) Try, done func(i int, out Outcome)) {
	if n <= 0 {
		return
	}
	b := &pokeBatch{ctx: ctx, base: context.WithoutCancel(ctx), n: n, parallel: max(1, min(parallel, n)), try: try, done: done,
		left: n, over: make(chan struct{})}
	b.timer = time.AfterFunc(time.Hour, b.watch)
	b.timer.Stop()
	stopHalt := context.AfterFunc(ctx, b.halt)
	b.mu.Lock()
	b.startRunnerLocked()
	if b.parallel > 1 {
		b.wake = time.Now().Add(pokeSpread)
		b.timer.Reset(pokeSpread)
	}
	b.mu.Unlock()
	<-b.over
	stopHalt()
	b.mu.Lock()
	b.timer.Stop()
	b.mu.Unlock()
}

// pokeSpread is how long a check of a batch runs before the batch's
// watchdog starts another goroutine beside it (while fewer than the
// batch's parallel run and checks are left): it looks this often while
// the batch runs.
const pokeSpread = 2 * time.Millisecond

// pokeBatch is one call of Pokes.
type pokeBatch struct {
	ctx      context.Context
	base     context.Context // ctx without its cancellation: the checks' parent
	n        int
	parallel int // the most goroutines running checks at once
	try      func(int) Try
	done     func(int, Outcome)

	next atomic.Int64  // the next check to start
	over chan struct{} // closed once every outcome was delivered

	mu      sync.Mutex
	left    int          // outcomes not yet delivered and counted
	slots   []*checkSlot // one per goroutine, abandoned ones included
	runners int          // goroutines started and not abandoned
	wake    time.Time    // when the watchdog next looks (zero: never)
	timer   *time.Timer  // the watchdog
	halted  error        // ctx's cause once it ended
}

// States of a checkSlot: the runner makes it active under the batch's
// lock and idle without it (a compare-and-swap, which fails once the
// watchdog abandoned the check).
const (
	slotIdle int32 = iota
	slotActive
	slotAbandoned
)

// checkSlot is the check a goroutine of a batch runs.
type checkSlot struct {
	state    atomic.Int32 // slotIdle, slotActive or slotAbandoned
	stopped  bool         // its context was cancelled
	owed     int          // outcomes the runner delivered and has not counted in left
	i        int
	scope    *checkScope
	deadline time.Time // of the timeout; zero: none
	grace    time.Duration
	graceEnd time.Time // once stopped: when it is abandoned
	seq      uint64    // counts the checks started in the slot
	seen     uint64    // seq when the watchdog last looked
}

// startRunnerLocked starts a goroutine taking the batch's next checks.
func (b *pokeBatch) startRunnerLocked() {
	s := &checkSlot{}
	b.slots = append(b.slots, s)
	b.runners++
	go b.runner(s)
}

// runner runs the next check until none is left or its check is
// abandoned. Its frame holds each check's Try, one check after another.
// The outcomes it delivers are counted at its next lock of the batch.
func (b *pokeBatch) runner(s *checkSlot) {
	f := &pokeFrame{}
	for {
		i := int(b.next.Add(1)) - 1
		if i >= b.n {
			b.mu.Lock()
			b.countLocked(s)
			b.mu.Unlock()
			return
		}
		f.t = b.try(i)
		out, ok := b.check(s, i, f)
		if !ok {
			return // the watchdog delivered its outcome and started another runner
		}
		b.done(i, out)
		s.owed++
	}
}

// countLocked counts the outcomes s delivered (and, with s nil, one the
// watchdog delivered), and ends the batch once all were.
func (b *pokeBatch) countLocked(s *checkSlot) {
	n := 1
	if s != nil {
		n, s.owed = s.owed, 0
	}
	if n > 0 {
		b.left -= n
		if b.left == 0 {
			close(b.over)
		}
	}
}

// check runs the i-th check, whose Try is in f, in slot s; false when it
// was abandoned meanwhile.
func (b *pokeBatch) check(s *checkSlot, i int, f *pokeFrame) (Outcome, bool) {
	var timeout time.Duration
	if f.t.Task != nil {
		timeout = f.t.Task.Timeout()
	}
	if f.t.Limit > 0 && (timeout <= 0 || f.t.Limit < timeout) {
		timeout = f.t.Limit
	}
	grace := f.t.KillGrace
	if grace <= 0 {
		grace = DefaultKillGrace
	}
	now := time.Now()
	sc := newCheckScope(&b.base, &f.t, f.extraEnv())
	if timeout > 0 {
		sc.ctx.deadline, sc.ctx.timeout = now.Add(timeout), timeout
	}
	deadline := sc.ctx.deadline
	b.mu.Lock()
	b.countLocked(s)
	if b.halted != nil {
		cause := b.halted
		b.mu.Unlock()
		sc.close()
		return failed(cause, false), true
	}
	s.stopped, s.i, s.scope, s.deadline, s.grace, s.graceEnd = false, i, sc, deadline, grace, time.Time{}
	s.state.Store(slotActive)
	s.seq++
	if !deadline.IsZero() && (b.wake.IsZero() || deadline.Before(b.wake)) {
		b.wake = deadline
		b.timer.Reset(deadline.Sub(now))
	}
	b.mu.Unlock()

	out, closed := f.run(sc, now)
	if !closed {
		sc.close()
	}
	return out, s.state.CompareAndSwap(slotActive, slotIdle)
}

// halt stops the running checks when the batch's context ends.
func (b *pokeBatch) halt() {
	cause := context.Cause(b.ctx)
	now := time.Now()
	b.mu.Lock()
	b.halted = cause
	for _, s := range b.slots {
		if s.state.Load() == slotActive && !s.stopped {
			s.scope.ctx.cancel(cause)
			s.stopped, s.graceEnd = true, now.Add(s.grace)
		}
	}
	abandon := b.scanLocked(now)
	b.mu.Unlock()
	b.abandon(abandon)
}

// watch is the watchdog: it cancels checks past their timeout and
// abandons checks past their grace.
func (b *pokeBatch) watch() {
	now := time.Now()
	b.mu.Lock()
	abandon := b.scanLocked(now)
	b.mu.Unlock()
	b.abandon(abandon)
}

// scanLocked cancels the checks whose timeout passed, returns those
// whose grace ended (no longer active) and sets the watchdog for the
// next of either.
func (b *pokeBatch) scanLocked(now time.Time) []*checkSlot {
	if b.left == 0 {
		return nil
	}
	var abandon []*checkSlot
	var next time.Time
	for _, s := range b.slots {
		if s.state.Load() != slotActive {
			continue
		}
		if !s.stopped && !s.deadline.IsZero() && !now.Before(s.deadline) {
			s.scope.ctx.expire()
			s.stopped, s.graceEnd = true, now.Add(s.grace)
		}
		if s.stopped && !now.Before(s.graceEnd) {
			if s.state.CompareAndSwap(slotActive, slotAbandoned) {
				abandon = append(abandon, s)
			}
			continue
		}
		at := s.deadline
		if s.stopped {
			at = s.graceEnd
		}
		if !at.IsZero() && (next.IsZero() || at.Before(next)) {
			next = at
		}
	}
	if b.spreadLocked() {
		if at := now.Add(pokeSpread); next.IsZero() || at.Before(next) {
			next = at
		}
	}
	b.wake = next
	if !next.IsZero() {
		b.timer.Reset(next.Sub(now))
	}
	return abandon
}

// spreadLocked starts a goroutine beside each check that has run since
// the watchdog last looked (within parallel and the checks left), and
// says whether to look again: checks are left to start and more
// goroutines could take them.
func (b *pokeBatch) spreadLocked() bool {
	if b.halted != nil {
		return false
	}
	left := b.n - int(b.next.Load())
	for _, s := range b.slots {
		if left <= 0 || b.runners >= b.parallel {
			break
		}
		if s.state.Load() != slotActive || s.stopped {
			continue
		}
		if s.seq == s.seen {
			b.startRunnerLocked()
			left--
		}
		s.seen = s.seq
	}
	return left > 0 && b.runners < b.parallel
}

// abandon delivers the outcomes of abandoned checks and replaces their
// goroutines.
func (b *pokeBatch) abandon(slots []*checkSlot) {
	for _, s := range slots {
		b.mu.Lock()
		b.runners--
		b.startRunnerLocked()
		b.mu.Unlock()
		cause, timedOut := s.scope.ctx.stopCause()
		out := Outcome{State: state.Failed, TimedOut: timedOut, Abandoned: true, Err: fmt.Errorf(
			"%w; the function ignored its context for %v and was abandoned", cause, s.grace)}
		logOutcome(&s.scope.logger, out, true)
		s.scope.close()
		b.done(s.i, out)
		b.mu.Lock()
		b.countLocked(nil)
		b.mu.Unlock()
	}
}

// checkCtx is the context of one check. The batch's watchdog ends it (no
// timer per check), and the contexts behind Done, Err and Value — a
// cancelCtx under the batch's context and, with a timeout, a deadline
// under it, as Run makes them — are made only when the check first calls
// one of them: most checks never do. Made late, they are made ended, with
// the cause already given (a deadline in the past ends at once), so Err,
// context.Cause and derived contexts show what they would have.
type checkCtx struct {
	base     *context.Context // without cancellation (the batch's): cancel ends the check
	deadline time.Time        // zero: none
	timeout  time.Duration

	made  *madeCtx // once made
	cause error    // set once ended
	log   tryLog   // the check's log, whose lock also guards made and cause
}

// madeCtx holds the contexts of a checkCtx once made (apart: most checks
// never make them, and the checkCtx is made for every check).
type madeCtx struct {
	inner    context.Context
	stop     context.CancelCauseFunc // of the cancelCtx under inner's deadline
	stopTime context.CancelFunc      // of the deadline
}

// end ends the made contexts, the cancelCtx with cause; m may be nil.
func (m *madeCtx) end(cause error) {
	if m == nil {
		return
	}
	m.stop(cause)
	if m.stopTime != nil {
		m.stopTime()
	}
}

func (c *checkCtx) Deadline() (time.Time, bool) { return c.deadline, !c.deadline.IsZero() }
func (c *checkCtx) Done() <-chan struct{}       { return c.ctx().Done() }
func (c *checkCtx) Err() error                  { return c.ctx().Err() }
func (c *checkCtx) Value(key any) any           { return c.ctx().Value(key) }

func (c *checkCtx) ctx() context.Context {
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	if c.made == nil {
		m := &madeCtx{}
		m.inner, m.stop = context.WithCancelCause(*c.base)
		if c.cause != nil && !errors.Is(c.cause, ErrTimeout) {
			m.stop(c.cause)
		}
		if !c.deadline.IsZero() {
			m.inner, m.stopTime = context.WithDeadlineCause(m.inner, c.deadline, timeoutCause(c.timeout))
		}
		c.made = m
	}
	return c.made.inner
}

// cancel ends the context with cause (the worker halts, the check is
// over); the first cause stays.
func (c *checkCtx) cancel(cause error) {
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	if c.cause == nil {
		c.cause = cause
	}
	c.made.end(cause)
}

// expire ends the context as its deadline does, unless it ended already:
// contexts made from it have their own deadline.
func (c *checkCtx) expire() {
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	if c.cause == nil {
		c.cause = timeoutCause(c.timeout)
	}
}

// end ends the context once its check returned — expired first when its
// deadline passed (as a timer would have by now), then cancelled — and
// returns why it had ended, as stopCause would have just before; with
// quiet (nothing more is logged) it closes the log and outputs too unless
// the deadline passed: one lock for all.
func (c *checkCtx) end(quiet bool) (error, bool) {
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	// Until reads only the monotonic clock: the deadline has its reading.
	if c.cause == nil && !c.deadline.IsZero() && time.Until(c.deadline) <= 0 {
		c.cause = timeoutCause(c.timeout)
	}
	cause := c.cause
	if c.cause == nil {
		c.cause = context.Canceled
	}
	c.made.end(context.Canceled)
	timedOut := cause != nil && errors.Is(cause, ErrTimeout)
	if quiet && !timedOut {
		c.log.closed = true
	}
	return cause, timedOut
}

// stopCause returns why the context ended, as the package's stopCause
// does, without making its contexts; nil when it has not.
func (c *checkCtx) stopCause() (error, bool) {
	c.log.mu.Lock()
	defer c.log.mu.Unlock()
	return c.cause, c.cause != nil && errors.Is(c.cause, ErrTimeout)
}

// pokeFrame is a runner's: the Try of its current check, reused from
// one check to the next. Nothing a check's function is given points into
// it, so reusing it cannot show one check's state to another.
type pokeFrame struct {
	t    Try
	env  *[]string  // a copy of the last Try.Env, shared while checks give the same slice
	defs []Deferral // the block the next checks' deferrals are taken from
}

// extraEnv returns a pointer to t.Env for the check's scope (8 bytes
// there instead of 24), made anew only when the slice changes.
func (f *pokeFrame) extraEnv() *[]string {
	e := f.t.Env
	if f.env == nil || len(*f.env) != len(e) || cap(*f.env) != cap(e) || (len(e) > 0 && &(*f.env)[0] != &e[0]) {
		f.env = new([]string)
		*f.env = e
	}
	return f.env
}

// deferralBlock is how many deferrals a frame allocates at once.
const deferralBlock = 32

// newDeferral returns a Deferral for one outcome, never given to another:
// taken from a block, one allocation per deferralBlock checks rather than
// 104 bytes more in each checkScope.
func (f *pokeFrame) newDeferral() *Deferral {
	if len(f.defs) == 0 {
		f.defs = make([]Deferral, deferralBlock)
	}
	d := &f.defs[0]
	f.defs = f.defs[1:]
	return d
}

// checkScope is everything one check's function can reach — its
// dag.Context and, through it, the check's context, logger, log, outputs
// and environment — made for each check in one allocation. It is never
// reused: no rule can tell that a function let go of what it was given
// (it may keep its *dag.Context in a variable, or hand it to a goroutine
// that already runs, without calling anything), and a Context kept past
// its check must go on showing that check's params and ids, its ended
// context, a closed log and outputs — never the next check's.
// Materialising the inner context (Done, Err, Value) or starting
// goroutines are only some of the ways a check keeps them. It is kept
// within 480 bytes (a size class without a malloc header): what only
// some checks use is behind pointers made when first used.
type checkScope struct {
	c      dag.Context
	ctx    checkCtx                         // with the check's log, whose lock and closed flag guard the outputs too
	logger slog.Logger                      // its handler is the scope's scopeText
	text   atomic.Pointer[slog.TextHandler] // made on the first record

	// The outputs (as scopeOutputs): the run's, and the check's own.
	under dag.OutputIO
	own   *json.RawMessage

	// What Environ needs beside the Context's info, and what it made.
	task  *dag.Task
	extra *[]string
	env   atomic.Pointer[[]string]
}

// newCheckScope makes the scope of the check of t, its context under
// *base, the extra environment *extra (t.Env).
func newCheckScope(base *context.Context, t *Try, extra *[]string) *checkScope {
	sc := &checkScope{task: t.Task, extra: extra, under: t.Outputs}
	sc.ctx.log.w = t.Log
	if sc.ctx.log.w == nil {
		sc.ctx.log.w = io.Discard
	}
	sc.logger = *slog.New((*scopeText)(sc))
	sc.ctx.base = base
	dag.InitContext(&sc.c, &sc.ctx, t.Info, &sc.logger, (*scopeOutputs)(sc), sc)
	return sc
}

// Environ is the check's environment, made when it first reads it
// (Getenv): most checks never do. Two reading it at once may both make
// it; one is kept.
func (sc *checkScope) Environ(info *dag.RunInfo) []string {
	if env := sc.env.Load(); env != nil {
		return *env
	}
	env := TaskEnv(Try{Task: sc.task, Env: *sc.extra, Info: *info}, nil, nil)
	sc.env.CompareAndSwap(nil, &env)
	return *sc.env.Load()
}

// close ends the check's log and outputs: an abandoned check, or a
// function that kept its Context, writes nowhere.
func (sc *checkScope) close() { sc.ctx.log.close() }

// scopeText is a check's slog handler: text at debug level on its log's
// records, the handler made when the first record or derived logger
// needs it (two at once may both make one; one is kept).
type scopeText checkScope

func (h *scopeText) handler() slog.Handler {
	if t := h.text.Load(); t != nil {
		return t
	}
	h.text.CompareAndSwap(nil, slog.NewTextHandler(h.ctx.log.records(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	return h.text.Load()
}

func (h *scopeText) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelDebug }
func (h *scopeText) Handle(ctx context.Context, r slog.Record) error {
	return h.handler().Handle(ctx, r)
}
func (h *scopeText) WithAttrs(as []slog.Attr) slog.Handler { return h.handler().WithAttrs(as) }
func (h *scopeText) WithGroup(name string) slog.Handler    { return h.handler().WithGroup(name) }

// scopeOutputs is a check's dag.OutputIO, as tryOutputs is a try's:
// SetOutput keeps the value for the outcome, Output reads other tasks'
// outputs (and the check's own from memory); both fail once the log is
// closed.
type scopeOutputs checkScope

func (o *scopeOutputs) SetOutput(b []byte) error {
	v := append(json.RawMessage(nil), b...)
	o.ctx.log.mu.Lock()
	defer o.ctx.log.mu.Unlock()
	if o.ctx.log.closed {
		return errTryOver
	}
	o.own = &v
	return nil
}

func (o *scopeOutputs) Output(taskID string) ([]byte, error) {
	o.ctx.log.mu.Lock()
	closed, own := o.ctx.log.closed, o.own
	o.ctx.log.mu.Unlock()
	if closed {
		return nil, errTryOver
	}
	if own != nil && taskID == o.c.TaskID() {
		return *own, nil
	}
	if o.under == nil {
		return nil, dag.ErrNoOutput
	}
	return o.under.Output(taskID)
}

// value is the check's output; nil when it set none.
func (o *scopeOutputs) value() json.RawMessage {
	o.ctx.log.mu.Lock()
	defer o.ctx.log.mu.Unlock()
	if o.own == nil {
		return nil
	}
	return *o.own
}

// run runs the check on this goroutine and returns the poke's outcome,
// as Run would for the try of a Sensor continued by time, its "not yet"
// not logged, and whether it closed the scope's log; now is when the
// check started.
func (f *pokeFrame) run(sc *checkScope, now time.Time) (Outcome, bool) {
	t := &f.t
	if t.Task == nil || t.Task.Kind() != dag.KindSensor {
		return failed(errors.New("poke: the task is not a Sensor"), true), false
	}
	if t.Now != nil {
		now = t.Now()
	}
	if out, ok := waitTimedOut(t, now); ok {
		sc.logger.Warn("the wait timed out", "deadline", t.Info.TriggerTimeout.Format(time.RFC3339Nano))
		return out, false
	}
	out, notYet := f.check(sc)
	if notYet {
		d := f.newDeferral()
		*d = deferral(t, Deferral{after: t.Task.PokeInterval()}, now)
		return Outcome{State: state.Deferred, Deferral: d}, true
	}
	if out.State == state.Deferred {
		d := f.newDeferral()
		*d = deferral(t, *out.Deferral, now)
		out.Deferral = d
	}
	logOutcome(&sc.logger, out, true)
	return out, false
}

// check calls the Sensor's check and says what it answered; notYet when
// it said "not yet" with the task's PokeInterval (out is then unset, the
// log closed).
func (f *pokeFrame) check(sc *checkScope) (out Outcome, notYet bool) {
	task := f.t.Task
	fn := task.SensorFn()
	if fn == nil {
		return failed(fmt.Errorf("task %q has no function", task.ID()), true), false
	}
	ok, err := callCheck(&sc.c, fn, sc.ctx.log.records())
	quiet := err == nil && !ok && task.PokeInterval() >= 0
	if cause, timedOut := sc.ctx.end(quiet); timedOut {
		if err != nil {
			cause = fmt.Errorf("%w (task returned: %v)", cause, err)
		}
		return Outcome{State: state.Failed, TimedOut: true, Err: cause}, false
	}
	switch {
	case err != nil:
		return classify(err), false
	case ok:
		return Outcome{State: state.Success, Output: (*scopeOutputs)(sc).value()}, false
	case quiet:
		return Outcome{}, true
	}
	return classify(sc.c.Defer(dag.Wait{After: task.PokeInterval()})), false
}

// callCheck calls a Sensor's check; a panic is an error, its value and
// stack trace written to logw.
func callCheck(c *dag.Context, fn func(*dag.Context) (bool, error), logw io.Writer) (ok bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(logw, "panic: %v\n\n%s\n", p, debug.Stack())
			ok, err = false, fmt.Errorf("panic: %v", p)
		}
	}()
	return fn(c)
}
