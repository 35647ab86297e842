package store

import (
	"bytes"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/state"
)

// Recovered reports what RecoverWorkerTasks did with the running tries of
// a dead worker.
type Recovered struct {
	// Requeued tries went back to queued keeping their try number.
	Requeued []Try
	// Failed tries were running when their worker died for the second
	// time under that try number (poison): failed, retried while tries
	// remain.
	Failed []Try
}

// PoisonTailLines is how many of its last log lines a poisoned try's error
// quotes.
const PoisonTailLines = 20

// maxPoisonTail bounds the quoted lines in bytes.
const maxPoisonTail = 4 << 10

// PoisonError is the error of a try failed because the workers running it
// died twice in a row: cause (how the second worker died) and the last
// lines of the try's log, lastLog being its last stored bytes. Both
// backends write it, so it is one function.
func PoisonError(cause string, lastLog []byte) string {
	msg := fmt.Sprintf("%s; the worker running this try died twice in a row, so the try is failed rather than put back again", cause)
	tail := bytes.TrimRight(lastLog, "\n")
	if len(tail) > maxPoisonTail {
		tail = tail[len(tail)-maxPoisonTail:]
		if i := bytes.IndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
	}
	lines := bytes.Split(tail, []byte("\n"))
	if len(lines) > PoisonTailLines {
		lines = lines[len(lines)-PoisonTailLines:]
	}
	if len(tail) == 0 {
		return msg + "; its log is empty"
	}
	return msg + "; last log lines:\n" + string(bytes.Join(lines, []byte("\n")))
}

// AppliedOf returns the tries of among whose outcome in out was applied.
func AppliedOf(out []FinishOutcome, among []Try) []Try {
	want := make(map[Try]bool, len(among))
	for _, a := range among {
		want[a] = true
	}
	var applied []Try
	for _, o := range out {
		if o.Applied && want[o.Try] {
			applied = append(applied, o.Try)
		}
	}
	return applied
}

// DeadWorkerTries sorts the tries a dead worker held, as both backends
// recover them: cleared while running (ended with the cause), running when
// the worker before died too (poisoned: failed with its last log lines),
// or put back without using a try.
type DeadWorkerTries struct {
	Back, Poisoned, Cleared []Try
}

// Add sorts t: restarting says it was cleared while running, crashed that
// its previous worker died while running this same try.
func (d *DeadWorkerTries) Add(t Try, restarting, crashed bool) {
	switch {
	case restarting:
		d.Cleared = append(d.Cleared, t)
	case crashed:
		d.Poisoned = append(d.Poisoned, t)
	default:
		d.Back = append(d.Back, t)
	}
}

// Results returns the results that end the poisoned and cleared tries at
// now; lastLog reads a poisoned try's last stored log bytes.
func (d DeadWorkerTries) Results(cause string, now time.Time, lastLog func(Try) ([]byte, error)) ([]Result, error) {
	var results []Result
	for _, t := range d.Poisoned {
		last, err := lastLog(t)
		if err != nil {
			return nil, err
		}
		results = append(results, Result{Try: t, State: state.Failed, Error: PoisonError(cause, last), EndedAt: now})
	}
	for _, t := range d.Cleared {
		results = append(results, Result{Try: t, State: state.Failed, Error: cause, EndedAt: now})
	}
	return results, nil
}
