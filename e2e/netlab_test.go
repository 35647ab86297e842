//go:build linux

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A lab is a small network of hosts made of Linux network namespaces: a
// hub namespace holding a bridge, and one namespace per host joined to the
// bridge by a veth pair, all on the test-only subnet labNet, which exists
// only inside these namespaces (nothing is added to the machine's own
// network). Processes run on a host through `ip netns exec`.
type lab struct {
	t      *testing.T
	ip     string // path of the ip command
	prefix string // of every namespace of this lab: labPrefix + pid + "-"
	hub    string // namespace of the bridge
	hosts  map[string]labHost
}

// labHost is one host of a lab.
type labHost struct {
	ns   string // namespace
	addr string // address on labNet
}

const (
	// labPrefix starts the name of every namespace a lab makes; the pid
	// of the test process follows, so leftovers of a run that crashed can
	// be told from a run still going.
	labPrefix = "trellis-mh-"
	// labNet is the lab's subnet; the hub's bridge has labNet.1, hosts
	// labNet.10 and up.
	labNet = "10.231.0"
	// labLink is each host's end of its veth pair.
	labLink = "eth0"
)

// newLab makes a lab with the named hosts, or skips the test where network
// namespaces cannot be made (not root, no ip command, a kernel or
// container that refuses them). Everything is removed when the test ends.
func newLab(t *testing.T, hosts ...string) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		labSkip(t, "making network namespaces needs root")
	}
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		labSkip(t, "no ip command (Debian: apt-get install iproute2)")
	}
	l := &lab{t: t, ip: ipPath, prefix: labPrefix + strconv.Itoa(os.Getpid()) + "-", hosts: map[string]labHost{}}
	l.removeLeftovers()
	l.hub = l.prefix + "hub"
	if out, err := exec.Command(ipPath, "netns", "add", l.hub).CombinedOutput(); err != nil {
		labSkip(t, fmt.Sprintf("this kernel or container does not allow network namespaces: ip netns add: %v: %s", err, strings.TrimSpace(string(out))))
	}
	t.Cleanup(l.remove)
	l.must("-n", l.hub, "link", "set", "lo", "up")
	l.must("-n", l.hub, "link", "add", "br0", "type", "bridge")
	l.must("-n", l.hub, "addr", "add", labNet+".1/24", "dev", "br0")
	l.must("-n", l.hub, "link", "set", "br0", "up")
	for i, name := range hosts {
		h := labHost{ns: l.prefix + name, addr: fmt.Sprintf("%s.%d", labNet, 10+i)}
		l.must("netns", "add", h.ns)
		l.hosts[name] = h
		peer := "v" + name // the bridge's end, in the hub
		l.must("-n", h.ns, "link", "set", "lo", "up")
		l.must("-n", h.ns, "link", "add", labLink, "type", "veth", "peer", "name", peer, "netns", l.hub)
		l.must("-n", l.hub, "link", "set", peer, "master", "br0")
		l.must("-n", l.hub, "link", "set", peer, "up")
		l.must("-n", h.ns, "addr", "add", h.addr+"/24", "dev", labLink)
		l.must("-n", h.ns, "link", "set", labLink, "up")
	}
	return l
}

// envRequireLab, set to 1, makes a test that cannot make its lab fail
// instead of skipping: CI, which runs as root, sets it so that the
// multi-host test cannot silently stop running.
const envRequireLab = "TRELLIS_TEST_REQUIRE_NETNS"

// labSkip skips the test because a lab cannot be made, or fails it when
// envRequireLab is set.
func labSkip(t *testing.T, why string) {
	t.Helper()
	if os.Getenv(envRequireLab) == "1" {
		t.Fatalf("multi-host test cannot run (%s=1): %s", envRequireLab, why)
	}
	t.Skipf("multi-host test skipped: %s", why)
}

// hubAddr is the address of the hub's bridge.
func (l *lab) hubAddr() string { return labNet + ".1" }

// host returns the named host.
func (l *lab) host(name string) labHost {
	h, ok := l.hosts[name]
	if !ok {
		l.t.Fatalf("lab has no host %q", name)
	}
	return h
}

