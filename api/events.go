package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/trellis-dag/trellis/store"
)

// Fields of POST /api/v1/events.
var postEventFields = []string{"key", "payload", "dedupe_key"}

// eventJSON is the answer of POST /api/v1/events.
type eventJSON struct {
	EventID    int64           `json:"event_id"`
	Key        string          `json:"key"`
	Payload    json.RawMessage `json:"payload"`
	DedupeKey  *string         `json:"dedupe_key"`
	ReceivedAt string          `json:"received_at"`
	ExpiresAt  string          `json:"expires_at"`
	Duplicate  bool            `json:"duplicate"`
	DAGRuns    []eventRunID    `json:"dag_runs"`
	// Continued counts the deferred task instances the event queued.
	Continued int `json:"continued_task_instances"`
}

type eventRunID struct {
	DAGID    string `json:"dag_id"`
	DAGRunID string `json:"dag_run_id"`
}

// postEvent records an event: POST /api/v1/events with {"key", "payload",
// "dedupe_key"}. It continues the task instances deferred on the key,
// creates a run of every DAG scheduled on it and is kept for deferrals
// that come later. 201 with the event; 200 with the kept event when
// dedupe_key repeats one; 413 for a payload over store.MaxEventPayload.
func (a *api) postEvent(w http.ResponseWriter, r *http.Request) error {
	b, err := decodeBody(r, postEventFields, nil)
	if err != nil {
		return err
	}
	key, ok, err := b.stringField("key", false)
	if err != nil {
		return err
	}
	if !ok {
		return badRequest("field \"key\" is required")
	}
	dedupe, _, err := b.stringField("dedupe_key", true)
	if err != nil {
		return err
	}
	ne := store.NewEvent{Key: key, DedupeKey: dedupe, At: a.clock.Now(), Keep: a.eventKeep}
	if p, ok := b["payload"]; ok && !isNull(p) {
		ne.Payload = p
	}
	if _, err := store.CheckNewEvent(ne); errors.Is(err, store.ErrTooLarge) {
		return &apiError{status: http.StatusRequestEntityTooLarge, detail: err.Error()}
	} else if err != nil {
		return badRequest("%v", err)
	}
	res, err := a.store.RecordEvent(r.Context(), ne)
	if err != nil {
		return err
	}
	a.metrics.EventReceived(res.Duplicate)
	for _, run := range res.Runs {
		a.metrics.RunCreated(run.DAGID, "event")
	}
	status := http.StatusCreated
	if res.Duplicate {
		status = http.StatusOK
	}
	return writeJSON(w, status, toEvent(res))
}

func toEvent(res store.EventResult) eventJSON {
	ev := res.Event
	out := eventJSON{EventID: ev.ID, Key: ev.Key, Payload: ev.Payload,
		ReceivedAt: formatTime(ev.ReceivedAt), ExpiresAt: formatTime(ev.ExpiresAt),
		Duplicate: res.Duplicate, DAGRuns: []eventRunID{}, Continued: res.Continued}
	if ev.DedupeKey != "" {
		d := ev.DedupeKey
		out.DedupeKey = &d
	}
	for _, r := range res.Runs {
		out.DAGRuns = append(out.DAGRuns, eventRunID{DAGID: r.DAGID, DAGRunID: r.RunID})
	}
	return out
}
