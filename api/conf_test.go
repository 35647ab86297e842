package api

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"math/big"
	"strings"
	"sync"
	"testing"

	"github.com/trellis-dag/trellis/scheduler"
	"github.com/trellis-dag/trellis/store"
)

// lockedBuffer is a log sink safe for the server's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestConfNumbers triggers runs whose conf holds numbers a float64 cannot
// hold, through the scheduler as serve does: each is a 400 naming the
// member, nothing is logged with the value, and a conf of numbers that fit
// is stored exactly as sent.
func TestConfNumbers(t *testing.T) {
	forBackends(t, func(t *testing.T, backend string) {
		var logs lockedBuffer
		e := newEnv(t, backend, func(c *Config) {
			c.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			sched := scheduler.New(scheduler.Config{Store: c.Store, Registry: c.Registry})
			c.Triggerer = TriggerFunc(func(ctx context.Context, dagID string, r TriggerRequest) (store.Run, error) {
				return sched.TriggerRun(ctx, dagID, scheduler.TriggerOptions{
					RunID: r.RunID, LogicalDate: r.LogicalDate, Conf: r.Conf, Note: r.Note})
			})
		})
		digits := strings.Repeat("1234567890", 40)
		for _, c := range []struct{ body, detail string }{
			{`{"conf": {"n": 1e400}}`, `field "conf.n": the number (5 characters) is beyond the range`},
			{`{"conf": {"n": -1e400}}`, `field "conf.n"`},
			{`{"conf": {"n": ` + digits + `}}`, `field "conf.n": the number (400 characters)`},
			{`{"conf": {"deep": {"list": [1, ` + digits + `]}}}`, `field "conf.deep.list[1]"`},
		} {
			r := e.do("POST", "/api/v1/dags/etl/dagRuns", c.body)
			var p Problem
			_ = json.Unmarshal(r.body, &p)
			if r.status != 400 || !strings.Contains(p.Detail, c.detail) {
				t.Errorf("%.60s: %d %s, want 400 with %q", c.body, r.status, r.body, c.detail)
			}
		}
		if l := logs.String(); strings.Contains(l, "1e400") || strings.Contains(l, digits[:40]) {
			t.Errorf("the log copies the request body:\n%s", l)
		}
		// Numbers that fit are kept exactly (PostgreSQL's jsonb may write
		// them differently, with the same value).
		sent := map[string]string{"big": "123456789012345678901234567890", "small": "1e-400", "x": "1.50"}
		r := e.do("POST", "/api/v1/dags/etl/dagRuns",
			`{"dag_run_id": "exact", "conf": {"big": 123456789012345678901234567890, "small": 1e-400, "x": 1.50}}`)
		if r.status != 200 {
			t.Fatalf("conf of numbers that fit: %d %s", r.status, r.body)
		}
		for _, body := range [][]byte{r.body, e.do("GET", "/api/v1/dags/etl/dagRuns/exact", nil).body} {
			var got struct{ Conf map[string]json.Number }
			dec := json.NewDecoder(bytes.NewReader(body))
			dec.UseNumber()
			if err := dec.Decode(&got); err != nil {
				t.Fatal(err)
			}
			for k, v := range sent {
				want, _ := new(big.Rat).SetString(v)
				have, ok := new(big.Rat).SetString(string(got.Conf[k]))
				if !ok || have.Cmp(want) != 0 {
					t.Errorf("conf.%s answered %s, want %s exactly", k, got.Conf[k], v)
				}
			}
		}
	})
}
