package dag

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"slices"
)

// fingerprintVersion changes whenever the encoding below changes, so old
// and new fingerprints of the same DAG never collide by accident.
const fingerprintVersion = "trellis-dag-fingerprint/1"

// Fingerprint returns the hex SHA-256 of the DAG's structure: its schedule
// and, for every task, its id, kind, trigger rule, retries, retry delay,
// backoff cap, timeout, priority, shell command, HTTP request, edges and
// limits (pool, pool slots, MaxActive, concurrency key).
// Functions cannot be hashed and are left out, as are the settings that do
// not shape a run (description, tags, dates, DAG-wide caps, params). The result
// does not depend on the order tasks, edges or map entries were added in,
// and changes whenever any of the fields above changes, so the store can
// tell one version of a DAG from the next.
func (d *DAG) Fingerprint() string {
	h := sha256.New()
	var e fpEncoder
	e.str(fingerprintVersion)
	e.str(d.schedule)
	e.int(int64(len(d.tasks)))
	h.Write(e.buf)

	// Tasks in id order. Tasks sharing an id (an invalid DAG) are ordered
	// by their encoding, so the result never depends on insertion order.
	order := make([]*Task, len(d.tasks))
	copy(order, d.tasks)
	slices.SortFunc(order, func(a, b *Task) int { return cmp.Compare(a.id, b.id) })
	var scratch []string
	for i := 0; i < len(order); {
		j := i + 1
		for j < len(order) && order[j].id == order[i].id {
			j++
		}
		if j == i+1 {
			e.buf = e.buf[:0]
			scratch = e.task(order[i], scratch)
			h.Write(e.buf)
		} else {
			encs := make([][]byte, 0, j-i)
			for _, t := range order[i:j] {
				var te fpEncoder
				scratch = te.task(t, scratch)
				encs = append(encs, te.buf)
			}
			slices.SortFunc(encs, bytes.Compare)
			for _, b := range encs {
				h.Write(b)
			}
		}
		i = j
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fpEncoder appends length-prefixed fields to buf, so that no two
// different field sequences encode alike.
type fpEncoder struct{ buf []byte }

func (e *fpEncoder) str(s string) {
	e.int(int64(len(s)))
	e.buf = append(e.buf, s...)
}

func (e *fpEncoder) int(n int64) { e.buf = binary.BigEndian.AppendUint64(e.buf, uint64(n)) }

// task encodes one task, its downstream edges sorted by id. scratch is
// reused between calls and returned.
func (e *fpEncoder) task(t *Task, scratch []string) []string {
	e.str(t.id)
	e.str(string(t.Kind()))
	if t.m().noDedup {
		// Only callables have it; other tasks' encoding is unchanged.
		e.str("nodedup")
	}
	e.str(string(t.o().trigger))
	e.int(int64(t.o().retries))
	e.int(int64(t.o().retryDelay))
	e.int(int64(t.o().maxBackoff))
	e.int(int64(t.o().timeout))
	e.int(int64(t.o().priority))
	e.str(t.o().command)
	e.str(t.req().Method)
	e.str(t.req().URL)
	e.str(t.req().Body)
	scratch = scratch[:0]
	for k := range t.req().Header {
		scratch = append(scratch, k)
	}
	slices.Sort(scratch)
	e.int(int64(len(scratch)))
	for _, k := range scratch {
		e.str(k)
		e.str(t.req().Header[k])
	}
	scratch = scratch[:0]
	for _, w := range t.downTasks() {
		scratch = append(scratch, w.id)
	}
	slices.Sort(scratch)
	e.int(int64(len(scratch)))
	for _, id := range scratch {
		e.str(id)
	}
	// Limits are stored with the structure, so they take part; a task
	// without any keeps the encoding (and fingerprint) it had before
	// limits existed. NUL cannot start a task id, so the section is never
	// read as the next task.
	if t.m().pool != "" || t.PoolSlots() != 1 || t.m().maxActive != 0 || t.m().keySet {
		e.str("\x00limits")
		e.str(t.m().pool)
		e.int(int64(t.PoolSlots()))
		e.int(int64(t.m().maxActive))
		e.str(t.m().keyTemplate)
		e.int(int64(t.m().keyLimit))
	}
	return scratch
}
