package api

import (
	"net/http"
	"slices"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// dagDetailJSON is Airflow's DAGDetail: the DAG object and what the
// binary's definition adds. A DAG recorded in the store but absent from
// this binary has null in the fields only the definition knows.
type dagDetailJSON struct {
	dagJSON
	Timezone                   string         `json:"timezone"`
	Catchup                    *bool          `json:"catchup"`
	Orientation                string         `json:"orientation"`
	Concurrency                int            `json:"concurrency"` // Airflow's old name of max_active_tasks
	StartDate                  *apiTime       `json:"start_date"`
	DAGRunTimeout              *timeDeltaJSON `json:"dag_run_timeout,omitempty"` // no run timeout
	DatasetExpression          map[string]any `json:"dataset_expression"`        // no datasets
	DocMD                      *string        `json:"doc_md"`                    // the description is the doc
	Params                     map[string]any `json:"params"`                    // {} when unknown
	EndDate                    *apiTime       `json:"end_date"`                  // nil: none
	IsPausedUponCreation       *bool          `json:"is_paused_upon_creation"`   // a new DAG is not paused
	LastParsed                 *apiTime       `json:"last_parsed"`
	TemplateSearchPath         []string       `json:"template_search_path"`          // no templates
	RenderTemplateAsNativeObjs *bool          `json:"render_template_as_native_obj"` // no templates
}

// dagDetailFields are the members of DAGDetail, for "fields".
var dagDetailFields = append(slices.Clone(dagFields),
	"timezone", "catchup", "orientation", "concurrency", "start_date", "dag_run_timeout",
	"dataset_expression", "doc_md", "params", "end_date", "is_paused_upon_creation", "last_parsed",
	"template_search_path", "render_template_as_native_obj")

func toDAGDetail(d store.DAG, def *dag.DAG) dagDetailJSON {
	out := dagDetailJSON{
		dagJSON:     toDAG(d),
		Orientation: "LR",
		Concurrency: d.MaxActiveTasks,
		Params:      map[string]any{},
		LastParsed:  timeVal(d.UpdatedAt),
		Timezone:    "UTC",
	}
	if tt, err := dag.ParseSchedule(d.Schedule); d.Schedule != "" && err == nil && tt.Location() != nil {
		out.Timezone = tt.Location().String()
	}
	if def == nil {
		return out
	}
	catchup := def.Catchup()
	out.Catchup = &catchup
	if !def.StartDate().IsZero() {
		out.StartDate = timeVal(def.StartDate())
	}
	if !def.EndDate().IsZero() {
		out.EndDate = timeVal(def.EndDate())
	}
	if p := def.Params(); p != nil {
		out.Params = p
	}
	return out
}

// getDAGDetails returns one DAG with what its definition adds:
// GET /api/v1/dags/{dag_id}/details.
func (a *api) getDAGDetails(w http.ResponseWriter, r *http.Request) error {
	dagID, err := pathParam(r, "dag_id")
	if err != nil {
		return err
	}
	fields, err := returnFields(query{r.URL.Query()}, dagDetailFields)
	if err != nil {
		return err
	}
	d, err := a.getStoredDAG(r.Context(), dagID)
	if err != nil {
		return err
	}
	out, err := project(toDAGDetail(d, a.registry.Lookup(dagID)), fields)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, out)
}
