package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"
)

// writeJSON answers status with v as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(data, '\n'))
	return nil
}

// Health statuses of Airflow's HealthStatus.
const (
	healthy   = "healthy"
	unhealthy = "unhealthy"
)

type healthJSON struct {
	Metadatabase struct {
		Status string `json:"status"`
	} `json:"metadatabase"`
	Scheduler struct {
		Status          string   `json:"status"`
		LatestHeartbeat *apiTime `json:"latest_scheduler_heartbeat"`
	} `json:"scheduler"`
	// Trellis has no triggerer or separate DAG processor: null statuses.
	Triggerer struct {
		Status          *string  `json:"status"`
		LatestHeartbeat *apiTime `json:"latest_triggerer_heartbeat"`
	} `json:"triggerer"`
	DAGProcessor struct {
		Status          *string  `json:"status"`
		LatestHeartbeat *apiTime `json:"latest_dag_processor_heartbeat"`
	} `json:"dag_processor"`
}

// healthTimeout bounds the checks of /health, so it answers even when the
// database hangs.
const healthTimeout = 3 * time.Second

// getHealth reports the metadatabase (a ping of the store) and the
// scheduler (healthy when its latest heartbeat is younger than the
// threshold). It always answers 200, as Airflow does; the statuses tell.
func (a *api) getHealth(w http.ResponseWriter, r *http.Request) error {
	ctx, cancel := context.WithTimeout(r.Context(), healthTimeout)
	defer cancel()
	var h healthJSON
	h.Metadatabase.Status = healthy
	if err := a.store.Ping(ctx); err != nil {
		a.log.Warn("health: database ping failed", "error", err)
		h.Metadatabase.Status = unhealthy
	}
	h.Scheduler.Status = unhealthy
	t, ok, err := a.heartbeats.LatestSchedulerHeartbeat(ctx)
	switch {
	case err != nil:
		a.log.Warn("health: reading the scheduler heartbeat failed", "error", err)
	case ok:
		h.Scheduler.LatestHeartbeat = timeVal(t)
		if a.clock.Now().Sub(t) <= a.healthAge {
			h.Scheduler.Status = healthy
		}
	}
	return writeJSON(w, http.StatusOK, h)
}

type versionJSON struct {
	Version    string  `json:"version"`
	GitVersion *string `json:"git_version"`
}

func (a *api) getVersion(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, versionJSON{Version: a.version, GitVersion: a.gitVersion})
}

// newestHeartbeat reports the newest heartbeat of several sources. A
// source that fails is passed over; the error is returned only when no
// source had a heartbeat.
type newestHeartbeat []SchedulerHeartbeats

func (n newestHeartbeat) LatestSchedulerHeartbeat(ctx context.Context) (time.Time, bool, error) {
	var (
		best  time.Time
		found bool
		errs  []error
	)
	for _, src := range n {
		t, ok, err := src.LatestSchedulerHeartbeat(ctx)
		switch {
		case err != nil:
			errs = append(errs, err)
		case ok && (!found || t.After(best)):
			best, found = t, true
		}
	}
	if !found && len(errs) > 0 {
		return time.Time{}, false, errors.Join(errs...)
	}
	return best, found, nil
}
