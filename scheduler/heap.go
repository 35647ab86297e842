package scheduler

import (
	"container/heap"
	"time"
)

// entry is the loop's view of one scheduled DAG.
type entry struct {
	info     *dagInfo
	due      time.Time // when the entry is in the heap: when to fire
	index    int       // position in the heap; -1 when not in it
	paused   bool      // as last seen in the store
	inFlight bool      // a worker is firing it
	rearm    bool      // unpaused while in flight: fire again when it returns
	failures int       // consecutive failed fires, for backoff
	// last is the DAG's last interval end as last learned from the store
	// (the compare-and-set key of the next fire; a stale one costs a retry).
	last *time.Time
}

// dueHeap is a min-heap of entries by due instant (container/heap).
type dueHeap []*entry

func (h dueHeap) Len() int { return len(h) }

func (h dueHeap) Less(i, j int) bool {
	if h[i].due.Equal(h[j].due) {
		return h[i].info.id < h[j].info.id
	}
	return h[i].due.Before(h[j].due)
}

func (h dueHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *dueHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}

func (h *dueHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	e.index = -1
	*h = old[:n-1]
	return e
}

// schedule puts e in the heap due at t, or moves it there.
func (h *dueHeap) schedule(e *entry, t time.Time) {
	e.due = t
	if e.index >= 0 {
		heap.Fix(h, e.index)
		return
	}
	heap.Push(h, e)
}

// remove takes e out of the heap if it is in it.
func (h *dueHeap) remove(e *entry) {
	if e.index >= 0 {
		heap.Remove(h, e.index)
	}
}

// popDue removes and returns the entries due at or before now, earliest
// first.
func (h *dueHeap) popDue(now time.Time) []*entry {
	var out []*entry
	for h.Len() > 0 && !(*h)[0].due.After(now) {
		out = append(out, heap.Pop(h).(*entry))
	}
	return out
}

// next returns the earliest due instant (ok=false when empty).
func (h dueHeap) next() (time.Time, bool) {
	if len(h) == 0 {
		return time.Time{}, false
	}
	return h[0].due, true
}