// run runs the ip command with args.
func (l *lab) run(args ...string) error {
	out, err := exec.Command(l.ip, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// must runs the ip command with args and fails the test if it fails.
func (l *lab) must(args ...string) {
	l.t.Helper()
	if err := l.run(args...); err != nil {
		l.t.Fatal(err)
	}
}

// cut takes a host's link down: its packets go nowhere until restore.
func (l *lab) cut(name string) { l.must("-n", l.host(name).ns, "link", "set", labLink, "down") }

// restore brings a host's link back up.
func (l *lab) restore(name string) { l.must("-n", l.host(name).ns, "link", "set", labLink, "up") }

// command returns a command that runs argv on the named host.
func (l *lab) command(name string, argv ...string) *exec.Cmd {
	return exec.Command(l.ip, append([]string{"netns", "exec", l.host(name).ns}, argv...)...)
}

// pids lists the processes in namespace ns.
func (l *lab) pids(ns string) ([]int, error) {
	out, err := exec.Command(l.ip, "netns", "pids", ns).Output()
	if err != nil {
		return nil, fmt.Errorf("ip netns pids %s: %v", ns, err)
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids, nil
}

// killAll SIGKILLs every process in namespace ns, as a host losing power
// would end them, and waits until none is left.
func (l *lab) killAll(ns string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids, err := l.pids(ns)
		// A thread of this process that could not leave ns keeps the
		// process listed; it is not the lab's to kill.
		pids = slices.DeleteFunc(pids, func(pid int) bool { return pid == os.Getpid() })
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of namespace %s survive SIGKILL", pids, ns)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// crash SIGKILLs every process of the named host.
func (l *lab) crash(name string) {
	l.t.Helper()
	if err := l.killAll(l.host(name).ns); err != nil {
		l.t.Fatal(err)
	}
}

// remove kills what runs in the lab's namespaces and deletes them.
func (l *lab) remove() {
	nss := []string{l.hub}
	for _, h := range l.hosts {
		nss = append(nss, h.ns)
	}
	for _, ns := range nss {
		if err := l.killAll(ns); err != nil {
			l.t.Errorf("remove lab: %v", err)
		}
		if err := l.run("netns", "del", ns); err != nil {
			l.t.Errorf("remove lab: %v", err)
		}
	}
}

// removeLeftovers deletes the namespaces of labs whose test process is
// gone (a run that crashed or was killed before its cleanup).
func (l *lab) removeLeftovers() {
	out, err := exec.Command(l.ip, "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], labPrefix) {
			continue
		}
		ns := f[0]
		pid, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(ns, labPrefix), "-", 2)[0])
		if err == nil && pid != os.Getpid() && syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // another run, still going
		}
		if err := l.killAll(ns); err != nil {
			l.t.Logf("leftover namespace %s: %v", ns, err)
		}
		if err := l.run("netns", "del", ns); err != nil {
			l.t.Logf("leftover namespace %s: %v", ns, err)
		} else {
			l.t.Logf("removed leftover namespace %s", ns)
		}
	}
}

// inNetns runs fn on a thread locked to it in namespace ns. Sockets that
// fn makes, and processes it starts, belong to ns. The thread returns to
// its own namespace afterwards; if it cannot, it is never handed back to
// the Go runtime, so no other goroutine runs in ns.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		home, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		defer home.Close()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", ns, err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: setns: %w", ns, err)
			return
		}
		err = fn()
		if unix.Setns(int(home.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// dial makes a TCP connection from the named host to addr, and closes it.
func (l *lab) dial(name, addr string, timeout time.Duration) error {
	return inNetns(l.host(name).ns, func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			_ = c.Close()
		}
		return err
	})
}

// httpClient returns an HTTP client whose connections are made from the
// hub: a client on the lab's network, as an operator's machine would be.
func (l *lab) httpClient() *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNetns(l.hub, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		if err != nil && c != nil {
			_ = c.Close()
			c = nil
		}
		return c, err
	}
	return &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4},
	}
}
