package postgres

import (
	"context"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/trellis-dag/trellis/internal/testdb"
	"github.com/trellis-dag/trellis/store"
)

// TestPokesAgainArgs: the text arrays of pokesAgainSQL list the results
// in instance id order, whatever order they come in, and an empty list
// is an empty array.
func TestPokesAgainArgs(t *testing.T) {
	at := func(us int64) store.Result {
		return store.Result{Deferral: store.Deferral{Poke: true, NextCheckAt: time.UnixMicro(us)}}
	}
	results := []store.PokeResult{
		{Try: store.Try{ID: 30}, Lease: 3, Result: at(1_764_900_000_000_003)},
		{Try: store.Try{ID: 7}, Lease: 12, Result: at(-5)},
		{Try: store.Try{ID: 1_000_000_000_001}, Lease: 1, Result: at(0)},
	}
	want := [3]string{"{7,30,1000000000001}", "{12,3,1}", "{-5,1764900000000003,0}"}
	if got := pokesAgainArgs(results); got != want {
		t.Errorf("pokesAgainArgs(unsorted) = %q, want %q", got, want)
	}
	sorted := []store.PokeResult{results[1], results[0], results[2]}
	if got := pokesAgainArgs(sorted); got != want {
		t.Errorf("pokesAgainArgs(sorted) = %q, want %q", got, want)
	}
	if got := pokesAgainArgs(nil); got != [3]string{"{}", "{}", "{}"} {
		t.Errorf("pokesAgainArgs(nil) = %q, want three empty arrays", got)
	}
	if got := int8Array([]int64{-1, 0, 9_223_372_036_854_775_807}); got != "{-1,0,9223372036854775807}" {
		t.Errorf("int8Array = %q", got)
	}
}

// TestPokeColumns: a claim's arrays read the same in binary (decoded by
// hand) and as text (simple protocol, through pgx): NULL deadlines and
// infinity are the zero time, each run's conf goes with its first poke
// in instance id order, and a claim of nothing (NULL arrays) is no poke.
func TestPokeColumns(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, testdb.Postgres(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	const claim = `SELECT '{5,3,9}'::int8[], '{1,2,1}'::int4[], '{7,8,1}'::int8[], '{20,10,20}'::int8[],
		'{s5,s3,s5}'::text[], ARRAY[NULL, '2026-01-01 00:00:01.000002Z', 'infinity']::timestamptz[],
		'{10,20}'::int8[], '{d1,d2}'::text[], '{r1,r2}'::text[],
		ARRAY['2026-01-01Z', '2026-01-02Z']::timestamptz[], ARRAY['2026-01-03Z', '2026-01-04Z']::timestamptz[],
		ARRAY['2026-01-05Z', '2026-01-06Z']::timestamptz[], ARRAY['{"a": 1}', '{}']::text[]`
	day := func(d int) time.Time { return time.Date(2026, 1, d, 0, 0, 0, 0, time.UTC) }
	run := func(id int64, dag, name string, d int) store.Poke {
		return store.Poke{RunID: id, DAGID: dag, DAGRunID: name, LogicalDate: day(d), IntervalStart: day(d + 2), IntervalEnd: day(d + 4)}
	}
	want := []store.Poke{run(10, "d1", "r1", 1), run(20, "d2", "r2", 2), run(20, "d2", "r2", 2)}
	want[0].Try, want[0].Lease, want[0].TaskID = store.Try{ID: 3, TryNumber: 2}, 8, "s3"
	want[0].TriggerTimeout = time.Date(2026, 1, 1, 0, 0, 1, 2000, time.UTC)
	want[0].Conf = []byte(`{"a": 1}`)
	want[1].Try, want[1].Lease, want[1].TaskID, want[1].Conf = store.Try{ID: 5, TryNumber: 1}, 7, "s5", []byte(`{}`)
	want[2].Try, want[2].Lease, want[2].TaskID = store.Try{ID: 9, TryNumber: 1}, 1, "s5"
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		c := &pokeColumns{taskIDs: map[string]string{}}
		for _, q := range []string{claim, claim, `SELECT NULL::int8[], NULL::int4[], NULL::int8[], NULL::int8[], NULL::text[],
			NULL::timestamptz[], NULL::int8[], NULL::text[], NULL::text[], NULL::timestamptz[], NULL::timestamptz[],
			NULL::timestamptz[], NULL::text[]`} {
			rows, err := conn.Query(ctx, q, mode)
			if err != nil {
				t.Fatal(err)
			}
			if !rows.Next() {
				t.Fatalf("%v: no row: %v", mode, rows.Err())
			}
			err = c.read(rows)
			rows.Close()
			if err != nil {
				t.Fatalf("%v: read: %v", mode, err)
			}
			got, err := c.pokes()
			if err != nil {
				t.Fatalf("%v: pokes: %v", mode, err)
			}
			if q != claim {
				if got != nil {
					t.Errorf("%v: empty claim gave %+v", mode, got)
				}
				continue
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%v: pokes\n%+v\nwant\n%+v", mode, got, want)
			}
		}
	}
}

