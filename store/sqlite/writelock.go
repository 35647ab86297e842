package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"
)

// writeLock lets the writers of every process on one database take turns
// without SQLite's busy handler, whose sleeps grow to 100ms and let one
// busy process starve the others: a process holds an OS file lock on
// <db>.lock around each write transaction, so BEGIN IMMEDIATE finds the
// database free. Waiting processes register with a shared lock on
// <db>.lock-wait and poll the lock every 50µs–500µs; a process that
// releases the lock while others wait lets one of them in before it takes
// the lock again (turn-taking). File locks die with their process.
//
// Within a process, one holder at a time (sem): a file lock taken twice
// through the same open file would not exclude.
type writeLock struct {
	sem      chan struct{}
	lock     *os.File
	wait     *os.File
	courtesy bool // set by release when others waited; guarded by sem
}

// Polling pauses while waiting for the lock, and the longest a releasing
// process defers to waiters before competing again.
const (
	minLockPause = 20 * time.Microsecond
	maxLockPause = 200 * time.Microsecond
	courtesyMax  = 20 * time.Millisecond
)

// errLockTimeout is the lock's equivalent of SQLITE_BUSY (see isBusy).
var errLockTimeout = errors.New("database is locked: another process kept the write lock")

func openWriteLock(dbPath string) (*writeLock, error) {
	lock, err := os.OpenFile(dbPath+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open write lock: %w", err)
	}
	wait, err := os.OpenFile(dbPath+".lock-wait", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("open write lock: %w", err)
	}
	return &writeLock{sem: make(chan struct{}, 1), lock: lock, wait: wait}, nil
}

// sleep pauses for d or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// acquire takes the lock, waiting at most timeout for other processes
// (no limit when timeout ≤ 0) and until ctx ends.
func (l *writeLock) acquire(ctx context.Context, timeout time.Duration) (err error) {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() {
		if err != nil {
			<-l.sem
		}
	}()
	if l.courtesy {
		// Others waited while this process held the lock: let them go
		// first, until none is registered or courtesyMax passed.
		l.courtesy = false
		limit := time.Now().Add(courtesyMax)
		for pause := minLockPause; time.Now().Before(limit); pause = min(2*pause, maxLockPause) {
			ok, err := tryLockFile(l.wait, true)
			if err != nil {
				break
			}
			if ok {
				_ = unlockFile(l.wait)
				break
			}
			if !sleep(ctx, pause) {
				return ctx.Err()
			}
		}
	}
	if ok, err := tryLockFile(l.lock, true); err != nil || ok {
		return err
	}
	// Register as waiting (a releasing process probes the registrations
	// with an exclusive lock held for an instant), then poll.
	registered := false
	for range 100 {
		if ok, err := tryLockFile(l.wait, false); err != nil {
			return fmt.Errorf("write lock: %w", err)
		} else if ok {
			registered = true
			break
		}
		if !sleep(ctx, minLockPause) {
			return ctx.Err()
		}
	}
	if registered {
		defer func() { _ = unlockFile(l.wait) }()
	}
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	for pause := minLockPause; ; pause = min(2*pause, maxLockPause) {
		ok, err := tryLockFile(l.lock, true)
		if err != nil {
			return fmt.Errorf("write lock: %w", err)
		}
		if ok {
			return nil
		}
		if !deadline.IsZero() && time.Now().After(deadline) {
			return fmt.Errorf("%w for more than %v", errLockTimeout, timeout)
		}
		if !sleep(ctx, pause) {
			return ctx.Err()
		}
	}
}

// release gives the lock up, noting whether other processes wait for it.
func (l *writeLock) release() {
	_ = unlockFile(l.lock)
	if ok, err := tryLockFile(l.wait, true); err == nil {
		if ok {
			_ = unlockFile(l.wait)
		} else {
			l.courtesy = true
		}
	}
	<-l.sem
}

func (l *writeLock) close() error {
	return errors.Join(l.lock.Close(), l.wait.Close())
}
