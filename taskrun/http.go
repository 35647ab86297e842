package taskrun

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/trellis-dag/trellis/state"
)

// MaxHTTPOutput caps the part of an HTTP task's response body that is
// read and kept as its output.
const MaxHTTPOutput = 1 << 20

// httpExcerpt caps the body excerpt in the error of a non-2xx response.
const httpExcerpt = 512

// runHTTP sends an HTTP task's request within the task's timeout.
// Method defaults to GET; Header entries are set on the request (a "Host"
// entry sets the Host). A 2xx response is success and its body, read up to
// MaxHTTPOutput bytes, is the output: the JSON itself (compacted) when the
// body is valid JSON, otherwise the body as a JSON string; an empty body
// gives no output. Any other status fails the try with the status and the
// start of the body. A request that cannot be built (bad URL or method)
// fails permanently; transport errors are ordinary failures.
func runHTTP(tctx context.Context, t Try, logger *slog.Logger) Outcome {
	spec := t.Task.HTTPRequest()
	method := strings.ToUpper(spec.Method)
	if method == "" {
		method = http.MethodGet
	}
	var body io.Reader
	if spec.Body != "" {
		body = strings.NewReader(spec.Body)
	}
	req, err := http.NewRequestWithContext(tctx, method, spec.URL, body)
	if err != nil {
		return failed(fmt.Errorf("http: build request: %w", err), true)
	}
	for k, v := range spec.Header {
		if strings.EqualFold(k, "Host") {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	client := t.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	logger.Info("sending request", "method", method, "url", spec.URL)
	resp, err := client.Do(req)
	if err != nil {
		return httpFailure(tctx, fmt.Errorf("http %s %s: %w", method, spec.URL, err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxHTTPOutput+1))
	if err != nil {
		return httpFailure(tctx, fmt.Errorf("http %s %s: read response body: %w", method, spec.URL, err))
	}
	truncated := len(data) > MaxHTTPOutput
	if truncated {
		data = data[:MaxHTTPOutput]
	}
	logger.Info("response received", "status", resp.Status, "bytes", len(data), "truncated", truncated)
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return failed(fmt.Errorf("http %s %s: status %s: %s", method, spec.URL, resp.Status, excerpt(data)), false)
	}
	out := Outcome{State: state.Success}
	if len(data) > 0 {
		out.Output = bodyOutput(data, truncated)
	}
	return out
}

// httpFailure fails a try, as a timeout when the try's deadline caused it.
func httpFailure(tctx context.Context, err error) Outcome {
	if tctx.Err() != nil {
		if cause, timedOut := stopCause(tctx); timedOut {
			return Outcome{State: state.Failed, TimedOut: true, Err: fmt.Errorf("%w: %v", cause, err)}
		}
	}
	return failed(err, false)
}

func bodyOutput(data []byte, truncated bool) json.RawMessage {
	if !truncated && json.Valid(data) {
		var buf bytes.Buffer
		if json.Compact(&buf, data) == nil {
			return buf.Bytes()
		}
	}
	b, _ := json.Marshal(string(data)) // a string always encodes
	return b
}

func excerpt(data []byte) string {
	if len(data) <= httpExcerpt {
		return string(data)
	}
	cut := httpExcerpt
	for cut > 0 && !utf8.RuneStart(data[cut]) {
		cut--
	}
	return string(data[:cut]) + "…"
}
