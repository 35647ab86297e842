package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/trellis-dag/trellis/api"
	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Metrics of the api scenario: for each watched run (prefix
// api_finished_ and api_running_), the requests answered per second and
// their latency; and the rate at which the load's runs executed tasks
// meanwhile.
const (
	MetricAPIRequestsPerSecond = "requests_per_second"
	MetricAPILatencyP50        = "latency_p50_ms"
	MetricAPILatencyP99        = "latency_p99_ms"
	MetricLoadTasksPerSecond   = "load_tasks_per_second"
	UnitRequestsPerSecond      = "req/s"
)

// Scenario names of the api scenario's rows: the finished run, the
// running run, and the running run at a steady APIRate requests/s.
const (
	ScenarioAPIBaseline = "api_baseline" // no requests: what the load does alone
	ScenarioAPIFinished = "api_finished"
	ScenarioAPIRunning  = "api_running"
	ScenarioAPIPaced    = "api_running_paced"
)

// pacedClientRate is the most requests/s one client of a paced window
// sends, so that the window's clients keep up with its rate when answers
// take a few milliseconds.
const pacedClientRate = 50

// DefaultAPIRate is the request rate of the api_running_paced window: the
// rate issue 6 asks the API to sustain.
const DefaultAPIRate = 3000

// apiHoldSlack keeps the running watched run's root busy past the end of
// its window; the run is failed (cancelled) then.
const apiHoldSlack = time.Minute

// api: GET …/dagRuns/{run}/taskInstances of a bench_watch run — first a
// finished one, then one held running — by APIClients clients for
// APIDuration each, over real HTTP against the API handler of `trellis
// api`, while runs of bench_wide (Sizes.Wide tasks) execute one after
// another on the worker processes the whole time.
func (h *harness) api(ctx context.Context) error {
	reg := dag.NewRegistry()
	ds, err := BuildAll(h.sets)
	if err != nil {
		return err
	}
	for _, d := range ds {
		reg.Register(d)
	}
	n := h.cfg.Sizes.Watch
	if _, _, err := h.runOnce(ctx, WatchDAGID, n, false); err != nil {
		return fmt.Errorf("finished run to watch: %w", err)
	}
	hold := h.cfg.APIDuration*2 + apiHoldSlack
	live, err := h.sched.TriggerRun(ctx, WatchDAGID, scheduler.TriggerOptions{RunID: "live",
		Conf: json.RawMessage(`{"` + WatchHoldParam + `": ` + strconv.FormatInt(hold.Milliseconds(), 10) + `}`)})
	if err != nil {
		return fmt.Errorf("running run to watch: %w", err)
	}
	defer func() {
		// Cancel the held run, so its root stops (at its worker's next
		// heartbeat) before the pool is stopped.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), teardownTimeout)
		defer cancel()
		if _, err := h.st.SetRunState(cctx, WatchDAGID, live.RunID, state.RunFailed, time.Now()); err != nil {
			h.progress("cancel the watched run: %v", err)
		}
	}()
	if err := h.waitRootRunning(ctx, live.RunID); err != nil {
		return err
	}

	handler, err := api.New(api.Config{Store: h.st, Registry: reg, Logger: h.cfg.Logger})
	if err != nil {
		return err
	}
	srv, err := api.NewServer("127.0.0.1:0", handler, api.ServerOptions{Logger: h.cfg.Logger})
	if err != nil {
		return err
	}
	if err := srv.Start(ctx); err != nil {
		return err
	}
	defer srv.Stop()

	load := newLoad(h, h.cfg.Sizes.Wide+2)
	lctx, stopLoad := context.WithCancel(ctx)
	loadDone := make(chan error, 1)
	go func() { loadDone <- load.run(lctx) }()
	if err := load.waitStarted(ctx); err != nil {
		stopLoad()
		return errors.Join(err, <-loadDone)
	}
	h.progress("serving the API at %s; runs of %s execute meanwhile", srv.URL(), WideDAGID)

	var measureErr error
	type window struct {
		scenario, runID string
		rate            int // requests/s; 0: as fast as the clients go
		from, to        time.Time
	}
	windows := []window{{scenario: ScenarioAPIBaseline}, {scenario: ScenarioAPIFinished, runID: "bench"},
		{scenario: ScenarioAPIRunning, runID: live.RunID}, {scenario: ScenarioAPIPaced, runID: live.RunID, rate: DefaultAPIRate}}
	for i := range windows {
		w := &windows[i]
		w.from = time.Now()
		if w.runID == "" {
			select {
			case <-ctx.Done():
				measureErr = context.Cause(ctx)
			case <-time.After(h.cfg.APIDuration):
			}
			w.to = time.Now()
			if measureErr != nil {
				break
			}
			continue
		}
		url := srv.URL() + "/api/v1/dags/" + WatchDAGID + "/dagRuns/" + w.runID + "/taskInstances"
		clients := h.cfg.APIClients
		if w.rate > 0 {
			clients = max(clients, w.rate/pacedClientRate)
		}
		res, err := hammer(ctx, url, n, clients, h.cfg.APIDuration, w.rate)
		w.to = time.Now()
		if err != nil {
			measureErr = fmt.Errorf("%s: %w", w.scenario, err)
			break
		}
		m := h.rowsFor(w.scenario)
		m.add(MetricAPIRequestsPerSecond, res.perSecond(), UnitRequestsPerSecond)
		m.millis(MetricAPILatencyP50, res.latency.P50)
		m.millis(MetricAPILatencyP99, res.latency.P99)
		h.keep(m)
		pace := "as fast as they go"
		if w.rate > 0 {
			pace = fmt.Sprintf("at %d req/s in all", w.rate)
		}
		h.progress("%s: %d requests in %.1f s by %d clients %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms", w.scenario,
			res.latency.N, res.elapsed.Seconds(), clients, pace, res.perSecond(),
			float64(res.latency.P50)/float64(time.Millisecond), float64(res.latency.P99)/float64(time.Millisecond))
	}
	stopLoad()
	if err := errors.Join(measureErr, <-loadDone); err != nil {
		return err
	}
	if err := h.stopProfile(); err != nil {
		return err
	}
	// What the load did in each window, from the end times the store
	// recorded.
	for i := range windows {
		w := &windows[i]
		_, tasks, err := h.st.ListTaskInstances(ctx, store.TaskQuery{DAGIDs: []string{WideDAGID},
			States: []state.TaskState{state.Success}, EndDateGTE: &w.from, EndDateLTE: &w.to, Limit: 1})
		if err != nil {
			return fmt.Errorf("count the load's tasks: %w", err)
		}
		rate := float64(tasks) / w.to.Sub(w.from).Seconds()
		m := h.rowsFor(w.scenario)
		m.add(MetricLoadTasksPerSecond, rate, UnitTasksPerSecond)
		h.keep(m)
		h.progress("%s: meanwhile the load executed %d tasks (%.0f tasks/s)", w.scenario, tasks, rate)
	}
	h.work, h.workUnit = load.tasksDone(), "task"
	m := h.rowsFor(ScenarioAPI)
	h.rss.Sample()
	peak, measured := h.rss.Peak()
	addPeak(m, peak, measured)
	h.keep(m)
	return nil
}

// waitRootRunning waits until the root of watched run runID runs.
func (h *harness) waitRootRunning(ctx context.Context, runID string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ti, err := h.st.GetTaskInstance(ctx, WatchDAGID, runID, "root")
		if err != nil {
			return fmt.Errorf("watched run %q: %w", runID, err)
		}
		switch {
		case ti.State == state.Running:
			return nil
		case ti.State.Terminal():
			return fmt.Errorf("watched run %q: its root ended (%s) instead of holding", runID, ti.State)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("watched run %q: root still %s: %w", runID, ti.State, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// load keeps one run of bench_wide executing at a time until its context
// ends, and counts the tasks of the runs that ended.
type load struct {
	h       *harness
	tasks   int // per run
	done    atomic.Int64
	started chan struct{}
	once    sync.Once
}

func newLoad(h *harness, tasks int) *load {
	return &load{h: h, tasks: tasks, started: make(chan struct{})}
}

func (l *load) tasksDone() int { return int(l.done.Load()) }

// waitStarted waits until the first run of the load is running.
func (l *load) waitStarted(ctx context.Context) error {
	select {
	case <-l.started:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// run triggers runs one after another; the run in progress when ctx ends
// is left to finish (it does not count).
func (l *load) run(ctx context.Context) error {
	h := l.h
	sub, err := h.st.Listen(ctx, store.TopicRunsChanged)
	if err != nil {
		return fmt.Errorf("load: listen: %w", err)
	}
	defer sub.Close()
	for i := 0; ; i++ {
		run, err := h.sched.TriggerRun(ctx, WideDAGID, scheduler.TriggerOptions{RunID: fmt.Sprintf("load-%d", i)})
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("load: trigger: %w", err)
		}
		l.once.Do(func() { close(l.started) })
		run, err = h.waitRun(ctx, sub, WideDAGID, run.RunID)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("load: %w", err)
		}
		if run.State != state.RunSuccess {
			return fmt.Errorf("load: run %q of %s ended %s", run.RunID, WideDAGID, run.State)
		}
		l.done.Add(int64(l.tasks))
		if t, err := TimingOf(run); err == nil {
			h.progress("load: run %s of %d tasks took %.2f s", run.RunID, l.tasks, t.Total().Seconds())
		}
	}
}

// hammerResult is what hammer measured.
type hammerResult struct {
	latency Distribution
	elapsed time.Duration
}

func (r hammerResult) perSecond() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.latency.N) / r.elapsed.Seconds()
}

// hammer GETs url with clients keep-alive connections for d and returns
// the latencies of the answers: each client sends its next request as
// soon as it has its answer, or, with rate > 0, at its share of rate
// requests/s (a client that falls behind sends at once, without making up
// for lost time). Every answer must be 200 with a body listing want task
// instances in all; anything else fails.
func hammer(ctx context.Context, url string, want, clients int, d time.Duration, rate int) (hammerResult, error) {
	tr := &http.Transport{MaxIdleConns: clients, MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	wantTotal := []byte(`"total_entries":` + strconv.Itoa(want) + `}`)
	wantItems := want
	if wantItems > api.DefaultPageLimit {
		wantItems = api.DefaultPageLimit
	}
	// One request first, checked in full: the list is the run's.
	if err := checkList(ctx, client, url, want, wantItems); err != nil {
		return hammerResult{}, err
	}
	hctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	lats := make([][]time.Duration, clients)
	errs := make([]error, clients)
	var wg sync.WaitGroup
	began := time.Now()
	var every time.Duration // between two requests of one client
	if rate > 0 {
		every = time.Duration(float64(clients) / float64(rate) * float64(time.Second))
	}
	for c := range clients {
		wg.Go(func() {
			var buf bytes.Buffer
			next := began.Add(every * time.Duration(c) / time.Duration(clients))
			for hctx.Err() == nil {
				if every > 0 {
					if wait := time.Until(next); wait > 0 {
						select {
						case <-hctx.Done():
							return
						case <-time.After(wait):
						}
					}
					next = next.Add(every)
					if now := time.Now(); next.Before(now) {
						next = now // behind: no burst to make up for it
					}
				}
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(hctx, http.MethodGet, url, nil)
				resp, err := client.Do(req)
				if err != nil {
					if hctx.Err() == nil {
						errs[c] = err
					}
					return
				}
				buf.Reset()
				_, err = buf.ReadFrom(resp.Body)
				resp.Body.Close()
				if err != nil {
					if hctx.Err() == nil {
						errs[c] = err
					}
					return
				}
				if resp.StatusCode != http.StatusOK || !bytes.HasSuffix(bytes.TrimSpace(buf.Bytes()), wantTotal) {
					errs[c] = fmt.Errorf("GET %s: status %d, body %.200q", url, resp.StatusCode, buf.Bytes())
					return
				}
				lats[c] = append(lats[c], time.Since(t0))
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	if err := errors.Join(errs...); err != nil {
		return hammerResult{}, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return hammerResult{latency: Summarize(all), elapsed: elapsed}, ctx.Err()
}

// checkList GETs url once and checks the body lists items task instances
// of total.
func checkList(ctx context.Context, client *http.Client, url string, total, items int) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	var list struct {
		TaskInstances []struct {
			TaskID string `json:"task_id"`
		} `json:"task_instances"`
		TotalEntries int `json:"total_entries"`
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d: %.300s", url, resp.StatusCode, body)
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return fmt.Errorf("GET %s: %w", url, err)
	}
	if list.TotalEntries != total || len(list.TaskInstances) != items {
		return fmt.Errorf("GET %s: %d task instances of %d, want %d of %d", url, len(list.TaskInstances), list.TotalEntries, items, total)
	}
	return nil
}
