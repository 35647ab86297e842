package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-dag/trellis/store"
	"github.com/trellis-dag/trellis/store/dial"
	"github.com/trellis-dag/trellis/store/postgres"
)

// Metrics of the scale scenario, per run (scenario scale_<size>, with
// _<k> for the k-th run of a repeated size) and of the reference
// (scenario pgbench).
const (
	MetricServePeakRSSBytes = "serve_peak_rss_bytes"
	MetricServeRSSAfter     = "serve_rss_after_bytes"
	MetricTreePeakRSSBytes  = "tree_peak_rss_bytes"
	MetricMetricsBytes      = "metrics_bytes"
	MetricMetricsScrapeMS   = "metrics_scrape_ms"
	MetricHOTRatio          = "hot_update_ratio"
	MetricDeadRows          = "dead_rows"
	MetricVsPgbench         = "rate_vs_pgbench"
	MetricVsFirst           = "rate_vs_reference_run"
	MetricUpdateTPS         = "update_tps"
	MetricNotifyRoundTrip50 = "commit_notify_p50_ms"
	MetricNotifyRoundTrip99 = "commit_notify_p99_ms"
	UnitRatio               = "ratio"
	UnitTPS                 = "tx/s"
	UnitRows                = "rows"
)

// ScenarioPgbench is the scenario name of the reference rows the scale
// scenario measures on PostgreSQL before it starts the server.
const ScenarioPgbench = "pgbench"

// ScaleDAGID returns the id of the scale DAG of n parallel tasks.
func ScaleDAGID(n int) string { return IDPrefix + "scale_" + strconv.Itoa(n) }

// EnvServe marks the `trellis serve` process a scale scenario starts: only
// there does RegisterServeFromEnv register the benchmark DAGs.
const EnvServe = "TRELLIS_BENCH_SERVE"

// DefaultScaleRuns are the runs of the scale scenario, one after another
// on one server: the sizes (parallel tasks) of issue 17, 100,000 three
// times; QuickScaleRuns check that it works.
var (
	DefaultScaleRuns = []int{1_000, 10_000, 100_000, 100_000, 100_000}
	QuickScaleRuns   = []int{200, 1_000, 2_000, 2_000, 2_000}
)

// Reference measurement of the scale scenario (PostgreSQL only).
const (
	ReferenceClients    = 4
	DefaultReferenceFor = 5 * time.Second
	QuickReferenceFor   = time.Second
	referenceRoundTrips = 200
)

// statsSettle is how long the scale scenario waits after a run before
// reading the table statistics: a backend reports its counts when idle,
// at most once a second.
const statsSettle = 1500 * time.Millisecond

// serveStopTimeout bounds the wait for the server to stop after SIGTERM.
const serveStopTimeout = time.Minute

// scaleSets returns the DAG sets of runs: one wide DAG per distinct size.
func scaleSets(runs []int) []DAGSet {
	var sets []DAGSet
	seen := map[int]bool{}
	for _, n := range runs {
		if !seen[n] {
			seen[n] = true
			sets = append(sets, DAGSet{ShapeScale, n})
		}
	}
	return sets
}

// scaleRunNames returns the scenario name of each run's rows:
// scale_<size>, and scale_<size>_<k> when a size repeats.
func scaleRunNames(runs []int) []string {
	total, seen := map[int]int{}, map[int]int{}
	for _, n := range runs {
		total[n]++
	}
	out := make([]string, len(runs))
	for i, n := range runs {
		seen[n]++
		out[i] = "scale_" + strconv.Itoa(n)
		if total[n] > 1 {
			out[i] += "_" + strconv.Itoa(seen[n])
		}
	}
	return out
}

// served is a `trellis serve` process started by the scale scenario.
type served struct {
	cmd  *exec.Cmd
	url  string // where the API listens
	done chan error
}

// stop sends SIGTERM and waits for the process (SIGKILL after
// serveStopTimeout).
func (s *served) stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		return err
	case <-time.After(serveStopTimeout):
		_ = s.cmd.Process.Kill()
		return fmt.Errorf("trellis serve did not stop within %v of SIGTERM; killed", serveStopTimeout)
	}
}

