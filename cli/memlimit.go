package cli

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// envMemoryLimit is the environment variable of serve's --memory-limit.
const envMemoryLimit = "TRELLIS_MEMORY_LIMIT"

// memoryLimitAuto is the value of --memory-limit that derives the limit
// from the memory available (the default).
const memoryLimitAuto = "auto"

// memLimit is the value of --memory-limit: "auto", or a size (0 = none).
type memLimit struct {
	auto  bool
	bytes int64
}

func (m *memLimit) String() string {
	if m.auto {
		return memoryLimitAuto
	}
	return strconv.FormatInt(m.bytes, 10)
}

func (m *memLimit) Type() string { return "size|auto" }

func (m *memLimit) Set(s string) error {
	if strings.EqualFold(strings.TrimSpace(s), memoryLimitAuto) {
		*m = memLimit{auto: true}
		return nil
	}
	v, err := parseMemSize(s)
	if err != nil {
		return fmt.Errorf("%q is neither auto nor a memory size such as 512MiB (0 = no limit)", s)
	}
	*m = memLimit{bytes: v}
	return nil
}

// envGoMemLimit is the Go runtime's own soft memory limit variable.
const envGoMemLimit = "GOMEMLIMIT"

// serveMemoryShare returns the soft memory limit of each process of serve
// with workers worker processes, for --memory-limit m (available is
// called for "auto"); 0 = leave the runtime's. A GOMEMLIMIT in the
// environment wins: the runtime of serve applied it and the workers
// inherit it.
func serveMemoryShare(m memLimit, available func() int64, workers int, gomemlimitSet bool) int64 {
	if gomemlimitSet {
		return 0
	}
	limit := m.bytes
	if m.auto {
		limit = autoMemoryLimit(available())
	}
	return memoryShare(limit, workers+1)
}

// memoryShare returns the soft memory limit of each process of a tree of
// processes that together may use limit bytes; 0 = none. An equal share:
// serve and a worker each hold the DAGs and work of similar size.
func memoryShare(limit int64, processes int) int64 {
	if limit <= 0 || processes < 1 {
		return 0
	}
	return limit / int64(processes)
}

// autoMemoryLimit is the limit "auto" means for a machine (or container)
// with available bytes of memory (0 = unknown, no limit): three quarters
// of it, the rest left to what the Go runtime does not count (the binary,
// SQLite's caches, the processes tasks start).
func autoMemoryLimit(available int64) int64 {
	return available / 4 * 3
}

// availableMemory returns the memory this process may use: the least of
// its cgroup's limit (v2 or v1) and the machine's RAM; 0 when none can be
// read (not Linux).
func availableMemory() int64 {
	var least int64
	take := func(v int64) {
		if v > 0 && (least == 0 || v < least) {
			least = v
		}
	}
	for _, path := range []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"} {
		if b, err := os.ReadFile(path); err == nil {
			take(cgroupLimit(string(b)))
		}
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		defer f.Close()
		take(memTotal(bufio.NewScanner(f)))
	}
	return least
}

// cgroupLimit parses a cgroup memory limit file: "max" (v2) or a v1
// limit near the largest int64 mean none (0).
func cgroupLimit(s string) int64 {
	v, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || v >= 1<<60 {
		return 0
	}
	return v
}

// memTotal returns MemTotal of /proc/meminfo in bytes, 0 when missing.
func memTotal(sc *bufio.Scanner) int64 {
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
		if err != nil {
			return 0
		}
		return kb << 10
	}
	return 0
}
