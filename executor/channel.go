package executor

// The supervision channel: a Unix socket pair between a Pool and each of
// its children, the child's end inherited as a file descriptor. The pool
// sends the child its secrets on it (the database URL and the PostgreSQL
// connection variables), so they are never in the child's environment or
// argv, where its tasks could read them; the child sends back the
// finishes its Worker made, batched, with how many tries it runs and how
// many finishes it had to drop.

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// EnvChannelFD names the child's file descriptor of the supervision
// channel (always 3: the first of exec.Cmd.ExtraFiles).
const EnvChannelFD = "TRELLIS_WORKER_CHANNEL_FD"

// Supervision channel limits.
const (
	// channelQueue is how many finishes a child keeps while the pool is
	// not reading; more are dropped and counted.
	channelQueue = 16384
	// channelBatch is the most finishes one message carries.
	channelBatch = 256
	// channelStatusInterval is how often a child reports how many tries
	// it runs when it has no finishes to send.
	channelStatusInterval = time.Second
	// channelHelloTimeout bounds the child's wait for its secrets.
	channelHelloTimeout = 10 * time.Second
	// channelCloseTimeout bounds how long a stopping child tries to
	// deliver its last finishes.
	channelCloseTimeout = 2 * time.Second
	// channelDrainTimeout is how long the pool reads a channel after its
	// child exited before it closes it.
	channelDrainTimeout = 2 * time.Second
	// channelMaxLine bounds one message.
	channelMaxLine = 4 << 20
)

// hello is the pool's first and only message to a child.
type hello struct {
	DatabaseURL string   `json:"database_url"`
	ConnEnv     []string `json:"conn_env,omitempty"`
}

// report is a child's message to the pool.
type report struct {
	Finishes []Finish `json:"f,omitempty"`
	Running  int      `json:"running"`
	Dropped  int64    `json:"dropped,omitempty"` // since the child started
}

// connEnvPrefix starts the names of the PostgreSQL client variables
// (PGPASSWORD, PGSSLKEY, …) that configure the database connection: they
// travel on the channel, never in a child's environment.
const connEnvPrefix = "PG"

// childEnviron returns the environment of a worker child: environ without
// Trellis's configuration (every TRELLIS_* variable) and the PostgreSQL
// client variables, then extra.
func childEnviron(environ, extra []string) []string {
	out := make([]string, 0, len(environ)+len(extra))
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "TRELLIS_") || strings.HasPrefix(k, connEnvPrefix) {
			continue
		}
		out = append(out, kv)
	}
	return append(out, extra...)
}

// connEnviron returns the PostgreSQL client variables of environ.
func connEnviron(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, connEnvPrefix) {
			out = append(out, kv)
		}
	}
	return out
}

// socketPair returns the pool's end (non-blocking, so it has deadlines)
// and the child's end (blocking, to be inherited) of a new channel.
func socketPair() (pool, child *os.File, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("supervision channel: socketpair: %w", err)
	}
	if err := syscall.SetNonblock(fds[0], true); err != nil {
		_ = syscall.Close(fds[0])
		_ = syscall.Close(fds[1])
		return nil, nil, fmt.Errorf("supervision channel: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "trellis-supervision"), os.NewFile(uintptr(fds[1]), "trellis-supervision-child"), nil
}

// NewChannelPair makes a supervision channel for a worker child started
// without a Pool (tests, embedders) and sends it databaseURL: start the
// child with child as exec.Cmd.ExtraFiles[0] and EnvChannelFD=3 in its
// environment (or, in this process, EnvChannelFD set to child.Fd()),
// then close child; read nothing from pool, or the finishes the child
// reports, and close it.
func NewChannelPair(databaseURL string) (pool, child *os.File, err error) {
	pool, child, err = socketPair()
	if err != nil {
		return nil, nil, err
	}
	if err := sendHello(pool, hello{DatabaseURL: databaseURL}); err != nil {
		_ = pool.Close()
		_ = child.Close()
		return nil, nil, err
	}
	return pool, child, nil
}

// sendHello writes the child's secrets on the pool's end.
func sendHello(f *os.File, h hello) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_ = f.SetWriteDeadline(time.Now().Add(channelHelloTimeout))
	defer func() { _ = f.SetWriteDeadline(time.Time{}) }()
	if _, err := f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("send secrets to worker process: %w", err)
	}
	return nil
}

// childReports reads a child's reports until the channel ends, passing
// finishes and drops to ev and the running count to running. It closes f.
func childReports(f *os.File, ev Events, running *atomic.Int64, log *slog.Logger) {
	defer func() { _ = f.Close() }()
	defer running.Store(0)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), channelMaxLine)
	var dropped int64
	warned := false
	var r report
	for sc.Scan() {
		if err := parseReport(sc.Bytes(), &r); err != nil {
			if !warned {
				warned = true
				log.Warn("worker process sent a malformed report; ignoring it", "err", err)
			}
			continue
		}
		running.Store(int64(max(0, r.Running)))
		if ev == nil {
			continue
		}
		for _, fin := range r.Finishes {
			ev.TaskFinished(fin)
		}
		if r.Dropped > dropped {
			ev.EventsDropped(int(r.Dropped - dropped))
			dropped = r.Dropped
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		log.Warn("supervision channel of a worker process ended", "err", err)
	}
}

