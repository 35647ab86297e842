package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Default timeouts of the HTTP server.
const (
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultReadTimeout       = 30 * time.Second
	DefaultWriteTimeout      = 60 * time.Second
	DefaultIdleTimeout       = 120 * time.Second
	DefaultShutdownTimeout   = 10 * time.Second
)

// MaxHeaderBytes bounds the size of a request's headers (net/http allows
// 4 KiB more); beyond, the answer is 431.
const MaxHeaderBytes = 64 << 10

// ServerOptions configures NewServer. Zero durations take the defaults.
type ServerOptions struct {
	// Authenticated says the handler requires a bearer token (Config.Token
	// is set). Without it, NewServer refuses a non-loopback address.
	Authenticated bool
	// InsecureNoAuth allows a non-loopback address without a token.
	InsecureNoAuth bool
	// Logger receives the server's errors; nil discards them.
	Logger *slog.Logger

	ReadHeaderTimeout, ReadTimeout, WriteTimeout, IdleTimeout time.Duration
	// ShutdownTimeout bounds how long Stop waits for requests in flight.
	ShutdownTimeout time.Duration
}

// ErrInsecureAddress is returned by NewServer for a non-loopback listen
// address without authentication.
var ErrInsecureAddress = errors.New("refusing to serve the API without a token on a non-loopback address")

// Server serves an http.Handler with timeouts. Start listens and serves in
// the background; Stop (or the cancellation of Start's context) shuts it
// down gracefully and waits until it has stopped.
type Server struct {
	addr     string
	srv      *http.Server
	log      *slog.Logger
	shutdown time.Duration

	mu      sync.Mutex
	ln      net.Listener
	stop    chan struct{}
	done    chan struct{}
	stopped bool
}

// NewServer returns a server for h on addr (host:port; port 0 picks a
// free one). Without opts.Authenticated and opts.InsecureNoAuth, addr
// must be a loopback address (127.0.0.0/8, ::1 or localhost): an API
// without a token must not be reachable from other hosts.
func NewServer(addr string, h http.Handler, opts ServerOptions) (*Server, error) {
	if h == nil {
		return nil, errors.New("api: NewServer needs a handler")
	}
	if !opts.Authenticated && !opts.InsecureNoAuth {
		loop, err := IsLoopback(addr)
		if err != nil {
			return nil, err
		}
		if !loop {
			return nil, fmt.Errorf("%w %q: set a token (TRELLIS_API_TOKEN), listen on 127.0.0.1, or pass --insecure-no-auth", ErrInsecureAddress, addr)
		}
	}
	def := func(d, v time.Duration) time.Duration {
		if d > 0 {
			return d
		}
		return v
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		addr:     addr,
		log:      log,
		shutdown: def(opts.ShutdownTimeout, DefaultShutdownTimeout),
		srv: &http.Server{
			Handler:           h,
			ReadHeaderTimeout: def(opts.ReadHeaderTimeout, DefaultReadHeaderTimeout),
			ReadTimeout:       def(opts.ReadTimeout, DefaultReadTimeout),
			WriteTimeout:      def(opts.WriteTimeout, DefaultWriteTimeout),
			IdleTimeout:       def(opts.IdleTimeout, DefaultIdleTimeout),
			MaxHeaderBytes:    MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		},
	}
	return s, nil
}

// IsLoopback reports whether the host of addr (host:port) is a loopback
// address: an IP in 127.0.0.0/8 or ::1, or a name that resolves only to
// such addresses (e.g. localhost). An empty host (all interfaces) is not.
func IsLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("listen address %q: %w (want host:port, e.g. 127.0.0.1:8080)", addr, err)
	}
	if host == "" {
		return false, nil
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback(), nil
	}
	if host == "localhost" {
		return true, nil
	}
	ips, err := net.LookupIP(host)
	if err != nil {
		return false, fmt.Errorf("listen address %q: %w", addr, err)
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false, nil
		}
	}
	return len(ips) > 0, nil
}

