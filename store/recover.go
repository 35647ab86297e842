package store

import (
	"bytes"
	"fmt"
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
