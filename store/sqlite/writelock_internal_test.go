package sqlite

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// twoLocks opens two write locks on one database path, as two processes
// would (each its own open files, so their file locks exclude each other).
func twoLocks(t *testing.T) (*writeLock, *writeLock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "db")
	a, err := openWriteLock(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := openWriteLock(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.close(); _ = b.close() })
	return a, b
}

// aHoldsBGivesUp opens two locks on one database; a takes the lock and
// b's wait for it times out (a wait given up, still running).
func aHoldsBGivesUp(t *testing.T) (*writeLock, *writeLock) {
	t.Helper()
	a, b := twoLocks(t)
	if err := a.acquire(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	if err := b.acquire(context.Background(), time.Millisecond); !errors.Is(err, errLockTimeout) {
		t.Fatalf("b.acquire with a holding the lock: %v, want errLockTimeout", err)
	}
	return a, b
}

// A process waiting in the kernel gets the lock when its holder releases
// it, and the holder then waits its turn.
func TestWriteLockWaiterGetsLockOnRelease(t *testing.T) {
	a, b := twoLocks(t)
	ctx := context.Background()
	if err := a.acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.acquire(ctx, 0) }()
	// b is past its own semaphore and waiting for the file lock once it
	// is registered: the probe of release then finds it.
	for {
		if ok, err := tryLockFile(a.wait, true); err != nil {
			t.Fatal(err)
		} else if !ok {
			break
		}
		_ = unlockFile(a.wait)
		time.Sleep(time.Millisecond)
	}
	select {
	case err := <-got:
		t.Fatalf("b acquired while a held the lock: %v", err)
	default:
	}
	a.release()
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if ok, err := tryLockFile(a.lock, true); err != nil || ok {
		t.Fatalf("a took the lock b holds: ok=%v err=%v", ok, err)
	}
	b.release()
	if err := a.acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	a.release()
}

// A wait given up (timeout, cancellation) returns at once with its error,
// and releases the lock it gets later: neither process is left locked
// out, and the process that gave up can take the lock again.
func TestWriteLockAbandonedWaitReleases(t *testing.T) {
	a, b := aHoldsBGivesUp(t)
	ctx := context.Background()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := b.acquire(cctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("b.acquire cancelled: %v, want context.Canceled", err)
	}
	a.release()
	// The given-up wait gets the lock and releases it; then b's
	// semaphore is free again.
	if err := b.acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	b.release()
	if err := a.acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	a.release()
}

// Closing a lock while a given-up wait still runs leaves its files open
// for that wait, which then closes them.
func TestWriteLockCloseDuringAbandonedWait(t *testing.T) {
	a, b := aHoldsBGivesUp(t)
	ctx := context.Background()
	if err := b.close(); err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	waits := b.waits
	b.mu.Unlock()
	if waits != 1 {
		t.Fatalf("waits after close = %d, want the given-up wait (1)", waits)
	}
	if _, err := b.lock.Stat(); err != nil {
		t.Fatalf("close closed the file a wait still uses: %v", err)
	}
	a.release()
	// The wait ends: it gets the lock, releases it and closes the files.
	for {
		b.mu.Lock()
		waits = b.waits
		b.mu.Unlock()
		if waits == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := b.lock.Stat(); err == nil {
		t.Fatal("the last wait left the closed lock's files open")
	}
	if err := a.acquire(ctx, 0); err != nil {
		t.Fatal(err)
	}
	a.release()
}
