//go:build linux

package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/trellis-dag/trellis/dag"
	_ "github.com/trellis-dag/trellis/dags" // the example DAGs, as in the binary
	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
)

// The UI tests drive Debian's Chromium, headless, against a real
// `trellis serve`. They skip when no Chromium is installed, unless
// TRELLIS_TEST_REQUIRE_CHROMIUM is set (.ci/run installs Chromium and sets
// it). With TRELLIS_UI_SCREENSHOTS=<dir> they save screenshots
// of the pages there (docs/ keeps the README's).

// envScreenshots names the folder the UI tests save screenshots to.
const envScreenshots = "TRELLIS_UI_SCREENSHOTS"

// envRequireChromium, when set (.ci/run sets it), makes the UI tests fail
// rather than skip without Chromium.
const envRequireChromium = "TRELLIS_TEST_REQUIRE_CHROMIUM"

// chromium returns the path of a Chromium or Chrome binary, or skips.
func chromium(t testing.TB) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium binary on PATH (chromium, chromium-browser, google-chrome): install it with `apt-get install -y chromium` to run the browser tests"
	if os.Getenv(envRequireChromium) != "" {
		t.Fatalf("%s (%s is set: they must run)", msg, envRequireChromium)
	}
	t.Skip(msg)
	return ""
}

// browser starts a headless Chromium for the test and returns its tab's
// context (every step derives its own deadline from it).
func browser(t testing.TB) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox, // tests run as root in CI containers
		chromedp.DisableGPU,
		chromedp.WindowSize(1440, 900),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return ctx
}

// page is a browser tab on a trellis server.
type page struct {
	t     testing.TB
	ctx   context.Context
	base  string
	shots bool // screenshot saves
}

// stepTimeout bounds one step of a browser test.
const stepTimeout = 30 * time.Second

func (p *page) run(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("%s: %v", what, err)
	}
}

// evalJS evaluates a JavaScript expression in the page.
func evalJS[T any](p *page, expr string, opts ...chromedp.EvaluateOption) T {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr, opts...))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

func (p *page) open(path string) {
	p.t.Helper()
	p.run("open "+path, chromedp.Navigate(p.base+path), chromedp.WaitReady(chromedp.CSS("body")))
}

