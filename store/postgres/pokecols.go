package postgres

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/trellis-dag/trellis/store"
)

// pokeColumns are the arrays of one claimPokesSQL row, decoded into
// slices kept from one claim to the next.
type pokeColumns struct {
	ids, leases, runs []int64
	tries             []int32
	tasks             []string
	timeouts          []time.Time
	// The runs' columns, one element per run.
	runIDs                []int64
	dags, runNames        []string
	logical, starts, ends []time.Time
	confs                 [][]byte
	// taskIDs interns task ids: a poke of an instance claimed before
	// reuses the string instead of allocating one per poke.
	taskIDs map[string]string
}

// maxInterned bounds taskIDs; past it the map starts over.
const maxInterned = 1 << 16

// pokeColumnsKept keeps the columns of the last claim (a poke loop claims
// one batch at a time; a concurrent claim makes its own).
var pokeColumnsKept keptColumns

type keptColumns struct {
	mu   sync.Mutex
	kept *pokeColumns
}

func (k *keptColumns) get() *pokeColumns {
	k.mu.Lock()
	defer k.mu.Unlock()
	c := k.kept
	k.kept = nil
	if c == nil {
		c = &pokeColumns{taskIDs: map[string]string{}}
	}
	return c
}

// put keeps c, emptied of the conf bytes of the claim, unless one is
// kept already.
func (k *keptColumns) put(c *pokeColumns) {
	clear(c.confs)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.kept == nil {
		k.kept = c
	}
}

// Binary array element type OIDs of claimPokesSQL's columns.
const (
	oidInt8        = 20
	oidInt4        = 23
	oidText        = 25
	oidTimestamptz = 1184
)

// read decodes the current row of rows: binary arrays by hand, or through
// pgx when the connection reads results as text (simple protocol).
func (c *pokeColumns) read(rows pgx.Rows) error {
	fds := rows.FieldDescriptions()
	if len(fds) != 13 {
		return fmt.Errorf("claim of pokes returned %d columns, want 13", len(fds))
	}
	for _, fd := range fds {
		if fd.Format != pgx.BinaryFormatCode {
			return c.scan(rows)
		}
	}
	raw := rows.RawValues()
	var err error
	c.ids, err = int8s(c.ids, raw[0])
	c.tries = arrayOf(c.tries, raw[1], oidInt4, &err, func(b []byte) int32 { return int32(binary.BigEndian.Uint32(b)) })
	c.leases = arrayOf(c.leases, raw[2], oidInt8, &err, int8Of)
	c.runs = arrayOf(c.runs, raw[3], oidInt8, &err, int8Of)
	c.tasks = arrayOf(c.tasks, raw[4], oidText, &err, c.intern)
	c.timeouts = arrayOf(c.timeouts, raw[5], oidTimestamptz, &err, timeOf)
	if err == nil {
		c.runIDs, err = int8s(c.runIDs, raw[6])
	}
	c.dags = arrayOf(c.dags, raw[7], oidText, &err, func(b []byte) string { return string(b) })
	c.runNames = arrayOf(c.runNames, raw[8], oidText, &err, func(b []byte) string { return string(b) })
	c.logical = arrayOf(c.logical, raw[9], oidTimestamptz, &err, timeOf)
	c.starts = arrayOf(c.starts, raw[10], oidTimestamptz, &err, timeOf)
	c.ends = arrayOf(c.ends, raw[11], oidTimestamptz, &err, timeOf)
	c.confs = arrayOf(c.confs, raw[12], oidText, &err, func(b []byte) []byte { return append([]byte{}, b...) })
	return err
}

// int8s decodes an int8[] into dst.
func int8s(dst []int64, raw []byte) ([]int64, error) {
	var err error
	return arrayOf(dst, raw, oidInt8, &err, int8Of), err
}

func int8Of(b []byte) int64 { return int64(binary.BigEndian.Uint64(b)) }

// pgEpochMicros is 2000-01-01, PostgreSQL's epoch, in microseconds since
// 1970.
const pgEpochMicros = 946_684_800_000_000

// timeOf decodes a binary timestamptz; NULL and ±infinity are the zero
// time (as pgtype.Timestamptz's Time is for them).
func timeOf(b []byte) time.Time {
	if b == nil {
		return time.Time{}
	}
	us := int64(binary.BigEndian.Uint64(b))
	if us == math.MaxInt64 || us == math.MinInt64 {
		return time.Time{}
	}
	return time.UnixMicro(us + pgEpochMicros).UTC()
}

// intern returns b as a string, the one kept from an earlier claim when
// there is one.
func (c *pokeColumns) intern(b []byte) string {
	if s, ok := c.taskIDs[string(b)]; ok {
		return s
	}
	if len(c.taskIDs) >= maxInterned {
		clear(c.taskIDs)
	}
	s := string(b)
	c.taskIDs[s] = s
	return s
}

var errArray = errors.New("malformed array in the claim of pokes")

