package postgres

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// A fused finish sends its whole transaction in one round trip, COMMIT
// included: the outcomes, the claim of what is queued, the release's
// increment, the claim of the slots left, the run's settling. The hot
// rows a finish holds to its commit (a fan-in's join from the increment,
// the run from the settling) are then never held through a round trip
// back to the worker. It applies when nothing after the outcome
// statement needs Go (fusable, and two guards in SQL): every try is
// recorded as the success reported (no restart, no call, no refused
// report) and no downstream instance is left for state.Decide to move.
// A guard that fails calls trellis_needs_go() (migration 00025), which
// aborts the transaction; FinishAndClaim then runs it the usual way.

// errNeedsGo is a fused finish aborted by its guards.
var errNeedsGo = errors.New("finish needs decisions in Go")

// errNeedsLimits is a fused finish with the light claim aborted by its
// look (lookLightSQL).
var errNeedsLimits = errors.New("claim needs its limited branches")

// needsGo reports whether err is the error of trellis_needs_go().
func needsGo(err error) bool { return pgCode(err) == "TR001" }

// needsLimits reports whether err is the error of trellis_needs_limits()
// (migration 00050).
func needsLimits(err error) bool { return pgCode(err) == "TR002" }

// pgCode returns the SQLSTATE of err, "" when it is no server error.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// fusable reports whether a batch of results may be finished fused:
// successes only, no branch choices, each instance once.
func fusable(results []store.Result) bool {
	seen := make(map[int64]bool, len(results))
	for _, r := range results {
		if r.State != state.Success || r.Follow != nil || seen[r.ID] {
			return false
		}
		seen[r.ID] = true
	}
	return true
}

// fusedPause is how many fusable finishes go the usual way after misses
// fused finishes in a row were aborted by their guards (a DAG whose
// downstream rules decide on partial counts aborts every time).
func fusedPause(misses int64) int64 {
	if misses <= 0 {
		return 0
	}
	return 1 << min(misses, 8)
}

// tryFused reports whether this fusable finish should be sent fused, and
// counts it against the pause after misses.
func (s *Store) tryFused() bool {
	for {
		n := s.fusedSkip.Load()
		if n <= 0 {
			return true
		}
		if s.fusedSkip.CompareAndSwap(n, n-1) {
			return false
		}
	}
}

// fusedDone records how a fused finish ended: aborted by its guards
// (miss) or committed.
func (s *Store) fusedDone(miss bool) {
	if !miss {
		s.fusedMisses.Store(0)
		return
	}
	s.fusedSkip.Store(fusedPause(s.fusedMisses.Add(1)))
}

// finishFused runs a fused finish in a transaction of its own: one
// round trip, retried on deadlocks like inPipe; errNeedsGo when its
// guards aborted it, errNeedsLimits when the light claim's look did
// (the store then expects limits in play: lightClaim is false).
func (s *Store) finishFused(ctx context.Context, op, plan string, fn func(p *pipeTx) error) error {
	return s.retry(ctx, op, func() error {
		err := s.pipeOnce(ctx, plan, fn)
		if needsGo(err) {
			return &storeError{errNeedsGo}
		}
		if needsLimits(err) {
			s.lightClaim.Store(false)
			return &storeError{errNeedsLimits}
		}
		return err
	})
}

// waitWhileSucceeding lists the trigger rules that wait, as state.Decide
// says, while some but not all upstream tasks have succeeded and none
// ended otherwise: an instance with such a rule and such counters needs
// no decision.
var waitWhileSucceeding = func() []string {
	var rules []string
	for _, r := range dag.TriggerRules {
		wait := true
		for n := 2; n <= 8; n++ {
			for k := 1; k < n; k++ {
				if state.Decide(r, state.Upstream{Total: n, Success: k}) != state.Wait {
					wait = false
				}
			}
		}
		if wait {
			rules = append(rules, string(r))
		}
	}
	return rules
}()