// until polls the JavaScript expression until it is true.
func (p *page) until(what, expr string, timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if err == nil && ok {
			return
		}
		if err != nil {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
			text, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText.slice(0, 1500)`))
			cancel()
			p.t.Fatalf("%s: not within %v (%s)\npage:\n%s", what, timeout, last, text)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// screenshot saves the page as name.png in $TRELLIS_UI_SCREENSHOTS.
func (p *page) screenshot(name string) {
	p.t.Helper()
	dir := os.Getenv(envScreenshots)
	if dir == "" || !p.shots {
		return
	}
	p.run("settle", chromedp.Sleep(300*time.Millisecond))
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		p.t.Fatalf("screenshot: %v", err)
	}
	if err = os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		p.t.Fatalf("save screenshot: %v", err)
	}
}

func TestUISQLite(t *testing.T) {
	t.Parallel()
	testUI(t, testdb.SQLite(t), true)
}

func TestUIPostgres(t *testing.T) {
	t.Parallel()
	testUI(t, testdb.Postgres(t), false)
}

// testUI drives the UI as a user would: the DAG list, the trigger form,
// the grid turning green without a reload, the retried task's logs, a
// task cleared and run again, a DAG paused.
func testUI(t *testing.T, dbURL string, shots bool) {
	ctx := browser(t)
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + dbURL}, serveArgs...)
	c := newClient(t, srv.url, "")
	p := &page{t: t, ctx: ctx, base: srv.url}
	p.shots = shots // one set of screenshots is enough

	// The DAG list shows every example DAG with a trigger button.
	p.open("/")
	p.until("the DAG list shows etl_example", `[...document.querySelectorAll("a.dag-link")].some(a => a.textContent === "etl_example")`, 20*time.Second)
	p.until("the DAG list has trigger buttons", `document.querySelector('a[href="/dags/etl_example/trigger"]')`, 5*time.Second)

	// The trigger form is pre-filled with the DAG's params; trigger.
	p.run("open the trigger form", chromedp.Click(chromedp.CSS(`a[href="/dags/etl_example/trigger"]`)), chromedp.WaitVisible(chromedp.CSS("#conf")))
	conf := evalJS[string](p, `document.querySelector("#conf").value`)
	if !strings.Contains(conf, `"rows"`) {
		t.Errorf("the trigger form's conf is not pre-filled with the params: %q", conf)
	}
	p.run("fill the trigger form",
		chromedp.SetValue(chromedp.CSS("#conf"), `{"rows": 30}`),
		chromedp.SendKeys(chromedp.CSS("#run-id-input"), "ui_run"),
		chromedp.Click(chromedp.CSS("#trigger-submit")))

	// The DAG page's grid turns green without a reload.
	p.until("the DAG page opens", `document.body.dataset.page === "dag" && document.querySelector('#grid [data-run="ui_run"]')`, 20*time.Second)
	evalJS[int](p, `window.__noReload = 1`)
	p.until("the run turns green in the grid", `document.querySelector('#grid [data-run="ui_run"] a.rb.s-success')`, 60*time.Second)
	if !evalJS[bool](p, `window.__noReload === 1`) {
		t.Errorf("the DAG page was reloaded while the run progressed")
	}
	cells := evalJS[map[string]int](p, `(() => { const m = {}; document.querySelectorAll('#grid-table a.c[href*="/runs/ui_run/"]').forEach(a => m[a.dataset.state] = (m[a.dataset.state] || 0) + 1); return m; })()`)
	if cells["success"] != 6 || cells["skipped"] != 1 {
		t.Errorf("grid cells of ui_run by state = %v, want 6 success and 1 skipped", cells)
	}
	p.screenshot("ui-grid")

	// The grid is keyboard-navigable: arrows move between cells.
	evalJS[bool](p, `document.querySelector('#grid-table .gr[data-i="0"] a.c').focus(), true`)
	p.run("press the down and right arrows", chromedp.KeyEvent(kb.ArrowDown), chromedp.KeyEvent(kb.ArrowRight))
	if got := evalJS[string](p, `(() => { const a = document.activeElement; return a.parentNode.dataset.i + "," + [...a.parentNode.querySelectorAll("a.c")].indexOf(a); })()`); got != "1,1" {
		t.Errorf("after the down and right arrows from the first cell, the focus is on row,column %s, want 1,1", got)
	}

	// The graph, coloured by the run.
	p.run("open the graph", chromedp.Click(chromedp.CSS("#tab-graph")))
	p.until("the graph is laid out and coloured", `document.querySelectorAll('#graph a.node[data-state="success"]').length === 6`, 20*time.Second)
	p.screenshot("ui-graph")

	// The failed-then-retried task's logs: two tries, the first failed.
	p.open("/dags/etl_example/runs/ui_run/tasks/extract")
	p.until("the task page shows two tries", `document.querySelectorAll("#tries [data-try]").length === 2`, 20*time.Second)
	p.until("the latest try's log", `document.querySelector("#log").textContent.includes("extracted orders")`, 20*time.Second)
	p.run("open try 1", chromedp.Click(chromedp.CSS(`#tries [data-try="1"]`)))
	p.until("the first try's log shows its failure", `document.querySelector("#log").textContent.includes("source system not ready")`, 20*time.Second)
	p.until("the output is shown", `document.querySelector("#output").textContent.includes("amount_cents") || document.querySelector("#output").textContent.includes("customer")`, 20*time.Second)
	href := evalJS[string](p, `document.querySelector("#download").getAttribute("href")`)
	if r := c.do("GET", href, nil); r.status != http.StatusOK || !strings.Contains(string(r.body), "source system not ready") {
		t.Errorf("the download link %s answered %d: %.200s", href, r.status, r.body)
	}
	p.screenshot("ui-task")

	// Clear report on the run page: it runs again (try 2) and succeeds.
	p.open("/dags/etl_example/runs/ui_run")
	p.until("the run page lists the task instances", `document.querySelector('.ti-row[data-task="report"] button[data-act="clear"]')`, 20*time.Second)
	p.run("clear report", chromedp.Click(chromedp.CSS(`.ti-row[data-task="report"] button[data-act="clear"]`)))
	p.until("report runs again and succeeds", `(() => { const r = document.querySelector('.ti-row[data-task="report"]');
		return r && r.textContent.includes("success") && r.children[2].textContent.startsWith("2/"); })()`, 60*time.Second)
	p.screenshot("ui-run")

	// Mark a task failed, then delete the run (a second click confirms).
	p.run("mark cleanup failed", chromedp.Click(chromedp.CSS(`.ti-row[data-task="cleanup"] button[data-act="failed"]`)))
	p.until("cleanup is failed", `(() => { const r = document.querySelector('.ti-row[data-task="cleanup"]'); return r && r.textContent.includes("failed"); })()`, 20*time.Second)
	p.until("the run can be deleted", `!document.querySelector("#run-delete").disabled`, 20*time.Second)
	p.run("delete the run", chromedp.Click(chromedp.CSS("#run-delete")), chromedp.Click(chromedp.CSS("#run-delete")))
	p.until("back on the DAG page", `document.body.dataset.page === "dag"`, 20*time.Second)
	if r := c.do("GET", "/api/v1/dags/etl_example/dagRuns/ui_run", nil); r.status != http.StatusNotFound {
		t.Errorf("the deleted run answers %d, want 404", r.status)
	}

	// Pause a DAG from the list.
	p.open("/")
	p.until("the pause switch", `document.querySelector('input[data-pause="backup_automation"]')`, 20*time.Second)
	p.run("pause backup_automation", chromedp.Click(chromedp.CSS(`input[data-pause="backup_automation"]`)))
	eventually(t, 20*time.Second, "backup_automation is paused", func() (bool, string) {
		d := c.ok(http.StatusOK, "GET", "/api/v1/dags/backup_automation", nil)
		return d["is_paused"] == true, fmt.Sprint(d["is_paused"])
	})
	p.screenshot("ui-dags")
}

// TestUILogin: with a token, the UI asks for it once, refuses a wrong one
// and keeps the right one in an HttpOnly cookie the page's script cannot
// read; the API accepts the cookie.
func TestUILogin(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	const token = "ui-test-token-0123456789"
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + testdb.SQLite(t), "TRELLIS_API_TOKEN=" + token}, serveArgs...)
	p := &page{t: t, ctx: ctx, base: srv.url, shots: true}

	p.open("/dags/etl_example")
	p.until("the login page", `location.pathname === "/login" && document.querySelector("#token")`, 10*time.Second)
	p.run("log in with a wrong token", chromedp.SendKeys(chromedp.CSS("#token"), "wrong"), chromedp.Click(chromedp.CSS("#login-submit")))
	p.until("the wrong token is refused", `document.querySelector(".error") && location.pathname === "/login"`, 10*time.Second)
	p.run("log in", chromedp.SendKeys(chromedp.CSS("#token"), token), chromedp.Click(chromedp.CSS("#login-submit")))
	p.until("back on the DAG page with its grid", `location.pathname === "/dags/etl_example" && document.querySelector("#grid-summary").textContent.includes("tasks")`, 20*time.Second)
	cookies := evalJS[string](p, `document.cookie`)
	if strings.Contains(cookies, "trellis_session") {
		t.Errorf("the session cookie is readable by scripts: %q", cookies)
	}
	// The trigger form names what is wrong with bad JSON and sends nothing.
	p.open("/dags/etl_example/trigger")
	p.run("trigger with bad JSON", chromedp.SetValue(chromedp.CSS("#conf"), `{"rows": `), chromedp.Click(chromedp.CSS("#trigger-submit")))
	p.until("the form's error", `!document.querySelector("#trigger-error").hidden && document.querySelector("#trigger-error").textContent.includes("not valid")`, 10*time.Second)
	p.open("/dags/etl_example")
	p.until("the DAG page, its switch on", `document.querySelector("#dag-on").checked`, 10*time.Second)

	// A change through the page's script (the pause switch) is accepted.
	p.run("pause etl_example", chromedp.Click(chromedp.CSS("#dag-on")))
	c := newClient(t, srv.url, token)
	eventually(t, 20*time.Second, "etl_example is paused through the cookie", func() (bool, string) {
		d := c.ok(http.StatusOK, "GET", "/api/v1/dags/etl_example", nil)
		return d["is_paused"] == true, fmt.Sprint(d["is_paused"])
	})
	// Without the CSRF header the same cookie may not change anything.
	status := evalJS[int](p, `fetch("/api/v1/dags/etl_example?update_mask=is_paused", {method: "PATCH", headers: {"Content-Type": "application/json"}, body: '{"is_paused": false}'}).then(r => r.status)`,
		chromedp.EvalAwaitPromise)
	if status != http.StatusUnauthorized {
		t.Errorf("a PATCH with the cookie but without the CSRF header answered %d, want 401", status)
	}
}

