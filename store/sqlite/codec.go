package sqlite

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/state"
)

// Instants are stored as unix microseconds (UTC), the precision of
// PostgreSQL's timestamptz; durations as nanoseconds.

func us(t time.Time) int64 { return t.UnixMicro() }

// nullUS stores an optional instant.
func nullUS(t *time.Time) any {
	if t == nil {
		return nil
	}
	return t.UnixMicro()
}

func fromUS(v int64) time.Time { return time.UnixMicro(v).UTC() }

func ptrUS(v sql.NullInt64) *time.Time {
	if !v.Valid {
		return nil
	}
	t := fromUS(v.Int64)
	return &t
}

// jsonText returns the text stored for an optional JSON document: nil
// stays NULL (no value).
func jsonText(raw json.RawMessage) any {
	if raw == nil {
		return nil
	}
	return string(raw)
}

// rawJSON reads an optional JSON document.
func rawJSON(v sql.NullString) json.RawMessage {
	if !v.Valid {
		return nil
	}
	return json.RawMessage(v.String)
}

// idList encodes ids as a JSON array for json_each, so a list is one
// parameter whatever its length.
func idList[T any](ids []T) string {
	b, err := json.Marshal(ids)
	if err != nil {
		// Slices of strings and integers always encode.
		panic(fmt.Sprintf("sqlite: encode id list: %v", err))
	}
	return string(b)
}

// nonTerminal lists the task states that are not final outcomes, for SQL
// IN lists (constant, not user input).
var nonTerminalSQL = func() string {
	var q []string
	for _, s := range state.TaskStates {
		if !s.Terminal() {
			q = append(q, "'"+string(s)+"'")
		}
	}
	return strings.Join(q, ", ")
}()

// The unfinished states split by the index that holds their instances
// (migration 00035): waiting ones (task_instances_waiting), queued
// (task_instances_dag_queued) and running (task_instances_running).
// Together they are every non-terminal state (TestUnfinishedStatesSplit).
var (
	waitingStates = []state.TaskState{state.None, state.Scheduled, state.UpForRetry, state.Deferred}
	runningStates = []state.TaskState{state.Running, state.Restarting}
)

// sqlList writes states as an SQL IN list (constants, not user input).
func sqlList(states []state.TaskState) string {
	q := make([]string, len(states))
	for i, s := range states {
		q[i] = "'" + string(s) + "'"
	}
	return strings.Join(q, ", ")
}

// counterColumn returns the task_instances column counting finished
// upstream instances in state s ("" when s is not a final state).
func counterColumn(s state.TaskState) string {
	switch s {
	case state.Success:
		return "up_success"
	case state.Failed:
		return "up_failed"
	case state.Skipped:
		return "up_skipped"
	case state.UpstreamFailed:
		return "up_upstream_failed"
	case state.Removed:
		return "up_removed"
	}
	return ""
}
