package sqlite

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Grid returns a page of a DAG's runs with the compact states of the
// wanted tasks in them: the page of runs, then the cells of those runs, in
// one read transaction (SQLite answers in-process, so two statements cost
// no round trip).
func (s *Store) Grid(ctx context.Context, q store.GridQuery) (store.Grid, error) {
	op := fmt.Sprintf("grid of dag %q", q.DAGID)
	if q.RunLimit < 0 || q.RunOffset < 0 {
		return store.Grid{}, fmt.Errorf("%s: negative run limit %d or offset %d", op, q.RunLimit, q.RunOffset)
	}
	g := store.Grid{Runs: []store.Run{}, Cells: []store.GridCell{}}
	err := s.read(ctx, op, func(tx *sql.Tx) error {
		g.Runs, g.Cells = g.Runs[:0], g.Cells[:0]
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM dag_runs WHERE dag_id = ?`, q.DAGID).Scan(&g.TotalRuns); err != nil {
			return err
		}
		if q.RunLimit == 0 || g.TotalRuns == 0 {
			return nil
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+runCols+` FROM dag_runs WHERE dag_id = ?
			ORDER BY logical_date DESC, id DESC LIMIT ? + 0 OFFSET ?`, q.DAGID, q.RunLimit, q.RunOffset)
		if err != nil {
			return err
		}
		defer rows.Close()
		ids := make([]int64, 0, q.RunLimit)
		for rows.Next() {
			r, err := scanRun(rows)
			if err != nil {
				return err
			}
			g.Runs = append(g.Runs, r.Run)
			ids = append(ids, r.ID)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if len(ids) == 0 || (!q.AllTasks && len(q.TaskIDs) == 0) {
			return nil
		}
		// Static instances, then call instances counted by task and state
		// (n; 0 for a static instance) through the partial index of calls.
		want := ``
		args := []any{idList(ids)}
		if !q.AllTasks {
			want = ` AND task_id IN (SELECT value FROM json_each(?))`
			args = append(args, idList(q.TaskIDs))
		}
		args = append(args, args...)
		cells, err := tx.QueryContext(ctx, `SELECT run_id, task_id, state, try_number, started_at, ended_at, 0
			FROM task_instances
			WHERE run_id IN (SELECT value FROM json_each(?)) AND call_key = ''`+want+`
			UNION ALL
			SELECT run_id, task_id, state, max(try_number), min(started_at), max(ended_at), count(*)
			FROM task_instances
			WHERE run_id IN (SELECT value FROM json_each(?)) AND map_index >= 0`+want+`
			GROUP BY run_id, task_id, state`, args...)
		if err != nil {
			return err
		}
		defer cells.Close()
		type runTask struct {
			run  int64
			task string
		}
		var called map[runTask]int // index in g.Cells of a callable's calls in a run
		for cells.Next() {
			var (
				c              store.GridCell
				st             string
				started, ended sql.NullInt64
				n              int
			)
			if err := cells.Scan(&c.RunID, &c.TaskID, &st, &c.TryNumber, &started, &ended, &n); err != nil {
				return err
			}
			if n == 0 {
				c.State, c.StartedAt, c.EndedAt = state.TaskState(st), ptrUS(started), ptrUS(ended)
				g.Cells = append(g.Cells, c)
				continue
			}
			k, ok := called[runTask{c.RunID, c.TaskID}]
			if !ok {
				if called == nil {
					called = map[runTask]int{}
				}
				k = len(g.Cells)
				called[runTask{c.RunID, c.TaskID}] = k
				g.Cells = append(g.Cells, store.GridCell{RunID: c.RunID, TaskID: c.TaskID})
			}
			g.Cells[k].AddCalls(state.TaskState(st), n, c.TryNumber, ptrUS(started), ptrUS(ended))
		}
		return cells.Err()
	})
	if err != nil {
		return store.Grid{}, err
	}
	return g, nil
}
