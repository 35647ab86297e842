package executor

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"github.com/trellis-dag/trellis/internal/testdb"
	"os/exec"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestRestartDelay(t *testing.T) {
	base, max := 100*time.Millisecond, 2*time.Second
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{-1, 0},
		{0, 0},
		{1, 100 * time.Millisecond},
		{2, 200 * time.Millisecond},
		{3, 400 * time.Millisecond},
		{5, 1600 * time.Millisecond},
		{6, 2 * time.Second},
		{1000, 2 * time.Second},
	} {
		if got := restartDelay(tc.failures, base, max); got != tc.want {
			t.Errorf("restartDelay(%d) = %v, want %v", tc.failures, got, tc.want)
		}
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    procInfo
		wantErr string
	}{
		{"plain", "1234 (sleep) S 1000 1234 1000 0 -1 4194304", procInfo{1234, 1000, 1234, 'S'}, ""},
		{"zombie", "77 (sh) Z 5 70 5 0", procInfo{77, 5, 70, 'Z'}, ""},
		{"spaces and parens in the name", "42 (a) b (c) R 7 9 9 0", procInfo{42, 7, 9, 'R'}, ""},
		{"no command", "42 S 1 1", procInfo{}, "no (command) field"},
		{"truncated", "42 (x) S 1", procInfo{}, "want state, ppid and pgrp"},
		{"bad ppid", "42 (x) S one 1", procInfo{}, "ppid"},
		{"bad pid", "x (x) S 1 1", procInfo{}, "pid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseStat(%q) error = %v, want one containing %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseStat(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestEnvironHas(t *testing.T) {
	env := []byte("A=1\x00TRELLIS_WORKER_POOL=9-abc\x00B=\x00")
	for kv, want := range map[string]bool{
		"TRELLIS_WORKER_POOL=9-abc": true,
		"TRELLIS_WORKER_POOL=9-ab":  false,
		"A=1":                       true,
		"B=":                        true,
		"C=":                        false,
	} {
		if got := environHas(env, kv); got != want {
			t.Errorf("environHas(%q) = %v, want %v", kv, got, want)
		}
	}
}

func TestRunParams(t *testing.T) {
	defaults := map[string]any{"a": 1.0, "b": "x"}
	for _, tc := range []struct {
		name    string
		conf    string
		want    map[string]any
		wantErr bool
	}{
		{"no conf", "", map[string]any{"a": 1.0, "b": "x"}, false},
		{"null", "null", map[string]any{"a": 1.0, "b": "x"}, false},
		{"empty object", "{}", map[string]any{"a": 1.0, "b": "x"}, false},
		{"empty object with spaces", " { } ", map[string]any{"a": 1.0, "b": "x"}, false},
		{"spaces", " \n", map[string]any{"a": 1.0, "b": "x"}, false},
		{"overlay", `{"b":"y","c":[1]}`, map[string]any{"a": 1.0, "b": "y", "c": []any{1.0}}, false},
		{"array", `[1,2]`, nil, true},
		{"string", `"s"`, nil, true},
		{"broken", `{"a":`, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := runParams(defaults, json.RawMessage(tc.conf))
			if tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), "run conf: ") {
					t.Fatalf("runParams(%s) error = %v, want 'run conf: …'", tc.conf, err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("runParams(%s) = %v, %v; want %v", tc.conf, got, err, tc.want)
			}
		})
	}
	if got, _ := runParams(defaults, json.RawMessage(`{"a":2}`)); defaults["a"] != 1.0 || got["a"] != 2.0 {
		t.Fatalf("runParams changed the DAG's defaults: %v", defaults)
	}
}

func TestChildConfigEnvRoundTrip(t *testing.T) {
	in := ChildConfig{
		WorkerID: "h-1-w0.0", Slots: 7, Hostname: "h",
		HeartbeatInterval: 250 * time.Millisecond, Grace: 3 * time.Second, KillGrace: time.Second,
		PollInterval: 2 * time.Second, MaxLeaks: 2, ParentPID: 99, Pool: "99-abc", Procs: 3,
		PokeStandby: true,
	}
	env := map[string]string{}
	for _, kv := range in.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	out, err := ChildConfigFromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil || out != in {
		t.Fatalf("round trip = %+v, %v; want %+v", out, err, in)
	}
}

