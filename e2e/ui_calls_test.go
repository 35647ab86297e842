package e2e

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/trellis-dag/trellis/internal/testdb"
)

// TestUICalls: the fibonacci DAG's grid shows a run's calls of the
// callable as one cell, green with their count once every call has
// succeeded; it opens the list of the run's calls, and a call's page
// shows its result.
func TestUICalls(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + testdb.SQLite(t)}, serveArgs...)
	c := newClient(t, srv.url, "")
	p := &page{t: t, ctx: ctx, base: srv.url, shots: true}
	// fibonacci(10) with deduplication: 11 call instances, fib(10) first.
	c.ok(http.StatusOK, "POST", "/api/v1/dags/fibonacci/dagRuns", map[string]any{"dag_run_id": "fib10", "conf": map[string]any{"n": 10}})

	p.open("/dags/fibonacci")
	cell := `document.querySelector('#grid .gr[data-task="fibonacci"] a.c.calls')`
	p.until("the calls' cell turns green with their count",
		cell+` && `+cell+`.classList.contains("s-success") && `+cell+`.dataset.calls === "11" && `+cell+`.textContent === "11"`, 90*time.Second)
	if tip := evalJS[string](p, cell+`.title`); !strings.HasPrefix(tip, "fibonacci · fib10\n11 calls: 11 success") {
		t.Errorf("the calls' cell's tooltip is %q, want their count and states", tip)
	}
	if n := evalJS[int](p, `document.querySelectorAll('#grid .gr[data-task="fibonacci"] a.c').length`); n != 1 {
		t.Errorf("the fibonacci row has %d cells for one run, want 1", n)
	}
	p.screenshot("grid-calls")

	p.run("open the run's calls", chromedp.Click(chromedp.CSS(`#grid .gr[data-task="fibonacci"] a.c.calls`)))
	p.until("the list of the run's 11 calls", `document.querySelectorAll("#calls-body tr").length === 11 &&
		document.querySelector("#calls-summary").textContent === "1–11 of 11 calls"`, 20*time.Second)
	p.run("open the first call", chromedp.Click(chromedp.CSS(`#calls-body tr[data-map-index="0"] a`)))
	p.until("the call's page with its result", `document.body.dataset.page === "task" && location.search === "?map_index=0" &&
		document.querySelector("#ti-state").textContent === "success" && document.querySelector("#output").textContent === "55"`, 20*time.Second)
	p.until("the call's log", `document.querySelector("#log").textContent.includes("calculating")`, 20*time.Second)
}