// startServe starts `trellis serve` (cfg.Executable with cfg.ServeArgs)
// on the database of dbURL with the scale DAGs, and waits until it prints
// the URL it serves on.
func (h *harness) startServe(ctx context.Context, dbURL string, sets []DAGSet) (*served, error) {
	if len(h.cfg.ServeArgs) == 0 {
		return nil, errors.New("the scale scenario needs Config.ServeArgs: the arguments that start the server with the benchmark DAGs")
	}
	cmd := exec.Command(h.cfg.Executable, h.cfg.ServeArgs...)
	cmd.Env = append(os.Environ(),
		"TRELLIS_DATABASE_URL="+dbURL,
		"TRELLIS_ADDR=127.0.0.1:0",
		"TRELLIS_API_TOKEN=",
		"TRELLIS_WORKERS="+strconv.Itoa(h.cfg.Workers),
		"TRELLIS_WORKER_SLOTS="+strconv.Itoa(h.cfg.Slots),
		EnvServe+"=1",
		EnvDAGs+"="+FormatDAGSets(sets))
	cmd.Env = append(cmd.Env, h.cfg.ChildEnv...)
	if h.cfg.HeapProfileDir != "" {
		cmd.Env = append(cmd.Env, EnvHeapProfile+"="+h.profilePath(h.cfg.HeapProfileDir, "serve"))
	}
	cmd.Stderr = h.cfg.ChildOutput
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start trellis serve: %w", err)
	}
	s := &served{cmd: cmd, done: make(chan error, 1)}
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if rest, ok := strings.CutPrefix(line, "trellis: serving on "); ok {
				if url, _, ok := strings.Cut(rest, " "); ok {
					select {
					case found <- url:
					default:
					}
				}
			}
		}
		_, _ = io.Copy(io.Discard, out)
		s.done <- cmd.Wait()
	}()
	select {
	case s.url = <-found:
		return s, nil
	case err := <-s.done:
		return nil, fmt.Errorf("trellis serve exited before serving (its output is above): %v", err)
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-s.done
		return nil, context.Cause(ctx)
	case <-time.After(workersReadyTimeout):
		_ = cmd.Process.Kill()
		<-s.done
		return nil, fmt.Errorf("trellis serve printed no URL within %v", workersReadyTimeout)
	}
}