// TestArrayOfMalformed: a truncated or mistyped array is an error, not
// a panic or a short claim.
func TestArrayOfMalformed(t *testing.T) {
	good := []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 42}
	if got, err := int8s(nil, good); err != nil || len(got) != 1 || got[0] != 42 {
		t.Fatalf("int8s(good) = %v, %v", got, err)
	}
	for _, raw := range [][]byte{good[:len(good)-1], good[:22], good[:10]} {
		if got, err := int8s(nil, raw); err == nil {
			t.Errorf("int8s(% x) = %v, want an error", raw, got)
		}
	}
	var err error
	if arrayOf(nil, good, oidInt4, &err, func(b []byte) int32 { return 0 }); err == nil {
		t.Error("int8[] read as int4[]: no error")
	}
}

// TestPokeColumnsManyRuns: with more runs than a scan looks through
// (runIndex's map), pokes of interleaved runs get their own run's
// columns, and each run's conf goes with its first poke only.
func TestPokeColumnsManyRuns(t *testing.T) {
	const runs, per = 40, 3
	c := &pokeColumns{taskIDs: map[string]string{}}
	for r := range runs {
		id := int64(1000 + r)
		c.runIDs = append(c.runIDs, id)
		c.dags = append(c.dags, "d")
		c.runNames = append(c.runNames, fmt.Sprintf("run-%d", id))
		at := time.Date(2026, 1, 1, 0, 0, r, 0, time.UTC)
		c.logical, c.starts, c.ends = append(c.logical, at), append(c.starts, at), append(c.ends, at)
		c.confs = append(c.confs, []byte(fmt.Sprintf(`{"r":%d}`, id)))
	}
	// Instances in id order, their runs interleaved: run k's pokes are
	// instances k, k+runs, k+2·runs.
	for i := range runs * per {
		c.ids = append(c.ids, int64(i+1))
		c.tries, c.leases = append(c.tries, 1), append(c.leases, 1)
		c.runs = append(c.runs, int64(1000+i%runs))
		c.tasks, c.timeouts = append(c.tasks, fmt.Sprintf("t%d", i)), append(c.timeouts, time.Time{})
	}
	out, err := c.pokes()
	if err != nil {
		t.Fatal(err)
	}
	confs := map[int64]int{}
	for i, p := range out {
		if p.ID != int64(i+1) || p.DAGRunID != fmt.Sprintf("run-%d", p.RunID) || p.LogicalDate.Second() != int(p.RunID-1000) {
			t.Fatalf("poke %d: instance %d of run %d got run id %q, logical date %v", i, p.ID, p.RunID, p.DAGRunID, p.LogicalDate)
		}
		if p.Conf != nil {
			if want := fmt.Sprintf(`{"r":%d}`, p.RunID); string(p.Conf) != want || i >= runs {
				t.Fatalf("poke %d (instance %d, run %d) got conf %s, want %s on the run's first poke only", i, p.ID, p.RunID, p.Conf, want)
			}
			confs[p.RunID]++
		}
	}
	if len(confs) != runs {
		t.Fatalf("%d runs got their conf, want %d", len(confs), runs)
	}
	c.runs[0] = 9999 // a run the claim did not return
	if _, err := c.pokes(); err == nil {
		t.Fatal("a poke of a run without its columns: no error")
	}
}