// Start listens on the address and serves in the background until Stop
// is called or ctx is cancelled. It returns the listen error, if any.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil || s.stopped {
		return errors.New("api: server already started")
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", s.addr, err)
	}
	ln = problemListener{ln}
	s.ln = ln
	s.stop = make(chan struct{})
	s.done = make(chan struct{})
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("API server stopped", slog.Any("error", err))
		}
	}()
	go func() {
		defer close(s.done)
		select {
		case <-ctx.Done():
		case <-s.stop:
		case <-served:
		}
		sctx, cancel := context.WithTimeout(context.Background(), s.shutdown)
		defer cancel()
		if err := s.srv.Shutdown(sctx); err != nil {
			s.log.Warn("API server shutdown: closing remaining connections", slog.Any("error", err))
			_ = s.srv.Close()
		}
		<-served
	}()
	return nil
}

// Addr returns the address the server listens on (nil before Start).
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// URL returns the base URL of the server, e.g. http://127.0.0.1:8080
// ("" before Start).
func (s *Server) URL() string {
	a := s.Addr()
	if a == nil {
		return ""
	}
	return "http://" + a.String()
}

// Stop shuts the server down gracefully, waiting up to the shutdown
// timeout for requests in flight, and returns when it has stopped. It is
// safe to call more than once, and before Start.
func (s *Server) Stop() {
	s.mu.Lock()
	if s.ln == nil {
		s.stopped = true
		s.mu.Unlock()
		return
	}
	if !s.stopped {
		s.stopped = true
		close(s.stop)
	}
	done := s.done
	s.mu.Unlock()
	<-done
}

// problemListener gives the answers net/http writes by itself, before any
// handler runs (431 for headers too large, 400 for a malformed request),
// RFC 7807 problem bodies like every other answer of the API.
type problemListener struct{ net.Listener }

func (l problemListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return problemConn{c}, nil
}

type problemConn struct{ net.Conn }

// Write replaces a canned error answer of net/http with a problem answer;
// other writes pass unchanged.
func (c problemConn) Write(p []byte) (int, error) {
	out, ok := problemAnswer(p)
	if !ok {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(out); err != nil {
		return 0, err
	}
	return len(p), nil
}

// cannedHeaders follow the status line of net/http's own error answers,
// and of no answer of a handler (whose headers are written sorted, so
// Connection comes before Content-Type).
const cannedHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// problemAnswer rewrites a canned net/http error answer (one write of
// "HTTP/1.1 <code> <text>" + cannedHeaders + text) as a problem answer.
func problemAnswer(p []byte) ([]byte, bool) {
	const proto = "HTTP/1.1 "
	line, _, ok := bytes.Cut(p, []byte("\r\n"))
	if !ok || !bytes.HasPrefix(line, []byte(proto)) || !bytes.HasPrefix(p[len(line):], []byte(cannedHeaders)) {
		return nil, false
	}
	status := string(line[len(proto):])
	code, err := strconv.Atoi(status[:min(3, len(status))])
	if err != nil || code < 400 || code > 599 {
		return nil, false
	}
	detail := string(p[len(line)+len(cannedHeaders):])
	switch code {
	case http.StatusRequestHeaderFieldsTooLarge:
		detail = fmt.Sprintf("the request's headers exceed %d KiB", MaxHeaderBytes>>10)
	case http.StatusBadRequest:
		detail = "the request is malformed HTTP (" + detail + ")"
	}
	typ, title := problemType(code)
	body, _ := json.Marshal(Problem{Type: typ, Title: title, Status: code, Detail: detail})
	body = append(body, '\n')
	head := fmt.Sprintf("HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: %d\r\nContent-Type: application/json\r\n"+
		"X-Content-Type-Options: nosniff\r\n\r\n", code, http.StatusText(code), len(body))
	return append([]byte(head), body...), true
}
