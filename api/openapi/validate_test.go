package openapi

import (
	"net/http"
	"strings"
	"testing"
)

func TestValidateResponse(t *testing.T) {
	json := http.Header{"Content-Type": []string{"application/json"}}
	req := func(path string) *http.Request {
		r, err := http.NewRequest(http.MethodGet, "http://127.0.0.1"+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	good := `{"type":"about:blank","title":"Not Found","status":404,"detail":"DAG \"x\" not found"}`
	if op, p := ValidateResponse(req("/api/v1/dags/x"), 404, json, []byte(good)); op != "get_dag" || len(p) != 0 {
		t.Errorf("valid 404 problem: op %q, problems %v", op, p)
	}
	if _, p := ValidateResponse(req("/api/v1/dags/x"), 404, json, []byte(`{"status":400}`)); len(p) == 0 {
		t.Error("a problem with the wrong status and no title/detail passed")
	}
	if _, p := ValidateResponse(req("/api/v1/dags/x"), 200, json, []byte(`{"dag_id":7}`)); len(p) == 0 {
		t.Error("a DAG with a numeric dag_id passed")
	}
	if _, p := ValidateResponse(req("/api/v1/nowhere"), 200, json, []byte(`{}`)); len(p) == 0 || !strings.Contains(p[0], "not in the specification") {
		t.Errorf("a 200 on a path outside the specification: %v", p)
	}
	if op, p := ValidateResponse(req("/metrics"), 200, http.Header{}, []byte("x 1\n")); op != "" || len(p) != 0 {
		t.Errorf("the /metrics extension: op %q, problems %v", op, p)
	}
}
