package testdb

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// debianLibGlob is where Debian and Ubuntu install the server binaries,
// one folder per major version.
const debianLibGlob = "/usr/lib/postgresql/*/bin"

// installHint says how to get PostgreSQL when none can be found.
const installHint = "install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) " +
	"so its server binaries are available, start a server on 127.0.0.1:5432 that accepts user postgres, " +
	"or set " + EnvURL + " to the URL of a server (postgres://user:password@host:port/database)"

// searchConfig is what findServer looks at; tests change it.
type searchConfig struct {
	envURL       string
	forceCluster bool
	path         string        // PATH to search for the binaries
	libGlob      string        // versioned library folders to search
	envWait      time.Duration // how long envURL may take to answer
}

// server is the PostgreSQL the tests use.
type server struct {
	url  string
	stop func() error
	dir  string // data folder of a throwaway cluster ("" otherwise)
}

// findServer picks the server as described in the package comment.
func findServer(ctx context.Context, c searchConfig) (*server, error) {
	if c.envURL != "" {
		pctx, cancel := context.WithTimeout(ctx, c.envWait)
		defer cancel()
		if err := pingRetry(pctx, c.envURL); err != nil {
			return nil, fmt.Errorf("%s=%s does not answer: %v", EnvURL, store.RedactURL(c.envURL), err)
		}
		return &server{url: c.envURL, stop: func() error { return nil }}, nil
	}
	if !c.forceCluster {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := ping(pctx, DefaultURL)
		cancel()
		if err == nil {
			return &server{url: DefaultURL, stop: func() error { return nil }}, nil
		}
	}
	bin, err := findBinaries(c.path, c.libGlob)
	if err != nil {
		return nil, fmt.Errorf("%w: nothing answers at %s, %s is not set, and %v; %s",
			errNoServer, store.RedactURL(DefaultURL), EnvURL, err, installHint)
	}
	srv, _, err := startCluster(ctx, bin, ClusterOptions{})
	return srv, err
}

