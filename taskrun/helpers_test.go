package taskrun_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/taskrun"
)

// syncBuffer is a log sink safe to read while a try writes to it, which
// signals when a given text first appears.
type syncBuffer struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	waiters []waiter
}

type waiter struct {
	text string
	ch   chan struct{}
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, err := b.buf.Write(p)
	kept := b.waiters[:0]
	for _, w := range b.waiters {
		if strings.Contains(b.buf.String(), w.text) {
			close(w.ch)
		} else {
			kept = append(kept, w)
		}
	}
	b.waiters = kept
	return n, err
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// seen returns a channel closed once text has been written.
func (b *syncBuffer) seen(text string) <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	ch := make(chan struct{})
	if strings.Contains(b.buf.String(), text) {
		close(ch)
	} else {
		b.waiters = append(b.waiters, waiter{text, ch})
	}
	return ch
}

// within fails the test when ch is not closed before d: a guard against a
// hang, not a timing assertion.
func within(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("%s: not within %v", what, d)
	}
}

// runAsync runs Run in a goroutine and returns a channel with its outcome.
func runAsync(ctx context.Context, try taskrun.Try) <-chan taskrun.Outcome {
	ch := make(chan taskrun.Outcome, 1)
	go func() { ch <- taskrun.Run(ctx, try) }()
	return ch
}

// await returns the outcome or fails the test after a guard delay.
func await(t *testing.T, ch <-chan taskrun.Outcome, d time.Duration) taskrun.Outcome {
	t.Helper()
	select {
	case o := <-ch:
		return o
	case <-time.After(d):
		t.Fatalf("Run did not return within %v", d)
		return taskrun.Outcome{}
	}
}

// info returns a RunInfo for task id.
func info(id string) dag.RunInfo {
	ld := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return dag.RunInfo{DAGID: "d", RunID: "manual__2026-01-02T03:04:05Z", TaskID: id, TryNumber: 1,
		LogicalDate: ld, IntervalStart: ld, IntervalEnd: ld.Add(time.Hour)}
}

// exits reports whether process pid terminates within guard. It waits on
// a pidfd, which becomes readable when the process exits: a killed process
// finishes exiting asynchronously, shortly after its pipes are closed.
func exits(pid int, guard time.Duration) bool {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err == unix.ESRCH // already gone
	}
	defer unix.Close(fd)
	deadline := time.Now().Add(guard)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, int(time.Until(deadline).Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		return err == nil && n == 1
	}
}

// procAlive reports whether process pid exists and is not a zombie.
func procAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return false
	}
	st := s[i+2]
	return st != 'Z' && st != 'X'
}

// groupMembers lists the live (non-zombie) processes of process group pgid.
func groupMembers(t *testing.T, pgid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:]) // state ppid pgrp …
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if pg, _ := strconv.Atoi(f[2]); pg == pgid {
			out = append(out, pid)
		}
	}
	return out
}

// readPID reads a pid a shell command wrote into a file.
func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read pid file: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file %s: %v", path, err)
	}
	return pid
}

// mapOutputs is a dag.OutputIO over a map that counts SetOutput calls.
type mapOutputs struct {
	mu   sync.Mutex
	vals map[string][]byte
	sets int
}

func (m *mapOutputs) SetOutput(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sets++
	return nil
}

func (m *mapOutputs) Output(id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.vals[id]
	if !ok {
		return nil, dag.ErrNoOutput
	}
	return v, nil
}
