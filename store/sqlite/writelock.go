package sqlite

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// writeLock lets the writers of every process on one database take turns
// without SQLite's busy handler, whose sleeps grow to 100ms and let one
// busy process starve the others: a process holds an OS file lock on
// <db>.lock around each write transaction, so BEGIN IMMEDIATE finds the
// database free. Waiting processes register with a shared lock on
// <db>.lock-wait and wait for the lock in the kernel (its release wakes
// them); a process that releases the lock while others wait lets one of
// them in before it takes the lock again (turn-taking). File locks die
// with their process.
//
// Within a process, one holder at a time (sem): a file lock taken twice
// through the same open file would not exclude.
type writeLock struct {
	sem      chan struct{}
	lock     *os.File
	wait     *os.File
	courtesy bool // set by release when others waited; guarded by sem

	mu     sync.Mutex
	waits  int  // waits in the kernel running (startWait)
	closed bool // close was called
}

// Polling pauses while a releasing process defers to waiters, and the
// longest it defers before competing again.
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
	handed := false // a wait given up releases the semaphore itself
	defer func() {
		if err != nil && !handed {
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
	// Wait in the kernel: the lock's release wakes this process at once,
	// where polling slept up to 200µs with the lock free. The wait
	// runs in a goroutine so that ctx and timeout can end it; a wait given
	// up keeps the semaphore until it gets the lock and releases it.
	if !l.startWait() {
		return errors.New("write lock: closed")
	}
	got := make(chan error, 1)
	go func() { got <- lockFileWait(l.lock) }()
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case err := <-got:
		l.endWait()
		if err != nil {
			return fmt.Errorf("write lock: %w", err)
		}
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-expired:
		err = fmt.Errorf("%w for more than %v", errLockTimeout, timeout)
	}
	handed = true
	go func() {
		if err := <-got; err == nil {
			_ = unlockFile(l.lock)
		}
		l.endWait()
		<-l.sem
	}()
	return err
}

// startWait counts a wait in the kernel, which needs the lock file open
// until it ends; false once the lock is closed.
func (l *writeLock) startWait() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.waits++
	return true
}

// endWait ends a wait counted by startWait, closing the files when the
// lock was closed meanwhile.
func (l *writeLock) endWait() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.waits--
	if l.closed && l.waits == 0 {
		_ = l.closeFiles()
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

// close closes the lock's files, or leaves that to the last wait in the
// kernel still running (one given up, whose holder has not released yet).
func (l *writeLock) close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	if l.waits > 0 {
		return nil
	}
	return l.closeFiles()
}

func (l *writeLock) closeFiles() error {
	return errors.Join(l.lock.Close(), l.wait.Close())
}