// pingRetry pings until the server answers or ctx ends (a server started
// just before the tests may still be coming up).
func pingRetry(ctx context.Context, u string) error {
	for {
		err := ping(ctx, u)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// findBinaries returns a folder holding initdb, pg_ctl and postgres: the
// folder of the initdb or pg_ctl found on path (after following symbolic
// links), else the newest versioned library folder.
func findBinaries(path, libGlob string) (string, error) {
	var cands []string
	for _, dir := range filepath.SplitList(path) {
		for _, name := range []string{"pg_ctl", "initdb"} {
			p := filepath.Join(dir, name)
			if isExecutable(p) {
				if real, err := filepath.EvalSymlinks(p); err == nil {
					cands = append(cands, filepath.Dir(real))
				}
				cands = append(cands, dir)
			}
		}
	}
	if libGlob != "" {
		dirs, _ := filepath.Glob(libGlob)
		sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
		cands = append(cands, dirs...)
	}
	for _, d := range cands {
		if isExecutable(filepath.Join(d, "initdb")) && isExecutable(filepath.Join(d, "pg_ctl")) &&
			isExecutable(filepath.Join(d, "postgres")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no folder with initdb, pg_ctl and postgres on PATH or in %s", libGlob)
}

// versionOf reads the major version from /usr/lib/postgresql/<v>/bin.
func versionOf(dir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dir)), 64)
	return v
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// ClusterOptions shape a throwaway cluster started by StartCluster.
type ClusterOptions struct {
	// Listen is the address the server listens on for TCP, besides its
	// Unix socket; default 127.0.0.1.
	Listen string
	// TrustNets are networks (CIDR) whose TCP connections are trusted
	// without a password, besides loopback.
	TrustNets []string
	// Start, when set, is called with the function that starts the
	// server, and must call it: a test wraps it to start the server
	// elsewhere, e.g. from a thread in a network namespace.
	Start func(start func() error) error
}

// Cluster is a throwaway PostgreSQL cluster started by StartCluster.
type Cluster struct {
	// URL reaches the server over its Unix socket (as user postgres), so
	// it answers whatever network the server listens on.
	URL string
	// Port is the TCP port of the server.
	Port int
	srv  *server
}

// StartCluster starts a throwaway cluster with the PostgreSQL server
// binaries (on PATH or in /usr/lib/postgresql/*/bin), as the user nobody
// when running as root. Stop it with Stop.
func StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	bin, err := findBinaries(os.Getenv("PATH"), debianLibGlob)
	if err != nil {
		return nil, fmt.Errorf("%w: %v; %s", errNoServer, err, installHint)
	}
	srv, port, err := startCluster(ctx, bin, opts)
	if err != nil {
		return nil, err
	}
	return &Cluster{URL: srv.url, Port: port, srv: srv}, nil
}

// TCPURL returns the URL of database postgres on host over TCP.
func (c *Cluster) TCPURL(host string) string {
	return fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable", net.JoinHostPort(host, strconv.Itoa(c.Port)))
}

// Stop stops the server at once and removes its files.
func (c *Cluster) Stop() error { return c.srv.stop() }

// startCluster creates a cluster in a temporary folder and starts it on a
// free port, listening on opts.Listen and a socket in that folder, and
// returns it with its port. As root it runs everything as nobody, since PostgreSQL refuses to
// run as root. Without a Listen address, the server's URL is over TCP on
// 127.0.0.1, else over its socket.
func startCluster(ctx context.Context, bin string, opts ClusterOptions) (*server, int, error) {
	dir, err := os.MkdirTemp("", "trellis-pg-")
	if err != nil {
		return nil, 0, fmt.Errorf("throwaway cluster: %w", err)
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("nobody")
		if err != nil {
			_ = os.RemoveAll(dir)
			return nil, 0, fmt.Errorf("throwaway cluster: running as root and no user nobody to run PostgreSQL as: %w", err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, int(uid), int(gid)); err != nil {
			_ = os.RemoveAll(dir)
			return nil, 0, fmt.Errorf("throwaway cluster: chown %s: %w", dir, err)
		}
	}
	data := filepath.Join(dir, "data")
	run := func(name string, args ...string) error {
		cmd := exec.CommandContext(ctx, filepath.Join(bin, name), args...)
		cmd.Dir = dir
		cmd.Env = append(cleanEnv(), "HOME="+dir, "LC_ALL=C")
		if cred != nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out.String())
		}
		return nil
	}
	fail := func(err error) (*server, int, error) {
		_ = os.RemoveAll(dir)
		return nil, 0, fmt.Errorf("throwaway cluster in %s: %w", dir, err)
	}
	if err := run("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"); err != nil {
		return fail(err)
	}
	if err := trustNets(filepath.Join(data, "pg_hba.conf"), opts.TrustNets); err != nil {
		return fail(err)
	}
	port, err := freePort()
	if err != nil {
		return fail(err)
	}
	listen := opts.Listen
	if listen == "" {
		listen = "127.0.0.1"
	}
	pgOpts := fmt.Sprintf("-p %d -k %s -c listen_addresses=%s -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200", port, dir, listen)
	start := func() error {
		return run("pg_ctl", "-D", data, "-l", filepath.Join(dir, "server.log"), "-w", "-t", "60", "-o", pgOpts, "start")
	}
	if opts.Start != nil {
		err = opts.Start(start)
	} else {
		err = start()
	}
	if err != nil {
		return fail(err)
	}
	stop := func() error {
		err := run("pg_ctl", "-D", data, "-m", "immediate", "-w", "-t", "60", "stop")
		if rerr := os.RemoveAll(dir); err == nil && rerr != nil {
			err = rerr
		}
		if err != nil {
			return fmt.Errorf("stop throwaway cluster in %s: %w", dir, err)
		}
		return nil
	}
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
	if opts.Listen != "" {
		u = fmt.Sprintf("postgres://postgres@/postgres?host=%s&port=%d&sslmode=disable", url.QueryEscape(dir), port)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pingRetry(pctx, u); err != nil {
		_ = stop()
		return nil, 0, fmt.Errorf("throwaway cluster on port %d does not answer: %w", port, err)
	}
	return &server{url: u, stop: stop, dir: dir}, port, nil
}

// trustNets lets TCP connections from nets in without a password.
func trustNets(hba string, nets []string) error {
	if len(nets) == 0 {
		return nil
	}
	var b strings.Builder
	for _, n := range nets {
		if _, _, err := net.ParseCIDR(n); err != nil {
			return fmt.Errorf("trusted network %q: %w", n, err)
		}
		fmt.Fprintf(&b, "host all all %s trust\n", n)
	}
	f, err := os.OpenFile(hba, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(b.String()); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// cleanEnv is the environment without PG* variables that would point the
// server tools elsewhere.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