// Channel is a worker child's end of its supervision channel. It carries
// the secrets the pool sent and, once RunChild starts it, forwards the
// Worker's finishes to the pool: TaskFinished never blocks; when the pool
// does not keep up, finishes beyond a bounded queue are dropped and
// counted, and the count reaches the pool with the next report.
type Channel struct {
	f      *os.File
	secret hello
	log    *slog.Logger

	queue   chan Finish
	dropped atomic.Int64

	startOnce, closeOnce sync.Once
	stop                 chan struct{}
	done                 chan struct{}
}

// LoadChild reads the configuration a Pool gave this child: the
// environment (ChildConfigFromEnv through lookup) and, on the supervision
// channel, the database URL. The channel is closed for the tasks this
// process starts. The caller passes the Channel to RunChild in
// ChildOptions and opens its store with Config.DatabaseURL inside
// Channel.WithConnEnv.
func LoadChild(lookup func(string) (string, bool), log *slog.Logger) (ChildConfig, *Channel, error) {
	cfg, err := ChildConfigFromEnv(lookup)
	if err != nil {
		return ChildConfig{}, nil, err
	}
	v, _ := lookup(EnvChannelFD)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return ChildConfig{}, nil, fmt.Errorf("worker child environment: %s=%q is not a file descriptor", EnvChannelFD, v)
	}
	syscall.CloseOnExec(fd)
	if err := syscall.SetNonblock(fd, true); err != nil {
		return ChildConfig{}, nil, fmt.Errorf("supervision channel (fd %d): %w", fd, err)
	}
	f := os.NewFile(uintptr(fd), "trellis-supervision")
	_ = f.SetReadDeadline(time.Now().Add(channelHelloTimeout))
	line, err := bufio.NewReaderSize(f, 4096).ReadBytes('\n')
	_ = f.SetReadDeadline(time.Time{})
	var h hello
	if err == nil {
		err = json.Unmarshal(line, &h)
	}
	if err == nil && h.DatabaseURL == "" {
		err = errors.New("no database URL")
	}
	if err != nil {
		_ = f.Close()
		return ChildConfig{}, nil, fmt.Errorf("read the secrets of the supervision channel: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg.DatabaseURL = h.DatabaseURL
	return cfg, &Channel{f: f, secret: h, log: log, queue: make(chan Finish, channelQueue),
		stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// WithConnEnv runs open with the PostgreSQL client variables the pool
// sent set in this process's environment, and removes them afterwards, so
// Func tasks cannot read them.
func (c *Channel) WithConnEnv(open func() error) error {
	for _, kv := range c.secret.ConnEnv {
		k, v, _ := strings.Cut(kv, "=")
		_ = os.Setenv(k, v)
	}
	defer func() {
		for _, kv := range c.secret.ConnEnv {
			k, _, _ := strings.Cut(kv, "=")
			_ = os.Unsetenv(k)
		}
	}()
	return open()
}

// TaskFinished queues f for the pool, or counts it dropped when the queue
// is full.
func (c *Channel) TaskFinished(f Finish) {
	select {
	case c.queue <- f:
	default:
		c.dropped.Add(1)
	}
}

// EventsDropped counts n finishes lost before they reached the channel.
func (c *Channel) EventsDropped(n int) { c.dropped.Add(int64(n)) }

// start sends reports until Close: each carries the finishes queued so far
// (up to channelBatch) and running(); without finishes, one every
// channelStatusInterval when running() or the drop count changed since the
// last report (none while nothing changes: no write, and no wake-up of the
// pool, every second).
func (c *Channel) start(running func() int) {
	c.startOnce.Do(func() { go c.loop(running) })
}

func (c *Channel) loop(running func() int) {
	defer close(c.done)
	var line []byte
	tick := time.NewTicker(channelStatusInterval)
	defer tick.Stop()
	failing := false
	// The counts the pool last got: none yet.
	sentRunning, sentDropped := -1, int64(0)
	send := func(batch []Finish) {
		r := report{Finishes: batch, Running: running(), Dropped: c.dropped.Load()}
		if len(batch) == 0 && r.Running == sentRunning && r.Dropped == sentDropped {
			return // a status report with nothing new
		}
		line = appendReport(line[:0], r)
		_, err := c.f.Write(line)
		sentRunning, sentDropped = r.Running, r.Dropped
		if err != nil {
			sentRunning = -1 // say it again
		}
		switch {
		case err != nil && !failing:
			failing = true
			c.log.Warn("cannot report to the worker pool; finishes are lost until it reads again", "err", err)
		case err != nil:
		case failing:
			failing = false
			c.log.Info("reporting to the worker pool again")
		}
		if err != nil {
			c.dropped.Add(int64(len(batch)))
		}
	}
	batch := make([]Finish, 0, channelBatch)
	for {
		batch = batch[:0]
		stopping := false
		select {
		case f := <-c.queue:
			batch = append(batch, f)
		case <-tick.C:
		case <-c.stop:
			stopping = true
		}
	fill:
		for len(batch) < channelBatch {
			select {
			case f := <-c.queue:
				batch = append(batch, f)
			default:
				break fill
			}
		}
		send(batch)
		if stopping && len(c.queue) == 0 {
			return
		}
	}
}

// Close delivers the queued finishes (within channelCloseTimeout) and
// closes the channel.
func (c *Channel) Close() {
	c.closeOnce.Do(func() {
		started := false
		c.startOnce.Do(func() { close(c.done) })
		select {
		case <-c.done:
		default:
			started = true
		}
		if started {
			_ = c.f.SetWriteDeadline(time.Now().Add(channelCloseTimeout))
			close(c.stop)
			<-c.done
		}
		_ = c.f.Close()
	})
}
