//go:build linux

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/api/openapi"
	"github.com/trellis-dag/trellis/internal/testdb"
)

// trellisBin is the trellis binary the tests run, built once by TestMain.
var trellisBin string

func TestMain(m *testing.M) {
	bin, err := buildTrellis()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
	trellisBin = bin
	testdb.Main(m)
}

// buildTrellis builds cmd/trellis (with the race detector when the tests
// have it) into a folder next to the test binary, which the go command
// removes when the tests end.
func buildTrellis() (string, error) {
	return buildCommand("trellis", "github.com/trellis-dag/trellis/cmd/trellis")
}

// buildCommand builds the command pkg as buildTrellis does, into a file
// called name.
func buildCommand(name, pkg string) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the test binary: %w", err)
	}
	dir := filepath.Join(filepath.Dir(exe), "trellis-e2e-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build %s: %w", name, err)
	}
	bin := filepath.Join(dir, name)
	args := []string{"build", "-o", bin}
	if raceBuild {
		args = append(args, "-race")
	}
	args = append(args, pkg)
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return bin, nil
}

// lockedBuffer collects a process's output; it is safe for the process's
// output goroutine and the test. With a pattern it also reports the first
// submatch of the first line that matches.
type lockedBuffer struct {
	mu      sync.Mutex
	b       bytes.Buffer
	pattern *regexp.Regexp
	found   chan string // receives the submatch once
	scanned int         // bytes of b already matched against pattern
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	if l.pattern != nil && l.found != nil {
		rest := l.b.Bytes()[l.scanned:]
		if i := bytes.LastIndexByte(rest, '\n'); i >= 0 {
			if m := l.pattern.FindSubmatch(rest[:i]); m != nil {
				l.found <- string(m[1])
				l.found = nil
			}
			l.scanned += i + 1
		}
	}
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// proc is a trellis process started by a test.
type proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	url    string // base URL it serves on, e.g. http://127.0.0.1:41234
	stdout *lockedBuffer
	stderr *lockedBuffer
	exited chan struct{}
	err    error // Wait's error, set before exited is closed
}

// servingLine is what `trellis serve` and `trellis api` print when they
// listen.
var servingLine = regexp.MustCompile(`serving on (http://\S+)`)

// startTrellis starts the trellis binary with args and env (added to a
// clean environment) and waits until it prints the URL it serves on. The
// process is killed when the test ends if it is still running.
func startTrellis(t testing.TB, env []string, args ...string) *proc {
	t.Helper()
	return startServing(t, launch(t, env, args...))
}

// startServing starts p and waits until it prints the URL it serves on.
func startServing(t testing.TB, p *proc) *proc {
	t.Helper()
	name := strings.Join(p.cmd.Args, " ")
	found := make(chan string, 1)
	p.stdout.mu.Lock()
	p.stdout.pattern, p.stdout.found = servingLine, found
	p.stdout.mu.Unlock()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p.wait()
	select {
	case p.url = <-found:
	case <-p.exited:
		t.Fatalf("%s exited before serving (%v)\nstdout:\n%s\nstderr:\n%s", name, p.err, p.stdout, p.stderr)
	case <-time.After(90 * time.Second):
		t.Fatalf("%s did not print the URL it serves on within 90s\nstdout:\n%s\nstderr:\n%s", name, p.stdout, p.stderr)
	}
	return p
}

// runTrellis runs the trellis binary to its end and returns its exit code.
func runTrellis(t testing.TB, env []string, args ...string) (code int, p *proc) {
	t.Helper()
	p = launch(t, env, args...)
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start trellis %s: %v", strings.Join(args, " "), err)
	}
	p.wait()
	select {
	case <-p.exited:
	case <-time.After(90 * time.Second):
		t.Fatalf("trellis %s did not exit within 90s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), p.stdout, p.stderr)
	}
	return p.cmd.ProcessState.ExitCode(), p
}

// launch prepares a trellis process: its own process group (so that a
// failed test can kill it with what it started), a clean environment with
// a private TMPDIR (the example DAGs write there), and output buffers.
func launch(t testing.TB, env []string, args ...string) *proc {
	t.Helper()
	return launchCmd(t, exec.Command(trellisBin, args...), env)
}

// launchCmd prepares cmd as launch does.
func launchCmd(t testing.TB, cmd *exec.Cmd, env []string) *proc {
	t.Helper()
	name := strings.Join(cmd.Args, " ")
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + os.Getenv("HOME"),
		"TMPDIR=" + t.TempDir(),
	}, env...)
	cmd.Dir = t.TempDir()
	p := &proc{t: t, cmd: cmd, stdout: &lockedBuffer{}, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stdout, p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Worker processes share the stderr pipe; if one outlived the server,
	// Wait would hang on it: give up on the pipe after a while instead.
	cmd.WaitDelay = 10 * time.Second
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			if p.cmd.Process != nil {
				_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
				<-p.exited
			}
		}
		if t.Failed() || os.Getenv("E2E_LOG") != "" {
			t.Logf("%s\nstdout:\n%s\nstderr:\n%s", name, p.stdout, p.stderr)
		}
	})
	return p
}

func (p *proc) wait() {
	go func() {
		p.err = p.cmd.Wait()
		close(p.exited)
	}()
}

// stop sends SIGTERM and returns the exit code.
func (p *proc) stop() int {
	p.t.Helper()
	p.terminate()
	return p.waitExit()
}

// terminate sends SIGTERM.
func (p *proc) terminate() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM: %v", err)
	}
}

