package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/taskrun"
)

// Fields of POST …/taskInstances/{task_id}/continue.
var continueFields = []string{"payload", "approved_by", "approved", "comment"}

// Who approves when the request names nobody.
const (
	identityToken     = "api-token"
	identitySession   = "ui-session"
	identityAnonymous = "anonymous"
)

// postContinue continues a deferred task instance: POST
// /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/continue
// with {"payload": …}. For an Approval task the payload is the approval
// itself: who (approved_by, else the identity the request authenticated
// with), when (now), "approved" (default true; false rejects) and a
// comment; a name outside the task's Approvers is 403. 409 unless the
// instance is deferred; 200 with the instance, queued.
func (a *api) postContinue(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	b, err := decodeBody(r, continueFields, nil)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if _, _, err := a.getStoredTI(ctx, dagID, runID, taskID); err != nil {
		return err
	}
	var task *dag.Task
	if d := a.registry.Lookup(dagID); d != nil {
		task = d.Task(taskID)
	}
	var payload json.RawMessage
	if task != nil && task.Kind() == dag.KindApproval {
		if payload, err = a.approval(r, b, task); err != nil {
			return err
		}
	} else {
		for _, f := range []string{"approved_by", "approved", "comment"} {
			if _, ok := b[f]; ok {
				return badRequest("field %q is for Approval tasks; task %q is not one", f, taskID)
			}
		}
		if p, ok := b["payload"]; ok && !isNull(p) {
			payload = p
		}
		if len(payload) > store.MaxEventPayload {
			return &apiError{status: http.StatusRequestEntityTooLarge, detail: "the payload is larger than the event payload limit"}
		}
	}
	ti, err := a.store.ContinueDeferred(ctx, dagID, runID, taskID, payload, a.clock.Now())
	switch {
	case errors.Is(err, store.ErrConflict):
		return conflict("%s", strings.TrimPrefix(err.Error(), "conflict: "))
	case isNotFound(err):
		return taskInstanceNotFound(dagID, runID, taskID)
	case err != nil:
		return err
	}
	run, err := a.getStoredRun(ctx, dagID, runID)
	if err != nil {
		return err
	}
	c := a.newTIContext(ctx)
	return writeJSON(w, http.StatusOK, toTaskInstance(ti, run.LogicalDate, c.kind(dagID, taskID)))
}

// approval builds the payload that continues an Approval task, checking
// who approves against its Approvers.
func (a *api) approval(r *http.Request, b body, task *dag.Task) (json.RawMessage, error) {
	if _, ok := b["payload"]; ok {
		return nil, badRequest("task %q is an Approval: send approved_by, approved and comment, not payload", task.ID())
	}
	by, ok, err := b.stringField("approved_by", false)
	if err != nil {
		return nil, err
	}
	if !ok || by == "" {
		by = a.identity(r)
	}
	approved, err := b.boolField("approved", true)
	if err != nil {
		return nil, err
	}
	comment, _, err := b.stringField("comment", false)
	if err != nil {
		return nil, err
	}
	if ap := task.Approvers(); len(ap) > 0 && !slices.Contains(ap, by) {
		return nil, &apiError{status: http.StatusForbidden,
			detail: "\"" + by + "\" may not approve task \"" + task.ID() + "\"; its approvers are " + strings.Join(ap, ", ")}
	}
	return json.Marshal(taskrun.Approval{Approved: &approved, By: by, At: a.clock.Now().UTC(), Comment: comment})
}

// identity names who sent r when it names nobody: the API token, the
// web UI's session, or nobody (an API without a token).
func (a *api) identity(r *http.Request) string {
	switch {
	case !a.hasToken:
		return identityAnonymous
	case r.Header.Get("Authorization") != "":
		return identityToken
	}
	return identitySession
}