// arrayOf decodes raw, a one-dimensional binary array of element type
// oid (NULL: empty), into dst reused, each element through elem (nil for
// a NULL element, which only timestamptz accepts). It does nothing once
// *err is set, and sets it on a malformed array.
func arrayOf[T any](dst []T, raw []byte, oid uint32, err *error, elem func([]byte) T) []T {
	dst = dst[:0]
	if *err != nil || raw == nil {
		return dst
	}
	if len(raw) < 12 || binary.BigEndian.Uint32(raw[8:]) != oid {
		*err = errArray
		return dst
	}
	ndim := binary.BigEndian.Uint32(raw)
	if ndim == 0 {
		return dst
	}
	if ndim != 1 || len(raw) < 20 {
		*err = errArray
		return dst
	}
	n := int(binary.BigEndian.Uint32(raw[12:]))
	raw = raw[20:]
	width := 0 // of each element; text's vary
	switch oid {
	case oidInt8, oidTimestamptz:
		width = 8
	case oidInt4:
		width = 4
	}
	dst = slices.Grow(dst, n)
	for range n {
		if len(raw) < 4 {
			*err = errArray
			return dst[:0]
		}
		size := int32(binary.BigEndian.Uint32(raw))
		raw = raw[4:]
		if size < 0 {
			if oid != oidTimestamptz {
				*err = errArray
				return dst[:0]
			}
			dst = append(dst, elem(nil))
			continue
		}
		if int(size) > len(raw) || (width > 0 && int(size) != width) {
			*err = errArray
			return dst[:0]
		}
		dst = append(dst, elem(raw[:size:size]))
		raw = raw[size:]
	}
	return dst
}

// scan reads the current row through pgx (text results).
func (c *pokeColumns) scan(rows pgx.Rows) error {
	var timeouts, logical, starts, ends []pgtype.Timestamptz
	var confs []string
	if err := rows.Scan(&c.ids, &c.tries, &c.leases, &c.runs, &c.tasks, &timeouts,
		&c.runIDs, &c.dags, &c.runNames, &logical, &starts, &ends, &confs); err != nil {
		return err
	}
	times := func(dst []time.Time, ts []pgtype.Timestamptz) []time.Time {
		dst = dst[:0]
		for _, t := range ts {
			v := time.Time{}
			if t.Valid {
				v = t.Time.UTC()
			}
			dst = append(dst, v)
		}
		return dst
	}
	c.timeouts, c.logical, c.starts, c.ends = times(c.timeouts, timeouts), times(c.logical, logical), times(c.starts, starts), times(c.ends, ends)
	c.confs = c.confs[:0]
	for _, s := range confs {
		c.confs = append(c.confs, []byte(s))
	}
	return nil
}

// pokes builds the claimed pokes from the columns read, in instance id
// order, with each run's conf on its first poke (nil: none claimed).
func (c *pokeColumns) pokes() ([]store.Poke, error) {
	n := len(c.ids)
	if len(c.tries) != n || len(c.leases) != n || len(c.runs) != n || len(c.tasks) != n || len(c.timeouts) != n {
		return nil, fmt.Errorf("claim of pokes returned arrays of different lengths")
	}
	m := len(c.runIDs)
	if len(c.dags) != m || len(c.runNames) != m || len(c.logical) != m || len(c.starts) != m || len(c.ends) != m || len(c.confs) != m {
		return nil, fmt.Errorf("claim of pokes returned run arrays of different lengths")
	}
	if n == 0 {
		return nil, nil
	}
	out := make([]store.Poke, n)
	runAt := c.runIndex()
	seen := make([]bool, m) // the run's conf went with a poke
	k := -1                 // the run of the poke before
	for i := range out {
		p := &out[i]
		p.ID, p.TryNumber, p.Lease, p.RunID = c.ids[i], int(c.tries[i]), c.leases[i], c.runs[i]
		p.TaskID, p.TriggerTimeout = c.tasks[i], c.timeouts[i]
		if k < 0 || c.runIDs[k] != p.RunID {
			if k = runAt(p.RunID); k < 0 {
				return nil, fmt.Errorf("claimed poke of instance %d came without its run's columns", p.ID)
			}
		}
		p.DAGID, p.DAGRunID = c.dags[k], c.runNames[k]
		p.LogicalDate, p.IntervalStart, p.IntervalEnd = c.logical[k], c.starts[k], c.ends[k]
		if !seen[k] {
			seen[k] = true
			p.Conf = c.confs[k]
		}
	}
	// array_agg follows claimPokesSQL's order; should a plan not keep
	// it, the pokes are sorted here (and the conf moved to each run's
	// first).
	if !slices.IsSortedFunc(out, func(a, b store.Poke) int { return cmp.Compare(a.ID, b.ID) }) {
		slices.SortFunc(out, func(a, b store.Poke) int { return cmp.Compare(a.ID, b.ID) })
		clear(seen)
		for i := range out {
			k := runAt(out[i].RunID)
			out[i].Conf = nil
			if !seen[k] {
				seen[k] = true
				out[i].Conf = c.confs[k]
			}
		}
	}
	return out, nil
}

// runIndex returns a function giving the position of a run in runIDs
// (-1: none): a scan when the claim holds few runs, a map when it holds
// many (sensors each of their own run), so that a claim stays linear.
func (c *pokeColumns) runIndex() func(int64) int {
	if len(c.runIDs) <= 16 {
		return func(id int64) int { return slices.Index(c.runIDs, id) }
	}
	at := make(map[int64]int, len(c.runIDs))
	for k, id := range c.runIDs {
		at[id] = k
	}
	return func(id int64) int {
		if k, ok := at[id]; ok {
			return k
		}
		return -1
	}
}