// waitExit waits for the process to exit and returns its exit code.
func (p *proc) waitExit() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(90 * time.Second):
		p.t.Fatalf("trellis did not exit within 90s of SIGTERM\nstderr:\n%s", p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

// processInfo identifies a process across pid reuse.
type processInfo struct {
	pid, ppid int
	start     uint64 // clock ticks after boot
	state     byte
}

// readStat reads /proc/PID/stat.
func readStat(pid int) (processInfo, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return processInfo{}, false
	}
	// The command name is in parentheses and may hold anything: parse
	// after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return processInfo{}, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return processInfo{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	start, _ := strconv.ParseUint(f[19], 10, 64)
	return processInfo{pid: pid, ppid: ppid, start: start, state: f[0][0]}, true
}

// descendants returns every live process below pid.
func descendants(pid int) []processInfo {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]processInfo{}
	for _, e := range entries {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pi, ok := readStat(n); ok {
			children[pi.ppid] = append(children[pi.ppid], pi)
		}
	}
	var out []processInfo
	queue := []int{pid}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// alive reports whether the process pi still runs (not a zombie).
func alive(pi processInfo) bool {
	now, ok := readStat(pi.pid)
	return ok && now.start == pi.start && now.state != 'Z'
}

// eventually polls cond every 20ms until it holds or timeout passes; then
// the test fails with what cond last said.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v (last: %s)", what, timeout, last)
		}
		<-tick.C
	}
}

// client talks to a trellis server; every response is validated against
// Airflow's specification, failures reported on the test.
type client struct {
	t     testing.TB
	base  string
	token string
	http  *http.Client

	mu  sync.Mutex
	ops map[string]int // operation id -> responses validated against it
}

func newClient(t testing.TB, base, token string) *client {
	return &client{t: t, base: base, token: token, http: &http.Client{Timeout: 30 * time.Second}, ops: map[string]int{}}
}

// response is one answer of the server.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response is not a JSON object: %v\n%s", err, r.body)
	}
	return m
}

// do sends a request (body marshalled as JSON unless it is a string) with
// extra headers as name, value pairs, and validates the response.
func (c *client) do(method, path string, body any, headers ...string) response {
	c.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			c.t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	data, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		c.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	op, problems := openapi.ValidateResponse(req, resp.StatusCode, resp.Header, data)
	if len(problems) > 0 {
		c.t.Errorf("%s %s → %d: the response does not follow Airflow's specification:\n  %s\n  body: %.600s",
			method, path, resp.StatusCode, strings.Join(problems, "\n  "), data)
	}
	if op != "" {
		c.mu.Lock()
		c.ops[op]++
		c.mu.Unlock()
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// ok sends a request that must answer want and returns its JSON object.
func (c *client) ok(want int, method, path string, body any, headers ...string) map[string]any {
	c.t.Helper()
	r := c.do(method, path, body, headers...)
	if r.status != want {
		c.t.Fatalf("%s %s → %d, want %d: %s", method, path, r.status, want, r.body)
	}
	if len(r.body) == 0 {
		return nil
	}
	return r.json(c.t)
}

// validated returns the operation ids validated so far, sorted.
func (c *client) validated() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.ops))
	for op := range c.ops {
		out = append(out, op)
	}
	sort.Strings(out)
	return out
}

// sample is one line of the Prometheus text format.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// parseMetrics parses the Prometheus text exposition format.
func parseMetrics(text string) ([]sample, error) {
	var out []sample
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		s := sample{labels: map[string]string{}}
		i := strings.IndexAny(line, "{ ")
		if i < 0 {
			return nil, fmt.Errorf("line %d: no value: %q", n+1, line)
		}
		s.name = line[:i]
		rest := line[i:]
		if rest[0] == '{' {
			rest = rest[1:]
			for {
				rest = strings.TrimLeft(rest, ", ")
				if strings.HasPrefix(rest, "}") {
					rest = rest[1:]
					break
				}
				eq := strings.Index(rest, `="`)
				if eq < 0 {
					return nil, fmt.Errorf("line %d: bad labels: %q", n+1, line)
				}
				key := rest[:eq]
				rest = rest[eq+2:]
				var val strings.Builder
				j := 0
				for ; j < len(rest) && rest[j] != '"'; j++ {
					if rest[j] == '\\' && j+1 < len(rest) {
						j++
						switch rest[j] {
						case 'n':
							val.WriteByte('\n')
						default:
							val.WriteByte(rest[j])
						}
						continue
					}
					val.WriteByte(rest[j])
				}
				if j >= len(rest) {
					return nil, fmt.Errorf("line %d: unterminated label value: %q", n+1, line)
				}
				s.labels[key] = val.String()
				rest = rest[j+1:]
			}
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("line %d: no value: %q", n+1, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value %q: %v", n+1, fields[0], err)
		}
		s.value = v
		out = append(out, s)
	}
	return out, nil
}

// metrics is a scrape of /metrics.
type metrics []sample

// get returns the sum of the samples named name whose labels include
// want (name=value pairs), and whether there was any.
func (m metrics) get(name string, want ...string) (float64, bool) {
	sum, found := 0.0, false
next:
	for _, s := range m {
		if s.name != name {
			continue
		}
		for i := 0; i+1 < len(want); i += 2 {
			if s.labels[want[i]] != want[i+1] {
				continue next
			}
		}
		sum += s.value
		found = true
	}
	return sum, found
}

// scrape reads and parses /metrics.
func (c *client) scrape() metrics {
	c.t.Helper()
	r := c.do(http.MethodGet, "/metrics", nil)
	if r.status != http.StatusOK {
		c.t.Fatalf("GET /metrics → %d: %s", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		c.t.Errorf("GET /metrics Content-Type = %q, want the Prometheus text format", ct)
	}
	s, err := parseMetrics(string(r.body))
	if err != nil {
		c.t.Fatalf("GET /metrics: %v", err)
	}
	return s
}