// scale: the reference (PostgreSQL), then `trellis serve` on a fresh
// database and the runs of ScaleRuns one after another through its API.
func (h *harness) scale(ctx context.Context) error {
	url, err := h.freshDatabase(ctx)
	if err != nil {
		return err
	}
	if h.cfg.HeapProfileDir != "" {
		h.progress("heap profiles of the server: %s-<run>.pprof", h.profilePath(h.cfg.HeapProfileDir, "serve"))
	}
	var ref postgres.Reference
	if h.db.Backend == BackendPostgres {
		h.progress("reference: single-row UPDATEs by %d clients for %v, then %d commit + NOTIFY round trips",
			ReferenceClients, h.cfg.ReferenceFor, referenceRoundTrips)
		rctx, cancel := context.WithTimeout(ctx, h.cfg.Timeout)
		ref, err = postgres.MeasureReference(rctx, url, ReferenceClients, h.cfg.ReferenceFor, referenceRoundTrips)
		cancel()
		if err != nil {
			return err
		}
		rt := Summarize(ref.RoundTrips)
		m := h.rowsFor(ScenarioPgbench)
		m.add(MetricUpdateTPS, ref.UpdateTPS, UnitTPS)
		m.millis(MetricNotifyRoundTrip50, rt.P50)
		m.millis(MetricNotifyRoundTrip99, rt.P99)
		h.keep(m)
		h.progress("reference: %.0f UPDATE commits/s, commit + NOTIFY p50 %.2f ms, p99 %.2f ms", ref.UpdateTPS,
			float64(rt.P50)/float64(time.Millisecond), float64(rt.P99)/float64(time.Millisecond))
	}

	runs := h.cfg.ScaleRuns
	sets := scaleSets(runs)
	srv, err := h.startServe(ctx, url, sets)
	if err != nil {
		return err
	}
	h.cleanups = append(h.cleanups, srv.stop)
	st, err := dial.Open(ctx, url, dial.Options{Logger: h.cfg.Logger})
	if err != nil {
		return err
	}
	h.st = st
	h.cleanups = append(h.cleanups, st.Close)
	if err := h.waitWorkers(ctx); err != nil {
		return err
	}
	h.progress("trellis serve (pid %d) at %s with %d worker processes × %d slots", srv.cmd.Process.Pid, srv.url,
		h.cfg.Workers, h.cfg.Slots)

	client := &http.Client{Timeout: time.Minute}
	names := scaleRunNames(runs)
	refSize := referenceSize(runs)
	var first float64 // tasks/s of the reference run (the first of refSize)
	for i, n := range runs {
		r, err := h.scaleRun(ctx, client, srv, url, n, i)
		if err != nil {
			return fmt.Errorf("%s: %w", names[i], err)
		}
		m := h.rowsFor(names[i])
		m.add(MetricTasksPerSecond, r.rate, UnitTasksPerSecond)
		m.seconds(MetricRunCreationSeconds, r.timing.Creation())
		m.seconds(MetricTotalSeconds, r.timing.Total())
		m.add(MetricServePeakRSSBytes, float64(r.servePeak), UnitBytes)
		m.add(MetricServeRSSAfter, float64(r.serveAfter), UnitBytes)
		m.add(MetricTreePeakRSSBytes, float64(r.treePeak), UnitBytes)
		m.add(MetricMetricsBytes, float64(r.metricsBytes), UnitBytes)
		m.millis(MetricMetricsScrapeMS, r.scrape)
		if r.haveHOT {
			m.add(MetricHOTRatio, r.hot, UnitRatio)
			m.add(MetricDeadRows, float64(r.dead), UnitRows)
		}
		if ref.UpdateTPS > 0 {
			m.add(MetricVsPgbench, r.rate/ref.UpdateTPS, UnitRatio)
		}
		if refSize > 0 && n == refSize && first == 0 {
			first = r.rate
		}
		if refSize > 0 && n > refSize && first > 0 {
			m.add(MetricVsFirst, r.rate/first, UnitRatio)
		}
		h.keep(m)
		h.work += n + 2
		hot := ""
		if r.haveHOT {
			hot = fmt.Sprintf(", HOT %.2f, %d dead rows", r.hot, r.dead)
		}
		h.progress("%s: %d tasks in %.3f s (created in %.3f s): %.0f tasks/s; serve peak %.0f MiB (after %.0f MiB), tree peak %.0f MiB; /metrics %d bytes in %.1f ms%s",
			names[i], n+2, r.timing.Total().Seconds(), r.timing.Creation().Seconds(), r.rate, mib(r.servePeak), mib(r.serveAfter),
			mib(r.treePeak), r.metricsBytes, float64(r.scrape)/float64(time.Millisecond), hot)
	}
	h.workUnit = "task"
	return nil
}

