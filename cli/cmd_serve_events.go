package cli

// Task events: how `trellis serve` learns what its worker processes do.
//
// Tries are claimed and finished inside the worker processes, so the serve
// process, which exports the metrics, cannot see those events itself, and
// reading them back from the database would mean scanning task instances.
// Instead the serve process listens on a Unix socket in a private
// directory and hands its path to its worker children in
// TRELLIS_SERVE_EVENTS. Each child wraps its store in a relayStore, which
// sends every try it claims, finishes or gives back over the socket as
// one JSON line, after the store call succeeded, without ever blocking the
// worker (events are dropped when the relay falls behind). The serve
// process applies them to a taskLedger, which feeds the task metrics as
// the events happen and knows which tries run in which worker process.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// envServeEvents carries the path of the serve process's task-event
// socket to its worker children.
const envServeEvents = "TRELLIS_SERVE_EVENTS"

// Kinds of task events.
const (
	// eventClaim: the worker claimed a try (queued → running).
	eventClaim = "claim"
	// eventFinish: the store recorded the outcome of a try.
	eventFinish = "finish"
	// eventDrop: the worker no longer runs a try without an outcome of its
	// own (requeued at shutdown, taken away, or its finish was refused).
	eventDrop = "drop"
)

// taskEvent is one line of the relay protocol. Times are Unix
// nanoseconds; 0 means unknown.
type taskEvent struct {
	Kind    string `json:"k"`
	ID      int64  `json:"id"`
	Try     int    `json:"try"`
	DAGID   string `json:"dag,omitempty"`
	TaskID  string `json:"task,omitempty"`
	State   string `json:"state,omitempty"`
	Queued  int64  `json:"queued,omitempty"`
	Started int64  `json:"started,omitempty"`
	Ended   int64  `json:"ended,omitempty"`
}

// check reports what makes ev unusable.
func (ev taskEvent) check() error {
	if ev.ID <= 0 || ev.Try <= 0 {
		return fmt.Errorf("%s event: task instance %d try %d: want positive numbers", ev.Kind, ev.ID, ev.Try)
	}
	switch ev.Kind {
	case eventClaim:
		if ev.DAGID == "" || ev.TaskID == "" {
			return fmt.Errorf("claim event of task instance %d: no DAG or task id", ev.ID)
		}
	case eventFinish:
		if !state.TaskState(ev.State).Valid() {
			return fmt.Errorf("finish event of task instance %d: unknown state %q", ev.ID, ev.State)
		}
	case eventDrop:
	default:
		return fmt.Errorf("unknown event kind %q", ev.Kind)
	}
	return nil
}