func TestChildProcs(t *testing.T) {
	const pg = "postgres://db/trellis"
	for _, tc := range []struct {
		procs, processes int
		url              string
		want             int
	}{
		{2, 2, pg, 1}, // one child per CPU (the default): one each
		{8, 8, pg, 1},
		{8, 1, pg, 8}, // a single child gets every CPU
		{8, 3, pg, 3}, // rounded up: together they use all 8
		{2, 4, pg, 1}, // more children than CPUs: never below 1
		{0, 2, pg, 0}, // unknown: the runtime's default
		{4, 0, pg, 0},
		{2, 2, "postgresql://db/trellis", 1},
		{2, 2, "sqlite:/var/lib/trellis.db", 0}, // the engine runs in the child: every CPU
		{2, 2, "bogus", 0},
	} {
		if got := childProcs(tc.procs, tc.processes, tc.url); got != tc.want {
			t.Errorf("childProcs(%d CPUs, %d children, %s) = %d, want %d", tc.procs, tc.processes, tc.url, got, tc.want)
		}
	}
}

func TestApplyChildProcs(t *testing.T) {
	before := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(before)
	unset := func(string) (string, bool) { return "", false }
	ApplyChildProcs(ChildConfig{Procs: before + 1}, func(k string) (string, bool) { return "5", k == "GOMAXPROCS" })
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("with GOMAXPROCS in the environment, GOMAXPROCS = %d, want it left at %d", got, before)
	}
	ApplyChildProcs(ChildConfig{}, unset)
	if got := runtime.GOMAXPROCS(0); got != before {
		t.Errorf("with Procs 0, GOMAXPROCS = %d, want it left at %d", got, before)
	}
	ApplyChildProcs(ChildConfig{Procs: before + 1}, unset)
	if got := runtime.GOMAXPROCS(0); got != before+1 {
		t.Errorf("GOMAXPROCS = %d, want Procs %d", got, before+1)
	}
}

