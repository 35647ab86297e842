package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// DefaultEventRetention is how long an event is kept when NewEvent.Keep
// is not set: long enough that a task deferring right after its event
// arrived (a fast external system) still finds it.
const DefaultEventRetention = time.Hour

// MaxEventPayload bounds an event's payload, in bytes of JSON.
const MaxEventPayload = 1 << 20

// MaxDedupeKey bounds an event's dedupe key, in bytes.
const MaxDedupeKey = 250

// ErrTooLarge: a payload over its limit.
var ErrTooLarge = errors.New("too large")

// NewEvent is an event to record.
type NewEvent struct {
	Key string
	// Payload is any JSON value (nil = none).
	Payload json.RawMessage
	// DedupeKey, when set, makes a second event with the same key, while
	// the first is kept, a duplicate that changes nothing.
	DedupeKey string
	// At is when it was received (zero = the store's clock).
	At time.Time
	// Keep is how long it is kept for deferrals that come later (≤ 0 =
	// DefaultEventRetention).
	Keep time.Duration
}

// Event is a recorded event.
type Event struct {
	ID         int64
	Key        string
	Payload    json.RawMessage // nil = none
	DedupeKey  string
	ReceivedAt time.Time
	ExpiresAt  time.Time
}

// EventResult reports what RecordEvent did.
type EventResult struct {
	// Event is the event recorded, or for a duplicate the one kept.
	Event Event
	// Duplicate: an event with the same DedupeKey is kept; nothing was
	// done.
	Duplicate bool
	// Runs are the runs created for the DAGs scheduled on the key
	// (queued; the scheduler admits them).
	Runs []Run
	// Continued counts the deferred task instances waiting on the key
	// that the event queued again.
	Continued int
}

// CheckNewEvent returns what is wrong with e (nil when it can be
// recorded), and its payload compacted.
func CheckNewEvent(e NewEvent) (json.RawMessage, error) {
	if err := dag.CheckEventKey(e.Key); err != nil {
		return nil, err
	}
	if len(e.DedupeKey) > MaxDedupeKey {
		return nil, fmt.Errorf("dedupe key is %d bytes long, more than %d", len(e.DedupeKey), MaxDedupeKey)
	}
	if len(e.Payload) > MaxEventPayload {
		return nil, fmt.Errorf("%w: event payload is %d bytes, more than %d", ErrTooLarge, len(e.Payload), MaxEventPayload)
	}
	if e.Payload == nil {
		return nil, nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, e.Payload); err != nil {
		return nil, fmt.Errorf("event payload is not JSON: %v", err)
	}
	return buf.Bytes(), nil
}

// EventTimes returns when e is received and until when it is kept, given
// the store's clock reading now.
func EventTimes(e NewEvent, now time.Time) (at, expires time.Time) {
	at = e.At
	if at.IsZero() {
		at = now
	}
	at = at.UTC().Truncate(time.Microsecond)
	keep := e.Keep
	if keep <= 0 {
		keep = DefaultEventRetention
	}
	return at, at.Add(keep)
}

// EventRun returns the run an event creates for a DAG scheduled on its
// key: run id "event__<received, RFC 3339>__<event id>", logical date and
// data interval at the reception (bumped by bump microseconds when a run
// of the DAG holds that date already), conf the payload when it is an
// object, {"payload": value} for any other value, {} for none.
func EventRun(dagID, fingerprint string, ev Event, bump int) NewRun {
	at := ev.ReceivedAt.Add(time.Duration(bump) * time.Microsecond)
	conf := json.RawMessage(`{}`)
	if p := bytes.TrimSpace(ev.Payload); len(p) > 0 {
		if p[0] == '{' {
			conf = p
		} else {
			conf = append(append(json.RawMessage(`{"payload":`), p...), '}')
		}
	}
	return NewRun{
		DAGID:         dagID,
		RunID:         fmt.Sprintf("event__%s__%d", at.UTC().Format(time.RFC3339Nano), ev.ID),
		RunType:       RunManual,
		LogicalDate:   at,
		IntervalStart: at,
		IntervalEnd:   at,
		Conf:          conf,
		Fingerprint:   fingerprint,
		Note:          fmt.Sprintf("event %q", ev.Key),
		QueuedAt:      ev.ReceivedAt,
	}
}

// DeferredBatch is how many due deferred instances one transaction of
// RequeueRetries queues; it repeats until a batch is not full.
const DeferredBatch = 5000

// ExpireEventsPerEvent is how many expired events RecordEvent deletes
// in its transaction: more than one, so that expired events never pile
// up, and few, so that recording stays cheap.
const ExpireEventsPerEvent = 4

// MaxEventRunBumps bounds how many later microseconds EventRun tries for
// a DAG whose runs hold the event's instant already.
const MaxEventRunBumps = 1000
