package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// gridSQL reads a page of a DAG's runs, newest first, each with the
// compact states of its instances aggregated into arrays: one statement
// and one row per run, however many tasks. cells chooses the static
// instances of the run r, calls its call instances counted by task and
// state (n; 0 for a static instance), through the partial index of calls
// so that a DAG without callables pays one empty index probe per run:
// every task's, or those of the tasks in $4 (joined, not filtered with =
// ANY, which compares each row with the whole list).
func gridSQL(cells, calls string) string {
	return `WITH p AS (
	SELECT r.*, count(*) OVER () AS total FROM dag_runs r
	WHERE r.dag_id = $1
	ORDER BY r.logical_date DESC, r.id DESC
	LIMIT $2 OFFSET $3)
SELECT ` + runCols + `, r.total,
	coalesce(c.task_ids, '{}'), coalesce(c.states, '{}'), coalesce(c.tries, '{}'), c.starts, c.ends, coalesce(c.ns, '{}')
FROM p r
LEFT JOIN LATERAL (
	SELECT array_agg(t.task_id) AS task_ids, array_agg(t.state) AS states,
		array_agg(t.try_number) AS tries, array_agg(t.started_at) AS starts, array_agg(t.ended_at) AS ends,
		array_agg(t.n) AS ns
	FROM (SELECT t.task_id, t.state, t.try_number, t.started_at, t.ended_at, 0::bigint AS n
		` + cells + `
	UNION ALL
	SELECT t.task_id, t.state, max(t.try_number), min(t.started_at), max(t.ended_at), count(*)
		` + calls + ` AND t.map_index >= 0
		GROUP BY t.task_id, t.state) t) c ON true
ORDER BY r.logical_date DESC, r.id DESC`
}

var (
	gridAllSQL = gridSQL(`FROM task_instances t WHERE t.run_id = r.id AND t.call_key = ''`,
		`FROM task_instances t WHERE t.run_id = r.id`)
	gridSomeSQL = gridSQL(`FROM unnest($4::text[]) AS w(task_id)
		JOIN task_instances t ON t.run_id = r.id AND t.task_id = w.task_id AND t.call_key = ''`,
		`FROM unnest($4::text[]) AS w(task_id)
		JOIN task_instances t ON t.run_id = r.id AND t.task_id = w.task_id`)
)

// gridCountSQL counts a DAG's runs when the page is past the last one.
const gridCountSQL = `SELECT count(*) FROM dag_runs WHERE dag_id = $1`

// Grid returns a page of a DAG's runs with the compact states of the
// wanted tasks in them.
func (s *Store) Grid(ctx context.Context, q store.GridQuery) (store.Grid, error) {
	op := fmt.Sprintf("grid of dag %q", q.DAGID)
	if q.RunLimit < 0 || q.RunOffset < 0 {
		return store.Grid{}, fmt.Errorf("%s: negative run limit %d or offset %d", op, q.RunLimit, q.RunOffset)
	}
	g := store.Grid{Runs: []store.Run{}, Cells: []store.GridCell{}}
	if q.RunLimit > 0 {
		// Planned for its parameters every time (an unnamed statement,
		// described first so that the arrays come back in binary): a
		// generic plan cannot know how many runs and tasks there are.
		sql, args := gridAllSQL, []any{pgx.QueryExecModeDescribeExec, q.DAGID, q.RunLimit, q.RunOffset}
		if !q.AllTasks {
			taskIDs := q.TaskIDs
			if taskIDs == nil {
				taskIDs = []string{}
			}
			sql, args = gridSomeSQL, append(args, taskIDs)
		}
		rows, err := s.pool.Query(ctx, sql, args...)
		if err != nil {
			return store.Grid{}, mapErr(op, err)
		}
		defer rows.Close()
		for rows.Next() {
			var (
				r           store.Run
				conf        []byte
				ids, states []string
				tries       []int32
				starts      []*time.Time
				ends        []*time.Time
				ns          []int64
			)
			if err := rows.Scan(&r.ID, &r.DAGID, &r.RunID, &r.RunType, &r.LogicalDate, &r.IntervalStart, &r.IntervalEnd,
				&r.State, &conf, &r.Fingerprint, &r.Note, &r.QueuedAt, &r.StartedAt, &r.EndedAt, &g.TotalRuns,
				&ids, &states, &tries, &starts, &ends, &ns); err != nil {
				return store.Grid{}, mapErr(op, err)
			}
			if len(states) != len(ids) || len(tries) != len(ids) || len(starts) != len(ids) || len(ends) != len(ids) || len(ns) != len(ids) {
				return store.Grid{}, mapErr(op, errors.New("grid: arrays of different lengths"))
			}
			r.Conf = conf
			r.LogicalDate, r.IntervalStart, r.IntervalEnd, r.QueuedAt = utc(r.LogicalDate), utc(r.IntervalStart), utc(r.IntervalEnd), utc(r.QueuedAt)
			r.StartedAt, r.EndedAt = utcp(r.StartedAt), utcp(r.EndedAt)
			g.Runs = append(g.Runs, r)
			var called map[string]int // task → index in g.Cells of its calls in r
			for i, id := range ids {
				if ns[i] == 0 {
					g.Cells = append(g.Cells, store.GridCell{RunID: r.ID, TaskID: id, State: state.TaskState(states[i]),
						TryNumber: int(tries[i]), StartedAt: utcp(starts[i]), EndedAt: utcp(ends[i])})
					continue
				}
				k, ok := called[id]
				if !ok {
					if called == nil {
						called = map[string]int{}
					}
					k, called[id] = len(g.Cells), len(g.Cells)
					g.Cells = append(g.Cells, store.GridCell{RunID: r.ID, TaskID: id})
				}
				g.Cells[k].AddCalls(state.TaskState(states[i]), int(ns[i]), int(tries[i]), utcp(starts[i]), utcp(ends[i]))
			}
		}
		if err := rows.Err(); err != nil {
			return store.Grid{}, mapErr(op, err)
		}
		if len(g.Runs) > 0 {
			return g, nil
		}
	}
	// No run on the page: count apart (an empty page carries no total).
	if err := s.pool.QueryRow(ctx, gridCountSQL, q.DAGID).Scan(&g.TotalRuns); err != nil {
		return store.Grid{}, mapErr(op, err)
	}
	return g, nil
}
