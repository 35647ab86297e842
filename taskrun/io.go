package taskrun

import (
	"encoding/json"
	"errors"
	"io"
	"sync"

	"github.com/trellis-dag/trellis/dag"
)

// tryLog is the writer a try writes its log through: writes are
// serialised (a Shell command's output, slog lines and panic traces may
// come from several goroutines), errors of the underlying writer are
// swallowed so a full disk never blocks a command on a full pipe, and once
// closed (when Run returns) writes are dropped, so an abandoned goroutine
// never writes into a log its caller has moved on from.
type tryLog struct {
	mu      sync.Mutex
	w       io.Writer
	closed  bool
	midLine bool // the last byte written was not a newline
}

func newTryLog(w io.Writer) *tryLog {
	if w == nil {
		w = io.Discard
	}
	return &tryLog{w: w}
}

func (l *tryLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.write(p)
	return len(p), nil
}

func (l *tryLog) write(p []byte) {
	if l.closed || len(p) == 0 {
		return
	}
	_, _ = l.w.Write(p)
	l.midLine = p[len(p)-1] != '\n'
}

// records returns a writer for whole log records (slog lines, panic
// traces): each starts on a line of its own even when a command's output
// stopped mid-line.
func (l *tryLog) records() io.Writer { return recordWriter{l} }

type recordWriter struct{ l *tryLog }

func (r recordWriter) Write(p []byte) (int, error) {
	r.l.mu.Lock()
	defer r.l.mu.Unlock()
	if r.l.midLine {
		r.l.write([]byte{'\n'})
	}
	r.l.write(p)
	return len(p), nil
}

func (l *tryLog) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
}

// tryOutputs is the dag.OutputIO of one try: SetOutput keeps the value
// for Outcome.Output, Output reads other tasks' outputs through the
// caller's OutputIO (and the try's own output from memory).
type tryOutputs struct {
	under dag.OutputIO
	self  string

	mu     sync.Mutex
	val    json.RawMessage
	closed bool
}

// errTryOver is returned to an abandoned function that still uses its
// Context after Run returned.
var errTryOver = errors.New("the try is over")

func (o *tryOutputs) SetOutput(b []byte) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return errTryOver
	}
	o.val = append(json.RawMessage(nil), b...)
	return nil
}

func (o *tryOutputs) Output(taskID string) ([]byte, error) {
	o.mu.Lock()
	closed, own := o.closed, o.val
	o.mu.Unlock()
	if closed {
		return nil, errTryOver
	}
	if taskID == o.self && own != nil {
		return own, nil
	}
	if o.under == nil {
		return nil, dag.ErrNoOutput
	}
	return o.under.Output(taskID)
}

func (o *tryOutputs) value() json.RawMessage {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.val
}

func (o *tryOutputs) close() {
	o.mu.Lock()
	o.closed = true
	o.mu.Unlock()
}
