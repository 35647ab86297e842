package sqlorder

import (
	"strings"
	"testing"
)

func TestClause(t *testing.T) {
	runs := Order{Columns: map[string]string{"id": "r.id", "start_date": "r.started_at", "dag_id": "r.dag_id"},
		Default: "-start_date", Tie: "r.id"}
	pg := runs
	pg.Nulls = true
	for _, tc := range []struct {
		o    Order
		by   string
		want string
	}{
		{runs, "", " ORDER BY r.started_at DESC, r.id DESC"},
		{runs, "dag_id", " ORDER BY r.dag_id ASC, r.id ASC"},
		{runs, "id", " ORDER BY r.id ASC"},
		{runs, "-id", " ORDER BY r.id DESC"},
		{pg, "start_date", " ORDER BY r.started_at ASC NULLS FIRST, r.id ASC"},
		{pg, "", " ORDER BY r.started_at DESC NULLS LAST, r.id DESC"},
	} {
		got, err := tc.o.Clause(tc.by)
		if err != nil || got != tc.want {
			t.Errorf("Clause(%q) = %q, %v; want %q", tc.by, got, err, tc.want)
		}
	}
	for _, by := range []string{"colour", "-", "--id", "r.id; DROP TABLE x"} {
		if _, err := runs.Clause(by); err == nil || !strings.Contains(err.Error(), "dag_id, id, start_date") {
			t.Errorf("Clause(%q): %v, want an error listing the fields", by, err)
		}
	}
}
