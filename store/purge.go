package store

import (
	"context"
)

// DefaultPurgeBatch is how many runs one PurgeRuns transaction of PurgeAll
// deletes when the query gives no Limit: small, so the locks it takes are
// short and workers' writes interleave.
const DefaultPurgeBatch = 100

// DefaultLogPurgeBatch is the same for the tries' logs of PurgeAllLogs.
const DefaultLogPurgeBatch = 1000

// PurgeAll deletes every run q selects with PurgeRuns, in transactions of
// q.Limit runs (DefaultPurgeBatch when 0), calling each (when not nil)
// with what every batch deleted: it may pause, count, or stop the purge by
// returning an error. With q.DryRun it counts everything in one call.
// It returns the sum of the batches, also when it fails part-way.
func PurgeAll(ctx context.Context, s Store, q PurgeQuery, each func(Purged) error) (Purged, error) {
	if q.DryRun {
		q.Limit = 0
		return s.PurgeRuns(ctx, q)
	}
	if q.Limit == 0 {
		q.Limit = DefaultPurgeBatch
	}
	var sum Purged
	for {
		p, err := s.PurgeRuns(ctx, q)
		sum.Runs += p.Runs
		sum.TaskInstances += p.TaskInstances
		sum.Logs += p.Logs
		if err != nil {
			return sum, err
		}
		if each != nil && p.Runs > 0 {
			if err := each(p); err != nil {
				return sum, err
			}
		}
		if p.Runs < q.Limit {
			return sum, nil
		}
	}
}

// PurgeAllLogs deletes the logs of every try of the runs q selects with
// PurgeLogs, in transactions of q.Limit tries' logs
// (DefaultLogPurgeBatch when 0), calling each as PurgeAll does.
func PurgeAllLogs(ctx context.Context, s Store, q PurgeQuery, each func(n int) error) (int, error) {
	if q.DryRun {
		q.Limit = 0
		return s.PurgeLogs(ctx, q)
	}
	if q.Limit == 0 {
		q.Limit = DefaultLogPurgeBatch
	}
	sum := 0
	for {
		n, err := s.PurgeLogs(ctx, q)
		sum += n
		if err != nil {
			return sum, err
		}
		if each != nil && n > 0 {
			if err := each(n); err != nil {
				return sum, err
			}
		}
		if n < q.Limit {
			return sum, nil
		}
	}
}
