package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"time"

	"github.com/trellis-dag/trellis/state"
)

// NewCall is one call of a callable made by a running try.
type NewCall struct {
	// TaskID is the callable's task id in the caller's DAG.
	TaskID string
	// Key identifies the call instance within the run and callable: the
	// canonical arguments (or a hash of them) for a deduplicated call,
	// the caller and the call's position otherwise (see executor).
	Key string
	// Arguments are the call's canonical JSON arguments.
	Arguments json.RawMessage
}

// maxKeyBytes: canonical arguments up to this size are their own call
// key; longer ones are keyed by their SHA-256.
const maxKeyBytes = 128

// CallKey is the key of a deduplicated call with canonical arguments
// args: the arguments themselves, or "sha256:" and their hash when
// longer than 128 bytes.
func CallKey(args json.RawMessage) string {
	if len(args) <= maxKeyBytes {
		return string(args)
	}
	sum := sha256.Sum256(args)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// CallBatch is the calls one try makes together (Store.Call).
type CallBatch struct {
	// Caller is the try making the calls; zero for calls made from
	// outside (the REST API), which then name their run with RunID.
	Caller Try
	// RunID (Run.ID) is the run of calls made from outside; in a run
	// that has finished they only find the calls it made (others are
	// refused).
	RunID int64
	Calls []NewCall
	// MaxCalls caps the call instances of the run (dag.MaxCalls): calls
	// that would create more are refused.
	MaxCalls int
	Now      time.Time
}

// CallState is where one call stands: its call instance and, once that
// is final, its result.
type CallState struct {
	// ID is the call instance (0 when the call was refused).
	ID       int64
	MapIndex int
	State    state.TaskState
	Output   json.RawMessage // the result, once success
	Error    string          // why it failed, once failed
	// Refused, when not empty, says why the call was not made: the run's
	// cap, an unknown callable, or a cycle (Cycle is then set and Refused
	// names the path, "f(3) -> g(3) -> f(3)").
	Refused string
	Cycle   bool
}

// CallAnswer answers one batch of CallMany: its calls' states, or why
// none was recorded.
type CallAnswer struct {
	States []CallState
	Err    error
}

// Caller is what the store offers a worker for calls; every Store
// implements it.
type Caller interface {
	// Call records the calls of a running try in one transaction: each
	// finds the call instance of its callable and key in the run, or
	// creates it (queued, map index next in creation order, the
	// callable's retry policy and timeout, the priority of the caller when
	// higher), records the caller → callee edge, and answers the call's
	// state. A call that would wait on one of the caller's own callers
	// (or on the caller itself) is refused as a cycle, calls beyond
	// MaxCalls are refused, and the callees a call waits on inherit the
	// caller's priority when it is higher. ErrStale: the caller is not
	// running that try any more (nothing recorded).
	Call(ctx context.Context, b CallBatch) ([]CallState, error)
	// CallMany records the calls of several running tries in one
	// transaction, each batch as Call would and in order (a later batch
	// finds the call instances the earlier ones created): answer i is
	// batch i's. A batch that is bad or whose try no longer runs (Err
	// wraps ErrStale) records nothing and the others go on; an error
	// returned records nothing at all.
	CallMany(ctx context.Context, batches []CallBatch) ([]CallAnswer, error)
	// CallResults returns the states of call instances (by id, in the
	// order of ids; unknown ids are ErrNotFound).
	CallResults(ctx context.Context, ids []int64) ([]CallState, error)
	// Callees returns the calls instance id made, in the order made.
	Callees(ctx context.Context, id int64) ([]TaskInstance, error)
	// GetCallInstance returns the call instance mapIndex of callable
	// taskID in a run, or ErrNotFound.
	GetCallInstance(ctx context.Context, dagID, runID, taskID string, mapIndex int) (TaskInstance, error)
	// TaskInstancesByID returns the task instances among ids that exist,
	// in no order.
	TaskInstancesByID(ctx context.Context, ids []int64) ([]TaskInstance, error)
	// ReadCallLog returns the log of one try of call instance mapIndex of
	// callable taskID (-1: of a static task, as ReadLog).
	ReadCallLog(ctx context.Context, dagID, runID, taskID string, mapIndex, try int) ([]byte, error)
}