// outcomeFusedSQL is outcomeHotSQL that aborts (trellis_needs_go)
// unless every instance of $1 (each once) was recorded as a success and
// is no call: a refused report, a restart or a call waiter's wake-up
// needs Go. It keeps the runs of the instances and how many each
// finished in trellis.settle_runs and trellis.settle_n, for
// settleFusedSQL, and the limited ones, whose slots it frees, in
// trellis.freed, for fusedClaimSQL. Its parameters and rows are
// outcomeSQL's.
var outcomeFusedSQL = strings.Replace(outcomeHotSQL, `
		SELECT * FROM o`, `,
		g AS (SELECT CASE WHEN count(*) FILTER (WHERE o.state = 'success' AND o.map_index < 0) <> cardinality($1::bigint[])
				THEN trellis_needs_go()
				ELSE set_config('trellis.settle_runs', coalesce((SELECT array_agg(r.run_id ORDER BY r.run_id)
						FROM (SELECT run_id FROM o GROUP BY run_id) r), '{}')::text, true) IS NOT NULL
					AND set_config('trellis.settle_n', coalesce((SELECT array_agg(r.n ORDER BY r.run_id)
						FROM (SELECT run_id, count(*) AS n FROM o GROUP BY run_id) r), '{}')::text, true) IS NOT NULL
					AND set_config('trellis.freed', coalesce((SELECT array_agg(r.id ORDER BY r.id) FROM o r WHERE r.limited),
						'{}')::text, true) IS NOT NULL END AS ok
			FROM o)
		SELECT * FROM o WHERE (SELECT ok FROM g)`, 1)

// incrementFusedSQL is incrementRecordedSQL that aborts
// (trellis_needs_go) when a downstream instance it did not queue waits
// in a running run and state.Decide may move it: its rule is not one of
// $6 (waitWhileSucceeding), or an upstream task ended otherwise than in
// success, or all succeeded.
var incrementFusedSQL = strings.Replace(incrementRecordedSQL, `
		up_success, up_failed, up_skipped, up_upstream_failed, up_removed, queued FROM u`, `
		up_success, up_failed, up_skipped, up_upstream_failed, up_removed, queued FROM u
	WHERE CASE WHEN NOT queued AND state = 'none' AND run_state = 'running'
		AND NOT (trigger_rule = ANY($6::text[]) AND up_failed = 0 AND up_skipped = 0
			AND up_upstream_failed = 0 AND up_removed = 0 AND up_success < n_upstream)
		THEN trellis_needs_go() ELSE true END`, 1)

// earlyClaimCountedSQL is earlyClaimSQL that also keeps how many
// instances it claimed in trellis.early (unset: none), for
// fusedClaimSQL's limit.
var earlyClaimCountedSQL = strings.Replace(earlyClaimSQL, `FROM u AS t JOIN dag_runs r ON r.id = t.run_id`,
	`FROM u AS t JOIN dag_runs r ON r.id = t.run_id
		CROSS JOIN (SELECT set_config('trellis.early', count(*)::text, true) FROM u) e`, 1)

// fusedClaimSQL is fastClaimFreeingSQL claiming $1 less what
// earlyClaimCountedSQL claimed, and freeing the slots of the instances
// outcomeFusedSQL kept in trellis.freed (no $6).
var fusedClaimSQL = strings.NewReplacer("$1", earlyLeft,
	"$6::bigint[]", `current_setting('trellis.freed')::bigint[]`).Replace(fastClaimFreeingSQL)

// lightClaimSQL is fusedClaimSQL without the limited branches: the
// unlimited queued instances, best first ($1 less what
// earlyClaimCountedSQL claimed), none while a DAG has a MaxActiveTasks
// cap (completeClaim then claims within the caps, as after
// fusedClaimSQL). It is equivalent to fusedClaimSQL when no limited
// instance is queued and the batch freed no slot, which a fused finish
// expects from its store's last look (Store.lightClaim) and
// lookLightSQL checks after it.
var lightClaimSQL = strings.Replace(unlimitedClaimSQL(""), "$1", earlyLeft, 1)

// earlyLeft is what a fused claim may take: $1 less what
// earlyClaimCountedSQL claimed, if it was sent.
const earlyLeft = `greatest($1::int - coalesce(nullif(current_setting('trellis.early', true), ''), '0')::int, 0)`

// limitsInPlay is whether a limited instance is queued or running (a
// pool's or key's counter counts the running ones).
const limitsInPlay = `EXISTS (SELECT 1 FROM task_queue WHERE limited)
		OR EXISTS (SELECT 1 FROM pools WHERE running > 0) OR EXISTS (SELECT 1 FROM concurrency_keys WHERE running > 0)`

// lookSQL is wokeSQL that also reads whether limits are in play after
// the fused claim: the store's choice of claim for its next fused
// finish (Store.lightClaim).
const lookSQL = `SELECT coalesce(current_setting('trellis.wake', true), '') = 'on', ` + limitsInPlay

