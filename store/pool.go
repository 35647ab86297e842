package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/trellis-dag/trellis/dag"
)

// ErrInUse: the pool cannot be deleted: task instances are running or
// queued in it, or it is the default pool.
var ErrInUse = errors.New("in use")

// DefaultPoolSlots is the size of default_pool when the store creates it
// and the scheduler is not told otherwise: unlimited (-1), so that tasks
// without limits keep the claim's fast path.
const DefaultPoolSlots = -1

// PoolSpec is a pool to create: Airflow's name, slots (-1 = unlimited)
// and description.
type PoolSpec struct {
	Name        string
	Slots       int
	Description string
}

// Check returns what is wrong with the spec, or nil.
func (p PoolSpec) Check() error { return dag.CheckPool(p.Name, p.Slots) }

// Pool is a stored pool with its occupancy, in slots, as Airflow
// reports it.
type Pool struct {
	Name           string
	Slots          int // -1 = unlimited
	Description    string
	RunningSlots   int
	QueuedSlots    int
	ScheduledSlots int
	DeferredSlots  int
}

// OccupiedSlots is the slots of running and queued instances (Airflow's
// occupied_slots without include_deferred).
func (p Pool) OccupiedSlots() int { return p.RunningSlots + p.QueuedSlots }

// OpenSlots is what is left for more instances to start: slots minus
// occupied slots, never below 0; -1 for an unlimited pool.
func (p Pool) OpenSlots() int {
	if p.Slots < 0 {
		return -1
	}
	return max(0, p.Slots-p.OccupiedSlots())
}

// PoolPatch changes a pool: nil fields are left as they are.
type PoolPatch struct {
	Name        *string // renaming is refused (the name is the key)
	Slots       *int
	Description *string
}

// KeyWait is a concurrency key whose queued instances wait: the key at
// its limit.
type KeyWait struct {
	Key     string
	Limit   int
	Running int
	Queued  int
}

// Pools is the part of the Store that keeps pools and reports on limits.
type Pools interface {
	// EnsurePools creates the pools that do not exist (existing ones are
	// left as they are: they may have been resized through the API) and
	// wakes claimers when it created some.
	EnsurePools(ctx context.Context, pools []PoolSpec) error
	// CreatePool creates a pool; ErrConflict when the name is taken.
	CreatePool(ctx context.Context, p PoolSpec) (Pool, error)
	GetPool(ctx context.Context, name string) (Pool, error)
	// ListPools returns pools ordered by name, and the total count.
	ListPools(ctx context.Context, limit, offset int) ([]Pool, int, error)
	// UpdatePool resizes or describes a pool; a new size holds from the
	// next claim, and a larger one wakes claimers.
	UpdatePool(ctx context.Context, name string, patch PoolPatch) (Pool, error)
	// DeletePool removes a pool; ErrInUse for default_pool or a pool
	// with running or queued instances.
	DeletePool(ctx context.Context, name string) error
	// WaitingOnKeys returns the concurrency keys at their limit with
	// queued instances waiting on them.
	WaitingOnKeys(ctx context.Context) ([]KeyWait, error)
}

// CheckPatch validates a pool patch against the pool's name.
func CheckPatch(name string, p PoolPatch) error {
	if p.Name != nil && *p.Name != name {
		return fmt.Errorf("pool %q: the name cannot be changed (to %q)", name, *p.Name)
	}
	if p.Slots != nil {
		if err := dag.CheckPool(name, *p.Slots); err != nil {
			return err
		}
	}
	return nil
}

// Limit kinds of the counters the claim keeps (concurrency_keys rows).
const (
	// KeyPrefixTask prefixes the counter of a task's MaxActive: "task:" +
	// DAG id + "." + task id.
	KeyPrefixTask = "task:"
	// KeyPrefixKey prefixes the counter of a rendered concurrency key.
	KeyPrefixKey = "key:"
)

// TaskKey is the counter name of a task's MaxActive.
func TaskKey(dagID, taskID string) string { return KeyPrefixTask + dagID + "." + taskID }
