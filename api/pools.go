package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/store"
)

// poolJSON is Airflow's Pool. Unlimited pools (slots -1) report -1 open
// slots, where Airflow would report infinity (not a JSON number).
type poolJSON struct {
	Name            string  `json:"name"`
	Slots           int     `json:"slots"`
	OccupiedSlots   int     `json:"occupied_slots"`
	RunningSlots    int     `json:"running_slots"`
	QueuedSlots     int     `json:"queued_slots"`
	OpenSlots       int     `json:"open_slots"`
	ScheduledSlots  int     `json:"scheduled_slots"`
	DeferredSlots   int     `json:"deferred_slots"`
	Description     *string `json:"description"`
	IncludeDeferred bool    `json:"include_deferred"`
}

func toPool(p store.Pool) poolJSON {
	out := poolJSON{Name: p.Name, Slots: p.Slots, OccupiedSlots: p.OccupiedSlots(), RunningSlots: p.RunningSlots,
		QueuedSlots: p.QueuedSlots, OpenSlots: p.OpenSlots(), ScheduledSlots: p.ScheduledSlots,
		DeferredSlots: p.DeferredSlots}
	if p.Description != "" {
		d := p.Description
		out.Description = &d
	}
	return out
}

// poolWritable are the fields a client sets; the others are read-only.
var (
	poolWritable = []string{"name", "slots", "description", "include_deferred"}
	poolReadOnly = []string{"occupied_slots", "running_slots", "queued_slots", "open_slots", "scheduled_slots",
		"deferred_slots"}
)

// poolParam reads {pool_name}; a name no pool can have is a 404.
func poolParam(r *http.Request) (string, error) {
	name, err := pathParam(r, "pool_name")
	if err != nil {
		return "", err
	}
	if !dag.ValidPoolName(name) {
		return "", poolNotFound(name)
	}
	return name, nil
}

func poolNotFound(name string) error {
	return notFound("Pool not found", "Pool with name:'%s' not found", name)
}

// poolStoreError maps the store's errors on pool name.
func poolStoreError(err error, name string) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return poolNotFound(name)
	case errors.Is(err, store.ErrConflict):
		return &apiError{status: http.StatusConflict, title: "Already exists",
			detail: "Pool: " + name + " already exists"}
	case errors.Is(err, store.ErrInvalid), errors.Is(err, store.ErrInUse):
		return badRequest("%s", err.Error())
	}
	return err
}

// getPools lists pools by name: GET /api/v1/pools.
func (a *api) getPools(w http.ResponseWriter, r *http.Request) error {
	q := query{r.URL.Query()}
	p, err := pageParams(q, a.defLimit, a.maxLimit)
	if err != nil {
		return err
	}
	if ob, ok, err := q.one("order_by"); err != nil {
		return err
	} else if ok && ob != "name" && ob != "id" {
		return badRequest("ordering with %q is not supported; pools are ordered by name", ob)
	}
	pools, total, err := a.store.ListPools(r.Context(), p.limit, p.offset)
	if err != nil {
		return err
	}
	out := make([]poolJSON, len(pools))
	for i, pl := range pools {
		out[i] = toPool(pl)
	}
	return writeJSON(w, http.StatusOK, map[string]any{"pools": out, "total_entries": total})
}

// getPool returns one pool: GET /api/v1/pools/{pool_name}.
func (a *api) getPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolParam(r)
	if err != nil {
		return err
	}
	p, err := a.store.GetPool(r.Context(), name)
	if err != nil {
		return poolStoreError(err, name)
	}
	return writeJSON(w, http.StatusOK, toPool(p))
}

// poolBody reads a pool body and checks include_deferred.
func poolBody(r *http.Request) (body, error) {
	b, err := decodeBody(r, poolWritable, poolReadOnly)
	if err != nil {
		return nil, err
	}
	if m, ok := b["include_deferred"]; ok {
		var v bool
		if isNull(m) || json.Unmarshal(m, &v) != nil {
			return nil, badRequest("field %q must be a boolean, got %s", "include_deferred", jsonKind(m))
		}
		if v {
			return nil, badRequest("include_deferred true is not supported: instances never wait deferred holding a pool slot")
		}
	}
	return b, nil
}

func (b body) slotsField() (*int, error) {
	if _, ok := b["slots"]; !ok {
		return nil, nil
	}
	n, err := b.intField("slots", 0)
	if err != nil {
		return nil, err
	}
	if n < -1 {
		return nil, badRequest("field \"slots\" must be -1 (unlimited) or at least 0, got %d", n)
	}
	return &n, nil
}

// postPool creates a pool: POST /api/v1/pools.
func (a *api) postPool(w http.ResponseWriter, r *http.Request) error {
	b, err := poolBody(r)
	if err != nil {
		return err
	}
	name, ok, err := b.stringField("name", false)
	if err != nil {
		return err
	}
	if !ok {
		return badRequest("field \"name\" is required")
	}
	if !dag.ValidPoolName(name) {
		return badRequest("invalid pool name %q: must match %s", name, dag.PoolNamePattern)
	}
	slots, err := b.slotsField()
	if err != nil {
		return err
	}
	if slots == nil {
		return badRequest("field \"slots\" is required")
	}
	desc, _, err := b.stringField("description", true)
	if err != nil {
		return err
	}
	p, err := a.store.CreatePool(r.Context(), store.PoolSpec{Name: name, Slots: *slots, Description: desc})
	if err != nil {
		return poolStoreError(err, name)
	}
	return writeJSON(w, http.StatusOK, toPool(p))
}