func unixNano(t *time.Time) int64 {
	if t == nil || t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// claimEvents describes the tries a worker claimed.
func claimEvents(claimed []store.Claimed) []taskEvent {
	out := make([]taskEvent, 0, len(claimed))
	for _, c := range claimed {
		out = append(out, taskEvent{
			Kind: eventClaim, ID: c.ID, Try: c.TryNumber, DAGID: c.DAGID, TaskID: c.TaskID,
			Queued: unixNano(c.QueuedAt), Started: unixNano(c.StartedAt),
		})
	}
	return out
}

// finishEvents describes what FinishTasks did with results: a finish
// event with the state written for every applied outcome, a drop for
// every refused one (the try was no longer running: it was taken away).
func finishEvents(results []store.Result, outcomes []store.FinishOutcome) []taskEvent {
	ended := make(map[store.Try]time.Time, len(results))
	for _, r := range results {
		ended[r.Try] = r.EndedAt
	}
	out := make([]taskEvent, 0, len(outcomes))
	for _, o := range outcomes {
		if !o.Applied {
			out = append(out, taskEvent{Kind: eventDrop, ID: o.ID, Try: o.TryNumber})
			continue
		}
		e := ended[o.Try]
		out = append(out, taskEvent{Kind: eventFinish, ID: o.ID, Try: o.TryNumber, State: string(o.State), Ended: unixNano(&e)})
	}
	return out
}

// dropEvents describes tries a worker gave back or lost.
func dropEvents(tries []store.Try) []taskEvent {
	out := make([]taskEvent, 0, len(tries))
	for _, a := range tries {
		out = append(out, taskEvent{Kind: eventDrop, ID: a.ID, Try: a.TryNumber})
	}
	return out
}

// claimInfo is what the ledger remembers of a running try.
type claimInfo struct {
	dagID, taskID string
	started       time.Time // zero: unknown
}

// taskLedger applies task events to the metrics and tracks the tries each
// worker process (each relay connection) runs. It is safe for concurrent
// use.
type taskLedger struct {
	metrics *api.Metrics

	mu      sync.Mutex
	byConn  map[int]map[store.Try]claimInfo
	running int
	// unmatched counts finish events of tries whose claim was not seen
	// (e.g. dropped by a relay that fell behind): counted nowhere.
	unmatched int
}

func newTaskLedger(m *api.Metrics) *taskLedger {
	return &taskLedger{metrics: m, byConn: map[int]map[store.Try]claimInfo{}}
}

// open starts tracking the tries of connection conn.
func (l *taskLedger) open(conn int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.byConn[conn] == nil {
		l.byConn[conn] = map[store.Try]claimInfo{}
	}
}

// close forgets the tries of connection conn: its worker process is gone,
// and the pool hands whatever it was running to the store's recovery.
func (l *taskLedger) close(conn int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.running -= len(l.byConn[conn])
	delete(l.byConn, conn)
}

// apply records one event of connection conn. A malformed event is an
// error and changes nothing.
func (l *taskLedger) apply(conn int, ev taskEvent) error {
	if err := ev.check(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	tries := l.byConn[conn]
	if tries == nil {
		tries = map[store.Try]claimInfo{}
		l.byConn[conn] = tries
	}
	key := store.Try{ID: ev.ID, TryNumber: ev.Try}
	switch ev.Kind {
	case eventClaim:
		info := claimInfo{dagID: ev.DAGID, taskID: ev.TaskID}
		if ev.Started != 0 {
			info.started = time.Unix(0, ev.Started)
			if ev.Queued != 0 {
				l.metrics.TaskQueued(ev.DAGID, max(0, time.Duration(ev.Started-ev.Queued)))
			}
		}
		if _, dup := tries[key]; !dup {
			l.running++
		}
		tries[key] = info
	case eventFinish:
		info, ok := tries[key]
		if !ok {
			l.unmatched++
			return nil
		}
		delete(tries, key)
		l.running--
		var d time.Duration
		if !info.started.IsZero() && ev.Ended != 0 {
			d = max(0, time.Unix(0, ev.Ended).Sub(info.started))
		}
		l.metrics.TaskFinished(info.dagID, info.taskID, ev.State, d)
	case eventDrop:
		if _, ok := tries[key]; ok {
			delete(tries, key)
			l.running--
		}
	}
	return nil
}

// runningTries returns how many tries the worker processes run now.
func (l *taskLedger) runningTries() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running
}

// eventRelay is the serve side of the task-event socket: it accepts the
// connections of worker children and applies their events to a ledger.
type eventRelay struct {
	ledger   *taskLedger
	log      *slog.Logger
	onChange func() // called after each event and each disconnect

	dir, path string
	ln        *net.UnixListener

	mu      sync.Mutex
	conns   map[int]net.Conn
	nextID  int
	stopped bool
	wg      sync.WaitGroup
}

// maxEventLine bounds one line of the protocol.
const maxEventLine = 64 << 10

// relayDrainTimeout is how long Stop lets connections deliver what they
// sent before closing them.
const relayDrainTimeout = 2 * time.Second

// newEventRelay listens on a new socket in a private temporary directory.
func newEventRelay(ledger *taskLedger, log *slog.Logger, onChange func()) (*eventRelay, error) {
	dir, err := os.MkdirTemp("", "trellis-serve-")
	if err != nil {
		return nil, fmt.Errorf("task event socket: %w", err)
	}
	path := filepath.Join(dir, "events.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("task event socket: %w", err)
	}
	if onChange == nil {
		onChange = func() {}
	}
	return &eventRelay{ledger: ledger, log: log, onChange: onChange, dir: dir, path: path, ln: ln, conns: map[int]net.Conn{}}, nil
}

// Path is the socket path to give the worker children.
func (r *eventRelay) Path() string { return r.path }

// Start accepts connections until Stop.
func (r *eventRelay) Start(context.Context) error {
	r.wg.Add(1)
	go r.acceptLoop()
	return nil
}

func (r *eventRelay) acceptLoop() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("task events: accept", "err", err)
			}
			return
		}
		r.mu.Lock()
		if r.stopped {
			r.mu.Unlock()
			_ = c.Close()
			return
		}
		r.nextID++
		id := r.nextID
		r.conns[id] = c
		r.wg.Add(1)
		r.mu.Unlock()
		r.ledger.open(id)
		go r.read(id, c)
	}
}

// read applies the events of one connection until it ends.
func (r *eventRelay) read(id int, c net.Conn) {
	defer r.wg.Done()
	defer func() {
		r.mu.Lock()
		delete(r.conns, id)
		r.mu.Unlock()
		_ = c.Close()
		r.ledger.close(id)
		r.onChange()
	}()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 4096), maxEventLine)
	warned := false
	for sc.Scan() {
		var ev taskEvent
		err := json.Unmarshal(sc.Bytes(), &ev)
		if err == nil {
			err = r.ledger.apply(id, ev)
		}
		if err != nil && !warned {
			warned = true
			r.log.Warn("task events: ignoring a bad event (further ones on this connection are ignored silently)", "err", err)
		}
		r.onChange()
	}
	if err := sc.Err(); err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) {
		r.log.Warn("task events: connection ended", "err", err)
	}
}

// Stop stops accepting, lets connected workers deliver their last events
// for a moment (they are normally gone by then), closes what remains,
// waits for the readers and removes the socket.
func (r *eventRelay) Stop() {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return
	}
	r.stopped = true
	r.mu.Unlock()
	_ = r.ln.Close()
	deadline := time.Now().Add(relayDrainTimeout)
	r.mu.Lock()
	for _, c := range r.conns {
		_ = c.SetReadDeadline(deadline)
	}
	r.mu.Unlock()
	r.wg.Wait()
	_ = os.RemoveAll(r.dir)
}