// TestUILiveLog: the task page tails the log of a running try. `trellis
// api` serves the UI without workers; the test plays the worker through
// the store: it claims extract, appends to its log while the page is open,
// then finishes it.
func TestUILiveLog(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	dbURL := testdb.SQLite(t)
	srv := startTrellis(t, []string{"TRELLIS_DATABASE_URL=" + dbURL}, "api", "--addr", "127.0.0.1:0")
	c := newClient(t, srv.url, "")
	p := &page{t: t, ctx: ctx, base: srv.url}
	st, err := dial.Open(context.Background(), dbURL, dial.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("open the store: %v", err)
	}
	defer st.Close()
	// `trellis api` runs no scheduler, which records the DAGs: record it.
	if err := st.SyncDAGs(context.Background(), []store.DAGSpec{store.SpecFromDAG(dag.Default().Lookup("etl_example"))}); err != nil {
		t.Fatalf("sync etl_example: %v", err)
	}
	c.ok(http.StatusOK, "POST", "/api/v1/dags/etl_example/dagRuns", map[string]any{"dag_run_id": "tail"})
	w := store.Worker{ID: "ui-test", Hostname: "test", PID: 1, Slots: 1, StartedAt: time.Now(), HeartbeatAt: time.Now()}
	if err := st.RegisterWorker(context.Background(), w); err != nil {
		t.Fatal(err)
	}
	var claimed []store.Claimed
	eventually(t, 20*time.Second, "extract is queued and claimed", func() (bool, string) {
		claimed, err = st.ClaimTasks(context.Background(), w, 1, time.Now())
		return err == nil && len(claimed) == 1, fmt.Sprint(err)
	})
	try := store.Try{ID: claimed[0].ID, TryNumber: claimed[0].TryNumber}
	if err := st.AppendLog(context.Background(), try, []byte("first line\n")); err != nil {
		t.Fatal(err)
	}

	p.open("/dags/etl_example/runs/tail/tasks/extract")
	p.until("the running try's log", `document.querySelector("#log").textContent.includes("first line")`, 20*time.Second)
	evalJS[int](p, `window.__noReload = 1`)
	if err := st.AppendLog(context.Background(), try, []byte("second line\n")); err != nil {
		t.Fatal(err)
	}
	p.until("the appended line, without a reload", `window.__noReload === 1 && document.querySelector("#log").textContent === "first line\nsecond line\n"`, 20*time.Second)
	res := store.Result{Try: try, State: state.Success, EndedAt: time.Now(), Log: []byte("last line\n")}
	if _, err := st.FinishTasks(context.Background(), []store.Result{res}); err != nil {
		t.Fatal(err)
	}
	p.until("the try's end: its state and its last line", `document.querySelector("#ti-state").textContent === "success" &&
		document.querySelector("#log").textContent === "first line\nsecond line\nlast line\n"`, 20*time.Second)
}