// referenceSize returns the size whose first run the larger runs are
// compared with: the largest size below the largest (0 when all runs are
// of one size).
func referenceSize(runs []int) int {
	largest, ref := 0, 0
	for _, n := range runs {
		largest = max(largest, n)
	}
	for _, n := range runs {
		if n < largest {
			ref = max(ref, n)
		}
	}
	return ref
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// scaleResult is what one run of the scale scenario measured.
type scaleResult struct {
	timing                          RunTiming
	rate                            float64
	servePeak, serveAfter, treePeak uint64
	metricsBytes                    int
	scrape                          time.Duration
	haveHOT                         bool
	hot                             float64
	dead                            int64
}

// scaleRun triggers run i of the DAG of n parallel tasks through the
// server's API, waits for it while sampling memory, then scrapes
// /metrics and reads the table statistics.
func (h *harness) scaleRun(ctx context.Context, client *http.Client, srv *served, dbURL string, n, i int) (scaleResult, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, h.cfg.Timeout,
		fmt.Errorf("run %d of the scale scenario on %s took longer than the timeout %v", i+1, h.db.Backend, h.cfg.Timeout))
	defer cancel()
	var r scaleResult
	var before postgres.TableWrites
	isPG := h.db.Backend == BackendPostgres
	if isPG {
		var err error
		if before, err = postgres.TableActivity(ctx, dbURL, "task_instances"); err != nil {
			return r, err
		}
	}
	pid := srv.cmd.Process.Pid
	serve, tree := NewProcessSampler(pid, rssInterval), NewSampler(pid, rssInterval)
	serve.Start()
	tree.Start()
	sub, err := h.st.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		return r, fmt.Errorf("listen: %w", err)
	}
	defer sub.Close()
	dagID, runID := ScaleDAGID(n), "scale-"+strconv.Itoa(i)
	if err := postJSON(ctx, client, srv.url+"/api/v1/dags/"+dagID+"/dagRuns", `{"dag_run_id":"`+runID+`"}`); err != nil {
		return r, fmt.Errorf("trigger: %w", err)
	}
	run, err := h.waitRun(ctx, sub, dagID, runID)
	serve.Stop()
	tree.Stop()
	if err != nil {
		return r, err
	}
	if r.timing, err = TimingOf(run); err != nil {
		return r, err
	}
	r.rate = float64(n+2) / r.timing.Total().Seconds()
	sp, _ := serve.Peak()
	tp, _ := tree.Peak()
	r.servePeak, r.treePeak = sp.RSS, tp.RSS

	// Let the server settle (its metric feeders, the statistics).
	select {
	case <-ctx.Done():
		return r, context.Cause(ctx)
	case <-time.After(statsSettle):
	}
	if after, err := ProcessMemory(pid); err == nil {
		r.serveAfter = after.RSS
	}
	if h.cfg.HeapProfileDir != "" {
		askHeapProfile(pid) // the server and its workers write a heap profile
	}
	began := time.Now()
	body, err := get(ctx, client, srv.url+"/metrics")
	if err != nil {
		return r, fmt.Errorf("scrape /metrics: %w", err)
	}
	r.scrape, r.metricsBytes = time.Since(began), len(body)
	if isPG {
		after, err := settledActivity(ctx, dbURL, before)
		if err != nil {
			return r, err
		}
		if upd := after.Updates - before.Updates; upd > 0 {
			r.haveHOT, r.hot, r.dead = true, float64(after.HOTUpdates-before.HOTUpdates)/float64(upd), after.DeadRows
		}
	}
	return r, nil
}

// statsFlushMax bounds the wait for the run's updates to show in
// pg_stat_user_tables: an idle backend reports its counts within
// PostgreSQL's idle flush interval (10 s).
const statsFlushMax = 12 * time.Second

// settledActivity reads task_instances' statistics until they count
// updates made since before (or statsFlushMax has passed): backends flush
// their counts lazily, so the first read after a short run can miss them.
func settledActivity(ctx context.Context, dbURL string, before postgres.TableWrites) (postgres.TableWrites, error) {
	deadline := time.Now().Add(statsFlushMax)
	for {
		after, err := postgres.TableActivity(ctx, dbURL, "task_instances")
		if err != nil || after.Updates > before.Updates || time.Now().After(deadline) {
			return after, err
		}
		select {
		case <-ctx.Done():
			return after, context.Cause(ctx)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// postJSON POSTs body to url and wants a 2xx answer.
func postJSON(ctx context.Context, client *http.Client, url, body string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("POST %s: status %d: %s", url, resp.StatusCode, bytes.TrimSpace(b))
	}
	return nil
}

// get GETs url and returns the body of a 200 answer.
func get(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: status %d: %.300s", url, resp.StatusCode, b)
	}
	return b, nil
}