// lookLightSQL is lookSQL after lightClaimSQL. It aborts the transaction
// (trellis_needs_limits, migration 00050) when the light claim was not
// equivalent to fusedClaimSQL: the outcome statement freed slots (which
// only fusedClaimSQL gives back), or a limited instance is queued (which
// fusedClaimSQL might have claimed, before what the light claim took).
const lookLightSQL = `SELECT coalesce(current_setting('trellis.wake', true), '') = 'on',
	CASE WHEN current_setting('trellis.freed') <> '{}' OR EXISTS (SELECT 1 FROM task_queue WHERE limited)
		THEN trellis_needs_limits() ELSE ` + limitsInPlay + ` END`

// settleFusedSQL is settleSQL for the runs and counts outcomeFusedSQL
// kept; $1 and $2 are settleSQL's $3 and $4.
var settleFusedSQL = strings.NewReplacer(
	`unnest($1::bigint[], $2::int[]) AS u(id, d)`,
	`unnest(current_setting('trellis.settle_runs')::bigint[], current_setting('trellis.settle_n')::int[]) AS u(id, d)`,
	"$3", "$1", "$4", "$2").Replace(settleSQL)

// fused places every statement of the finish before COMMIT (see above);
// what they return is read once committed. With light, the claim is
// lightClaimSQL, checked by lookLightSQL. The early claim is left out
// when the store's last claim came back short (Store.queueDrained): it
// would find nothing, and the claim after the increment takes what it
// would have.
func (f *finishTx) fused(light bool) error {
	p := f.tx.(*pipeTx)
	args, ids := f.outcomeArgs()
	f.rl = newReleaser(f.tx, f.now)
	f.speculate = true
	claim := f.claim
	qs := []finalQuery{hotOff, {sql: outcomeFusedSQL, args: args, read: f.readFusedOutcomes}, limitsOn}
	cargs := []any{0, f.now, "", "", 0}
	if claim != nil {
		qs = append(qs, finalQuery{sql: capsSQL, read: claim.cl.readCaps})
		if !f.s.queueDrained.Load() {
			qs = append(qs, finalQuery{sql: earlyClaimCountedSQL, args: claim.args(claim.max), read: claim.cl.readClaimed})
		}
		cargs = claim.args(claim.max)
	}
	claimSQL, look := fusedClaimSQL, lookSQL
	if light {
		claimSQL, look = lightClaimSQL, lookLightSQL
	}
	if q, ok := f.recordedLogs(); ok {
		qs = append(qs, q)
	}
	qs = append(qs,
		finalQuery{sql: incrementFusedSQL, args: []any{ids, recordedFinalStates, true, queueWhenAllSucceeded, f.now, waitWhileSucceeding},
			read: func(rows pgx.Rows) error {
				var err error
				f.waitingAfter, err = f.rl.readIncrement(rows)
				return err
			}},
		finalQuery{sql: claimSQL, args: cargs, read: f.readFusedClaim},
		setsOn)
	p.finals = append(p.finals, qs...)
	p.finals = append(p.finals, f.countNowLooking(look)...)
	p.beforeCommit(settleFusedSQL, []any{f.now, failingLeafStates}, f.rl.readSettled)
	if p.readyClaimed != nil {
		p.released = true // decided once committed (pipeTx.readyClaimed)
	} else {
		p.afterIf = append(p.afterIf, conditionalTopic{store.TopicTasksReady, func() bool { return f.rl.queued > 0 }})
	}
	p.afterIf = append(p.afterIf, conditionalTopic{store.TopicRunsChanged, func() bool { return len(f.rl.ended) > 0 }})
	return nil
}

// readFusedOutcomes reads the outcome statement's rows and reports them
// in out: every result applied (fusedAppliedSQL aborts otherwise).
func (f *finishTx) readFusedOutcomes(rows pgx.Rows) error {
	if err := f.readOutcomes(rows); err != nil {
		return err
	}
	for i, r := range f.results {
		st, ok := f.applied[r.ID]
		f.out[i].Applied, f.out[i].State = ok, st
	}
	return nil
}

// readFusedClaim reads fusedClaimSQL's claimed instances, if the finish
// claims.
func (f *finishTx) readFusedClaim(rows pgx.Rows) error {
	if f.claim == nil {
		return nil
	}
	return f.claim.cl.readClaimed(rows)
}