func TestChildConfigFromEnvErrors(t *testing.T) {
	env := map[string]string{
		EnvSlots:       "many",
		EnvGrace:       "soon",
		EnvKillGrace:   "-1s",
		EnvProcs:       "-2",
		EnvPokeStandby: "yes",
	}
	_, err := ChildConfigFromEnv(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err == nil {
		t.Fatal("ChildConfigFromEnv accepted a broken environment")
	}
	for _, want := range []string{EnvChild + " is not set",
		EnvSlots + `="many"`, EnvGrace + `="soon"`, EnvKillGrace + `="-1s"`, EnvProcs + "=-2",
		EnvPokeStandby + `="yes"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// memSink records the chunks a taskLog sends.
type memSink struct {
	mu     sync.Mutex
	chunks [][]byte
	fail   bool
}

func (m *memSink) append(_ context.Context, chunk []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail {
		return errors.New("injected append failure")
	}
	m.chunks = append(m.chunks, bytes.Clone(chunk))
	return nil
}

func (m *memSink) all() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return string(bytes.Join(m.chunks, nil))
}

func TestTaskLogBatchesAndCaps(t *testing.T) {
	sink := &memSink{}
	l := newTaskLog(context.Background(), sink.append, 10, 25, nil)
	_, _ = l.Write([]byte("abc"))
	_, _ = l.Write([]byte("def"))
	if len(sink.chunks) != 0 {
		t.Fatalf("sent %d chunks below the flush size, want 0", len(sink.chunks))
	}
	if !l.pending() {
		t.Fatal("pending() = false with buffered output")
	}
	_, _ = l.Write([]byte("ghij")) // reaches 10 bytes: flushed
	if got := sink.all(); got != "abcdefghij" || len(sink.chunks) != 1 {
		t.Fatalf("after reaching the flush size: chunks %q, want one chunk abcdefghij", sink.chunks)
	}
	_, _ = l.Write([]byte("0123456789ABCDEFGHIJ")) // only 15 bytes fit under the cap of 25
	l.close()
	got := sink.all()
	if !strings.HasPrefix(got, "abcdefghij0123456789ABCDE\n") {
		t.Fatalf("log = %q, want the first 25 bytes then the drop note", got)
	}
	if !strings.Contains(got, "log truncated: 25 bytes kept, 5 bytes dropped") {
		t.Fatalf("log = %q, want a note on 5 dropped bytes", got)
	}
	n, err := l.Write([]byte("late"))
	if n != 4 || err != nil || strings.Contains(sink.all(), "late") {
		t.Fatalf("write after close = %d, %v, log %q; want it accepted and dropped", n, err, sink.all())
	}
}

func TestTaskLogKeepsOrderUnderConcurrentWriters(t *testing.T) {
	sink := &memSink{}
	l := newTaskLog(context.Background(), sink.append, 64, 1<<20, nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				_, _ = l.Write([]byte{byte('a' + w), byte('0' + i%10), '\n'})
				if i%50 == 0 {
					l.flush()
				}
			}
		}()
	}
	wg.Wait()
	l.close()
	lines := strings.Split(strings.TrimSuffix(sink.all(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("got %d lines, want 800", len(lines))
	}
	next := map[byte]int{}
	for _, ln := range lines {
		w, d := ln[0], int(ln[1]-'0')
		if d != next[w]%10 {
			t.Fatalf("writer %c: line %q out of order (want digit %d)", w, ln, next[w]%10)
		}
		next[w]++
	}
}

func TestTaskLogReportsSinkErrors(t *testing.T) {
	sink := &memSink{fail: true}
	var errs []error
	l := newTaskLog(context.Background(), sink.append, 4, 100, func(err error) { errs = append(errs, err) })
	n, err := l.Write([]byte("hello"))
	if n != 5 || err != nil {
		t.Fatalf("Write = %d, %v; a failing store must not fail the task's writes", n, err)
	}
	l.close()
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "injected append failure") {
		t.Fatalf("onError got %v, want the injected failure once", errs)
	}
}

func TestConfigErrors(t *testing.T) {
	_, err := NewWorker(WorkerConfig{Slots: -2, Grace: -time.Second})
	if err == nil {
		t.Fatal("NewWorker accepted an empty config")
	}
	for _, want := range []string{"field Store is nil", "field Registry is nil", "field Slots is -2", "field Grace is negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("NewWorker error %q does not mention %q", err, want)
		}
	}
	_, err = NewPool(PoolConfig{Processes: -1})
	if err == nil {
		t.Fatal("NewPool accepted an empty config")
	}
	for _, want := range []string{"field Store is nil", "field DatabaseURL is empty", "field Processes is -1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("NewPool error %q does not mention %q", err, want)
		}
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cmd       []string
		wantCode  int
		wantClean bool
	}{
		{"exit 0", []string{"true"}, 0, true},
		{"exit 75", []string{"sh", "-c", "exit 75"}, 75, true},
		{"killed", []string{"sh", "-c", "kill -9 $$"}, -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := exec.Command(tc.cmd[0], tc.cmd[1:]...).Run()
			code, clean := exitCode(err)
			if code != tc.wantCode || clean != tc.wantClean {
				t.Fatalf("exitCode(%v) = %d, %v; want %d, %v", err, code, clean, tc.wantCode, tc.wantClean)
			}
		})
	}
}

func TestLimitSinkBoundsSendsInFlight(t *testing.T) {
	sem := make(chan struct{}, 2)
	var mu sync.Mutex
	inFlight, peak := 0, 0
	entered, release := make(chan struct{}, 10), make(chan struct{})
	sink := limitSink(sem, func(context.Context, []byte) error {
		mu.Lock()
		inFlight++
		peak = max(peak, inFlight)
		mu.Unlock()
		entered <- struct{}{}
		<-release
		mu.Lock()
		inFlight--
		mu.Unlock()
		return nil
	})
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = sink(context.Background(), []byte("x")) }()
	}
	<-entered
	<-entered
	select {
	case <-entered:
		t.Fatal("a third send started while two held the tokens")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	wg.Wait()
	if peak != 2 {
		t.Fatalf("peak sends in flight = %d, want 2 (the limit)", peak)
	}
	sem <- struct{}{}
	sem <- struct{}{}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := sink(ctx, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("send with no token and a cancelled context = %v, want context.Canceled", err)
	}
}

func TestChildEnviron(t *testing.T) {
	environ := []string{"PATH=/bin", "TRELLIS_DATABASE_URL=postgres://u:pw@h/db", "TRELLIS_API_TOKEN=tok",
		"PGPASSWORD=pw", "PGSSLMODE=require", "HOME=/root", "TRELLISX=kept"}
	got := childEnviron(environ, []string{"TRELLIS_LOG_LEVEL=INFO", EnvChild + "=w1"})
	want := []string{"PATH=/bin", "HOME=/root", "TRELLISX=kept", "TRELLIS_LOG_LEVEL=INFO", EnvChild + "=w1"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("childEnviron = %q, want %q", got, want)
	}
	if got := connEnviron(environ); !reflect.DeepEqual(got, []string{"PGPASSWORD=pw", "PGSSLMODE=require"}) {
		t.Errorf("connEnviron = %q", got)
	}
}

// TestPoolChildPokeStandby: a pool's first child pokes, the others stand
// by (WorkerConfig.PokeStandby), whatever their generation.
func TestPoolChildPokeStandby(t *testing.T) {
	p, err := NewPool(PoolConfig{Store: openStore(t, testdb.SQLite(t)), DatabaseURL: "sqlite:x.db", Processes: 3,
		Executable: "/bin/true"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		index, gen int
		standby    bool
	}{{0, 0, false}, {0, 4, false}, {1, 0, true}, {2, 1, true}} {
		if got := p.childConfig(tc.index, tc.gen).PokeStandby; got != tc.standby {
			t.Errorf("child %d.%d: PokeStandby %v, want %v", tc.index, tc.gen, got, tc.standby)
		}
	}
}
