package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/go-chi/chi/v5/middleware"

	"github.com/trellis-dag/trellis/store"
)

// Problem is an RFC 7807 problem body, shaped like Airflow's error
// responses: type, title, status and detail.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// errorsDoc is where Airflow documents its error types; the problem type
// of each status names its section there, as Airflow's own responses do.
const errorsDoc = "https://airflow.apache.org/docs/apache-airflow/stable/stable-rest-api-ref.html#section/Errors/"

// problemType returns the RFC 7807 type and title for an HTTP status.
func problemType(status int) (typ, title string) {
	switch status {
	case http.StatusBadRequest:
		return errorsDoc + "BadRequest", "Bad Request"
	case http.StatusUnauthorized:
		return errorsDoc + "Unauthenticated", "Unauthorized"
	case http.StatusForbidden:
		return errorsDoc + "PermissionDenied", "Forbidden"
	case http.StatusNotFound:
		return errorsDoc + "NotFound", "Not Found"
	case http.StatusMethodNotAllowed:
		return errorsDoc + "MethodNotAllowed", "Method Not Allowed"
	case http.StatusNotAcceptable:
		return errorsDoc + "NotAcceptable", "Not Acceptable"
	case http.StatusConflict:
		return errorsDoc + "AlreadyExists", "Conflict"
	case http.StatusInternalServerError:
		return errorsDoc + "Unknown", "Internal Server Error"
	}
	return "about:blank", http.StatusText(status)
}

// apiError is an error a handler returns to answer with a problem body.
type apiError struct {
	status int
	title  string // "" = the status's default title
	detail string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s", e.status, e.detail) }

func badRequest(format string, args ...any) error {
	return &apiError{status: http.StatusBadRequest, detail: fmt.Sprintf(format, args...)}
}

func notFound(title, format string, args ...any) error {
	return &apiError{status: http.StatusNotFound, title: title, detail: fmt.Sprintf(format, args...)}
}

func conflict(format string, args ...any) error {
	return &apiError{status: http.StatusConflict, detail: fmt.Sprintf(format, args...)}
}

// writeProblem answers with an RFC 7807 problem body. The content type is
// application/json, the one Airflow's specification declares for errors.
func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	typ, defTitle := problemType(status)
	if title == "" {
		title = defTitle
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(Problem{Type: typ, Title: title, Status: status, Detail: detail})
}

// writeError answers with the problem body for err. Errors that are not
// *apiError become 500 without any internal detail (503 when the store is
// unavailable); they are logged with the request id the client is told.
func (a *api) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if errors.As(err, &ae) {
		writeProblem(w, ae.status, ae.title, ae.detail)
		return
	}
	if errors.Is(err, r.Context().Err()) && r.Context().Err() != nil {
		// The client went away; nobody reads the answer.
		a.log.Debug("request cancelled", slog.String("path", r.URL.Path), slog.Any("error", err))
		writeProblem(w, http.StatusServiceUnavailable, "", "the request was cancelled")
		return
	}
	reqID := middleware.GetReqID(r.Context())
	if errors.Is(err, store.ErrUnavailable) || errors.Is(err, context.DeadlineExceeded) {
		// The metadatabase is down, unreachable or out of space: the
		// request may succeed later.
		a.log.Warn("request failed: database unavailable", slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.String("request_id", reqID), slog.Any("error", err))
		w.Header().Set("Retry-After", "5")
		writeProblem(w, http.StatusServiceUnavailable, "",
			"The metadatabase is unavailable (request id "+reqID+"); retry later.")
		return
	}
	a.log.Error("request failed", slog.String("method", r.Method), slog.String("path", r.URL.Path),
		slog.String("request_id", reqID), slog.Any("error", err))
	writeProblem(w, http.StatusInternalServerError, "",
		"The server could not complete the request (request id "+reqID+"); the error is in the server log.")
}

// storeError maps the store's sentinel errors to API errors; what (e.g.
// "DAGRun 'r' of DAG 'd'") names the object. Other errors pass unchanged
// (and become 500s).
func storeError(err error, what string) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return notFound("", "%s not found", what)
	case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrStale):
		return conflict("%s: the request conflicts with its current state (it may have changed meanwhile)", what)
	}
	return err
}

func isNotFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func isConflict(err error) bool {
	return errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrStale)
}