// patchPool resizes or describes a pool: PATCH /api/v1/pools/{pool_name},
// with update_mask naming the fields to change (default: those sent).
func (a *api) patchPool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolParam(r)
	if err != nil {
		return err
	}
	b, err := poolBody(r)
	if err != nil {
		return err
	}
	mask := query{r.URL.Query()}.list("update_mask")
	for _, f := range mask {
		if !slices.Contains(poolWritable, f) {
			return badRequest("update_mask: %q is not a field of a pool that can be updated (%v)", f, poolWritable)
		}
	}
	in := func(f string) bool {
		_, sent := b[f]
		return sent && (len(mask) == 0 || slices.Contains(mask, f))
	}
	var patch store.PoolPatch
	if in("name") {
		n, _, err := b.stringField("name", false)
		if err != nil {
			return err
		}
		if n != name {
			return badRequest("a pool cannot be renamed (from %q to %q); create a new one", name, n)
		}
	}
	if in("slots") {
		if patch.Slots, err = b.slotsField(); err != nil {
			return err
		}
	}
	if in("description") {
		d, _, err := b.stringField("description", true)
		if err != nil {
			return err
		}
		patch.Description = &d
	}
	for _, f := range mask {
		if _, sent := b[f]; !sent && f != "include_deferred" {
			return badRequest("update_mask names %q but the body has no such field", f)
		}
	}
	p, err := a.store.UpdatePool(r.Context(), name, patch)
	if err != nil {
		return poolStoreError(err, name)
	}
	return writeJSON(w, http.StatusOK, toPool(p))
}

// deletePool removes a pool: DELETE /api/v1/pools/{pool_name}. Airflow
// refuses default_pool with 400; Trellis also refuses a pool that task
// instances run or wait in.
func (a *api) deletePool(w http.ResponseWriter, r *http.Request) error {
	name, err := poolParam(r)
	if err != nil {
		return err
	}
	if name == dag.DefaultPool {
		return badRequest("Default Pool can't be deleted")
	}
	if err := a.store.DeletePool(r.Context(), name); err != nil {
		return poolStoreError(err, name)
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// dependencyJSON is Airflow's TaskFailedDependency: what keeps a task
// instance from starting.
type dependencyJSON struct {
	Name   string `json:"name"`
	Reason string `json:"reason"`
}

// limitDependencies says which limits keep a queued instance waiting:
// its pool (missing, smaller in all than its slots, or without room for
// them now), its task's cap and
// its concurrency key (at their limits, from saturated). pool is nil when
// the pool does not exist. Other states wait on nothing here.
func limitDependencies(ti store.TaskInstance, pool *store.Pool, saturated []store.KeyWait) []dependencyJSON {
	out := []dependencyJSON{}
	if ti.State != "queued" {
		return out
	}
	name := poolOf(ti)
	slots := max(ti.PoolSlots, 1)
	switch {
	case pool == nil:
		out = append(out, dependencyJSON{"Pool Slots Available",
			"Tasks using non-existent pool '" + name + "' will not be scheduled until it is created"})
	case pool.Slots >= 0 && pool.Slots < slots:
		// Not a wait for slots to free: only a resize (or a task asking
		// for fewer) lets it run, as Airflow's scheduler says.
		out = append(out, dependencyJSON{"Pool Slots Available", fmt.Sprintf(
			"Not executing: requested pool slots (%d) are greater than total pool slots (%d) of pool %s; "+
				"it waits until the pool is resized to at least %d slots or the task asks for fewer",
			slots, pool.Slots, name, slots)})
	case pool.Slots >= 0 && pool.Slots-pool.RunningSlots < slots:
		out = append(out, dependencyJSON{"Pool Slots Available", fmt.Sprintf(
			"Not scheduling since there are %d open slots in pool %s and require %d pool slots",
			max(pool.Slots-pool.RunningSlots, 0), name, slots)})
	}
	for _, k := range saturated {
		switch k.Key {
		case store.TaskKey(ti.DAGID, ti.TaskID):
			out = append(out, dependencyJSON{"Task Concurrency", fmt.Sprintf(
				"The max task concurrency has been reached: %d of %d instances of this task are running", k.Running, k.Limit)})
		case store.KeyPrefixKey + ti.ConcurrencyKey:
			out = append(out, dependencyJSON{"Concurrency Key", fmt.Sprintf(
				"Concurrency key '%s' is at its limit: %d of %d running", ti.ConcurrencyKey, k.Running, k.Limit)})
		}
	}
	return out
}

// getDependencies says what keeps a task instance from starting:
// GET /api/v1/dags/{dag_id}/dagRuns/{dag_run_id}/taskInstances/{task_id}/dependencies.
func (a *api) getDependencies(w http.ResponseWriter, r *http.Request) error {
	dagID, runID, taskID, err := tiParams(r)
	if err != nil {
		return err
	}
	ctx := r.Context()
	ti, _, err := a.getStoredTI(ctx, dagID, runID, taskID)
	if err != nil {
		return err
	}
	var deps []dependencyJSON
	if ti.State == "queued" {
		var pool *store.Pool
		p, err := a.store.GetPool(ctx, poolOf(ti))
		switch {
		case err == nil:
			pool = &p
		case !errors.Is(err, store.ErrNotFound):
			return err
		}
		keys, err := a.store.WaitingOnKeys(ctx)
		if err != nil {
			return err
		}
		deps = limitDependencies(ti, pool, keys)
	}
	if deps == nil {
		deps = []dependencyJSON{}
	}
	return writeJSON(w, http.StatusOK, map[string]any{"dependencies": deps})
}
