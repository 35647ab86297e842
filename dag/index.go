package dag

import "hash/maphash"

// taskIndex finds a DAG's tasks by id. It is a hash table with open
// addressing over positions in the DAG's task list, 4 bytes a slot: a
// map[string]*Task costs ~45 bytes per task, which at 100,000 tasks is
// more than the tasks themselves (held in every process that registers
// the DAG).
type taskIndex struct {
	seed  maphash.Seed
	slots []int32 // 1 + position of a task in the list; 0 = empty
	n     int     // slots in use
}

// minIndexSlots is the size of a new table; it stays a power of two.
const minIndexSlots = 8

// find returns the task of tasks indexed under id, or nil.
func (x *taskIndex) find(tasks []*Task, id string) *Task {
	if len(x.slots) == 0 {
		return nil
	}
	mask := uint64(len(x.slots) - 1)
	for i := maphash.String(x.seed, id) & mask; ; i = (i + 1) & mask {
		p := x.slots[i]
		if p == 0 {
			return nil
		}
		if t := tasks[p-1]; t.id == id {
			return t
		}
	}
}

// add indexes tasks[pos] under its id unless a task with that id is
// indexed already (the first one added keeps the id).
func (x *taskIndex) add(tasks []*Task, pos int) {
	if len(x.slots) == 0 {
		x.seed = maphash.MakeSeed()
		x.slots = make([]int32, minIndexSlots)
	}
	id := tasks[pos].id
	mask := uint64(len(x.slots) - 1)
	i := maphash.String(x.seed, id) & mask
	for ; x.slots[i] != 0; i = (i + 1) & mask {
		if tasks[x.slots[i]-1].id == id {
			return
		}
	}
	x.slots[i] = int32(pos + 1)
	x.n++
	if x.n*4 > len(x.slots)*3 { // more than 3/4 full: probes grow long
		x.grow(tasks)
	}
}

// grow doubles the table and places every indexed task again.
func (x *taskIndex) grow(tasks []*Task) {
	old := x.slots
	x.slots = make([]int32, 2*len(old))
	mask := uint64(len(x.slots) - 1)
	for _, p := range old {
		if p == 0 {
			continue
		}
		i := maphash.String(x.seed, tasks[p-1].id) & mask
		for x.slots[i] != 0 {
			i = (i + 1) & mask
		}
		x.slots[i] = p
	}
}
