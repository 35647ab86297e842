package executor

import (
	"bufio"
	"errors"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/trellis-dag/trellis/state"
)

// countingEvents counts what a pool receives from its children.
type countingEvents struct {
	mu       sync.Mutex
	finishes int
	dropped  int
	last     Finish
}

func (c *countingEvents) TaskFinished(f Finish) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.finishes++
	c.last = f
}

func (c *countingEvents) EventsDropped(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropped += n
}

func (c *countingEvents) counts() (int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.finishes, c.dropped
}

// loadTestChild makes a supervision channel and loads the child's end as
// a worker child would; read starts the pool's reader.
func loadTestChild(t *testing.T, url string) (*Channel, func() (*countingEvents, chan struct{}, *atomic.Int64)) {
	t.Helper()
	p, child, err := NewChannelPair(url)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := syscall.Dup(int(child.Fd()))
	_ = child.Close()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{EnvChild: "w-test", EnvChannelFD: strconv.Itoa(fd), EnvSlots: "3"}
	cfg, c, err := LoadChild(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DatabaseURL != url || cfg.WorkerID != "w-test" || cfg.Slots != 3 {
		t.Fatalf("LoadChild = %+v", cfg)
	}
	t.Cleanup(c.Close)
	read := func() (*countingEvents, chan struct{}, *atomic.Int64) {
		ev := &countingEvents{}
		done := make(chan struct{})
		var running atomic.Int64
		go func() { defer close(done); childReports(p, ev, &running, slog.New(slog.DiscardHandler)) }()
		return ev, done, &running
	}
	return c, read
}

// TestChannelNeverBlocksNorGivesUp: while the pool does not read, a
// child's finishes queue up to a bound and the rest are dropped and
// counted, without blocking; once the pool reads, everything queued and
// everything after arrives, and the drops are reported.
func TestChannelNeverBlocksNorGivesUp(t *testing.T) {
	ch, read := loadTestChild(t, "postgres://u:pw@db/x")
	ch.start(func() int { return 5 })
	const burst = 3 * channelQueue
	start := time.Now()
	for i := range burst {
		ch.TaskFinished(Finish{DAGID: "d", TaskID: "t", Try: 1, State: state.Success, Duration: time.Duration(i)})
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("%d finishes took %v to hand over with nobody reading", burst, d)
	}
	ev, done, running := read()
	waitCond(t, 10*time.Second, "the queued finishes and the drops to arrive", func() bool {
		n, dropped := ev.counts()
		return n+dropped == burst
	})
	if n, dropped := ev.counts(); dropped == 0 || n < channelQueue {
		t.Errorf("%d delivered, %d dropped; want the queue (%d) delivered and the excess dropped", n, dropped, channelQueue)
	}
	// Reading again: nothing is disabled.
	n0, _ := ev.counts()
	for range 100 {
		ch.TaskFinished(Finish{DAGID: "d", TaskID: "after", Try: 2, State: state.Failed})
	}
	ch.Close()
	<-done
	n, _ := ev.counts()
	if n-n0 != 100 || ev.last.TaskID != "after" || ev.last.Try != 2 || ev.last.State != state.Failed {
		t.Errorf("%d of 100 finishes sent after the pool read again arrived (last %+v)", n-n0, ev.last)
	}
	if r := running.Load(); r != 0 {
		t.Errorf("running = %d after the channel ended, want 0", r)
	}
}

// TestChannelCloseIsBounded: a child whose pool never reads stops within
// the close timeout.
func TestChannelCloseIsBounded(t *testing.T) {
	ch, _ := loadTestChild(t, "sqlite:x.db")
	ch.start(func() int { return 0 })
	for range 3 * channelQueue {
		ch.TaskFinished(Finish{DAGID: "d", TaskID: "t", Try: 1, State: state.Success})
	}
	start := time.Now()
	ch.Close()
	if d := time.Since(start); d > channelCloseTimeout+2*time.Second {
		t.Errorf("Close took %v with nobody reading, want about %v at most", d, channelCloseTimeout)
	}
}

func TestLoadChildErrors(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"no fd":        {EnvChild: "w"},
		"bad fd":       {EnvChild: "w", EnvChannelFD: "stdin"},
		"closed fd":    {EnvChild: "w", EnvChannelFD: "987"},
		"no worker id": {EnvChannelFD: "3"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, _, err := LoadChild(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil); err == nil {
				t.Error("LoadChild accepted it")
			}
		})
	}
}

// TestChannelStatusOnChange: without finishes, a child reports its
// running count once it changed, and nothing while it stays the same (no
// write, and no wake-up of the pool, every channelStatusInterval).
func TestChannelStatusOnChange(t *testing.T) {
	p, child, err := NewChannelPair("sqlite:x.db")
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	fd, err := syscall.Dup(int(child.Fd()))
	_ = child.Close()
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{EnvChild: "w-test", EnvChannelFD: strconv.Itoa(fd)}
	_, ch, err := LoadChild(func(k string) (string, bool) { v, ok := env[k]; return v, ok }, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	var running atomic.Int64
	running.Store(2)
	ch.start(func() int { return int(running.Load()) })
	sc := bufio.NewScanner(p)
	next := func(within time.Duration) (report, bool) {
		t.Helper()
		_ = p.SetReadDeadline(time.Now().Add(within))
		if !sc.Scan() {
			if !errors.Is(sc.Err(), os.ErrDeadlineExceeded) {
				t.Fatalf("read a report: %v", sc.Err())
			}
			sc = bufio.NewScanner(p) // a scanner stops at its first error
			return report{}, false
		}
		var r report
		if err := parseReport(sc.Bytes(), &r); err != nil {
			t.Fatalf("report %q: %v", sc.Bytes(), err)
		}
		return r, true
	}
	if r, ok := next(channelStatusInterval + time.Second); !ok || r.Running != 2 {
		t.Fatalf("first status report %+v (%v), want running 2", r, ok)
	}
	if r, ok := next(2*channelStatusInterval + 500*time.Millisecond); ok {
		t.Fatalf("a status report %+v while nothing changed", r)
	}
	running.Store(3)
	if r, ok := next(channelStatusInterval + time.Second); !ok || r.Running != 3 {
		t.Fatalf("status report %+v (%v) after the count changed, want running 3", r, ok)
	}
}
