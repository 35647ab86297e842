package openapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
)

// spec is the parsed document and a router over its bare paths, loaded once.
var spec = sync.OnceValues(func() (*specRouter, error) {
	doc, err := Load()
	if err != nil {
		return nil, err
	}
	// Requests carry the /api/v1 prefix of the spec's relative server
	// URL; ValidateResponse strips it and the router matches bare paths.
	doc.Servers = nil
	r, err := legacy.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route Airflow OpenAPI specification: %w", err)
	}
	return &specRouter{doc: doc, router: r}, nil
})

type specRouter struct {
	doc    *openapi3.T
	router routers.Router
}

// isExtension reports Trellis's endpoints that Airflow's specification
// does not have (GET /metrics, GET /api/v1/dags/{id}/graph and /grid, POST
// /api/v1/dagRuns/purge, POST /api/v1/events, POST …/continue, POST
// /api/v1/dags/{id}/calls/{task_id}): only their error bodies are checked.
func isExtension(path string) bool {
	return path == "/metrics" || path == "/api/v1/dagRuns/purge" || path == "/api/v1/events" ||
		(strings.HasPrefix(path, "/api/v1/dags/") && (strings.HasSuffix(path, "/graph") || strings.HasSuffix(path, "/grid") ||
			strings.HasSuffix(path, "/continue") || strings.Contains(path, "/calls/")))
}

// ValidateResponse returns what is wrong with a response of Trellis's API
// to req: any 5xx but 503 (the answer while the database is unavailable,
// or to a cancelled request); an error response that is not an RFC 7807 problem
// matching the specification's Error schema with the HTTP status; a
// response of an endpoint of the specification that does not match the
// operation's schema for its status. op is the id of the operation the
// response was checked against ("" when none). Tests call it on every
// response they get.
func ValidateResponse(req *http.Request, status int, header http.Header, body []byte) (op string, problems []string) {
	sr, err := spec()
	if err != nil {
		return "", []string{err.Error()}
	}
	if status >= 500 && status != http.StatusServiceUnavailable {
		problems = append(problems, fmt.Sprintf("server error %d", status))
	}
	if status >= 400 {
		problems = append(problems, checkProblem(sr, status, header, body)...)
	}
	if isExtension(req.URL.Path) || req.Method == http.MethodHead {
		return "", problems
	}
	bare := req.Clone(context.Background())
	bare.URL.Path = strings.TrimPrefix(req.URL.Path, "/api/v1")
	bare.URL.RawPath = strings.TrimPrefix(req.URL.RawPath, "/api/v1")
	route, params, err := sr.router.FindRoute(bare)
	if err != nil {
		if status < 400 {
			problems = append(problems, fmt.Sprintf("answered %d but the path is not in the specification: %v", status, err))
		}
		return "", problems
	}
	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route},
		Status:                 status,
		Header:                 header,
		Options:                &openapi3filter.Options{MultiError: true},
	}
	input.SetBodyBytes(body)
	if err := openapi3filter.ValidateResponse(context.Background(), input); err != nil {
		problems = append(problems, err.Error())
	}
	return route.Operation.OperationID, problems
}

// checkProblem checks an error response: JSON matching the Error schema,
// with status equal to the HTTP status, and a type, title and detail.
func checkProblem(sr *specRouter, status int, header http.Header, body []byte) []string {
	if ct := header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return []string{"error response Content-Type is " + ct + ", want application/json"}
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		return []string{"error body is not JSON: " + err.Error()}
	}
	var problems []string
	if err := sr.doc.Components.Schemas["Error"].Value.VisitJSON(v, openapi3.VisitAsResponse()); err != nil {
		problems = append(problems, "error body does not match the Error schema: "+err.Error())
	}
	var p struct {
		Type, Title, Detail string
		Status              int
	}
	_ = json.Unmarshal(body, &p)
	if p.Status != status {
		problems = append(problems, fmt.Sprintf("problem status %d, HTTP status %d", p.Status, status))
	}
	if p.Type == "" || p.Title == "" || p.Detail == "" {
		problems = append(problems, "problem without type, title or detail")
	}
	return problems
}
