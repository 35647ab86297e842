package taskrun_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/taskrun"
)

type seenRequest struct {
	method, path, body, header, host string
}

func TestHTTPTask(t *testing.T) {
	big := strings.Repeat("x", taskrun.MaxHTTPOutput+100)
	requests := make(chan seenRequest, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		requests <- seenRequest{r.Method, r.URL.Path, string(body), r.Header.Get("X-Token"), r.Host}
		switch r.URL.Path {
		case "/json":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, "{ \"ok\": true,\n  \"n\": [1, 2] }\n")
		case "/text":
			io.WriteString(w, "plain \"text\"")
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/big":
			io.WriteString(w, big)
		case "/missing":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, "no such thing: "+strings.Repeat("y", 2000))
		case "/error":
			http.Error(w, "database down", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()

	cases := []struct {
		name   string
		req    dag.HTTPRequest
		state  state.TaskState
		output string // "" = none expected
		err    string
		seen   seenRequest
	}{
		{"json body becomes the output", dag.HTTPRequest{Method: "post", URL: srv.URL + "/json",
			Header: map[string]string{"X-Token": "t0k", "Host": "example.test"}, Body: `{"q":1}`},
			state.Success, `{"ok":true,"n":[1,2]}`, "",
			seenRequest{"POST", "/json", `{"q":1}`, "t0k", "example.test"}},
		{"text body becomes a JSON string", dag.HTTPRequest{URL: srv.URL + "/text"},
			state.Success, `"plain \"text\""`, "", seenRequest{method: "GET", path: "/text"}},
		{"empty body, no output", dag.HTTPRequest{Method: "DELETE", URL: srv.URL + "/empty"},
			state.Success, "", "", seenRequest{method: "DELETE", path: "/empty"}},
		{"404 fails with status and excerpt", dag.HTTPRequest{URL: srv.URL + "/missing"},
			state.Failed, "", "status 404 Not Found: no such thing: yyy", seenRequest{method: "GET", path: "/missing"}},
		{"500 fails", dag.HTTPRequest{Method: "PUT", URL: srv.URL + "/error", Body: "x"},
			state.Failed, "", "500 Internal Server Error: database down", seenRequest{method: "PUT", path: "/error", body: "x"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			task := dag.New("d").HTTP("h", c.req)
			var log bytes.Buffer
			out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("h"), Log: &log})
			if out.State != c.state || out.Permanent || out.TimedOut {
				t.Fatalf("outcome %+v, want %s", out, c.state)
			}
			if string(out.Output) != c.output {
				t.Errorf("output %s, want %s", out.Output, c.output)
			}
			if c.err != "" && (out.Err == nil || !strings.Contains(out.Err.Error(), c.err)) {
				t.Errorf("Err %v, want it to contain %q", out.Err, c.err)
			}
			if c.err != "" && len(out.Err.Error()) > 1000 {
				t.Errorf("error of %d bytes: the body excerpt is not capped", len(out.Err.Error()))
			}
			got := <-requests
			if c.seen.host == "" {
				got.host = ""
			}
			if got != c.seen {
				t.Errorf("server saw %+v, want %+v", got, c.seen)
			}
			if !strings.Contains(log.String(), "msg=\"response received\" status=") {
				t.Errorf("log lacks the response line:\n%s", log.String())
			}
		})
	}

	t.Run("body capped at 1 MiB", func(t *testing.T) {
		task := dag.New("d").HTTP("h", dag.HTTPRequest{URL: srv.URL + "/big"})
		out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("h")})
		<-requests
		var s string
		if err := json.Unmarshal(out.Output, &s); err != nil || out.State != state.Success {
			t.Fatalf("outcome %+v: %v", out.State, err)
		}
		if len(s) != taskrun.MaxHTTPOutput || s != big[:taskrun.MaxHTTPOutput] {
			t.Errorf("output of %d bytes, want the first %d", len(s), taskrun.MaxHTTPOutput)
		}
	})
}

func TestHTTPTaskTimeout(t *testing.T) {
	entered := make(chan struct{}, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done() // never answers; ends when the client gives up
	}))
	defer srv.Close()
	task := dag.New("d").HTTP("h", dag.HTTPRequest{URL: srv.URL}, dag.Timeout(100*time.Millisecond))
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("h")})
	<-entered
	if out.State != state.Failed || !out.TimedOut || !errors.Is(out.Err, taskrun.ErrTimeout) {
		t.Errorf("outcome %+v, want failed by timeout", out)
	}
}

func TestHTTPTaskBadRequest(t *testing.T) {
	for _, req := range []dag.HTTPRequest{{URL: "://no-scheme"}, {Method: "BAD METHOD", URL: "http://127.0.0.1:1/"}} {
		task := dag.New("d").HTTP("h", req)
		out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("h")})
		if out.State != state.Failed || !out.Permanent {
			t.Errorf("request %+v: outcome %+v, want a permanent failure", req, out)
		}
	}
	// Nothing listens on port 1: a transport error, retried like any failure.
	task := dag.New("d").HTTP("h", dag.HTTPRequest{URL: "http://127.0.0.1:1/"})
	out := taskrun.Run(context.Background(), taskrun.Try{Task: task, Info: info("h")})
	if out.State != state.Failed || out.Permanent || out.TimedOut {
		t.Errorf("connection refused: outcome %+v, want an ordinary failure", out)
	}
}
