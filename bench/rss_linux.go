package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"syscall"
)

// TreeMemory returns the resident memory of process root and all its
// descendants, read from /proc: RSS and PSS from smaps_rollup (Linux ≥
// 4.14), or RSS alone from statm.
func TreeMemory(root int) (Memory, error) {
	pids, err := tree(root)
	if err != nil {
		return Memory{}, err
	}
	var total Memory
	found := false
	for _, pid := range pids {
		m, err := ProcessMemory(pid)
		if err != nil {
			continue // exited meanwhile
		}
		if pid == root {
			found = true
		}
		total.RSS += m.RSS
		total.PSS += m.PSS
	}
	if !found {
		return Memory{}, fmt.Errorf("process %d: no memory figures in /proc", root)
	}
	return total, nil
}

// askHeapProfile asks the server root and its worker processes for a
// heap profile (HeapProfileOnSignal), which they write when they were
// started with EnvHeapProfile.
func askHeapProfile(root int) {
	pids, err := tree(root)
	if err != nil {
		return
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGUSR1)
	}
}

// tree returns root and its descendants. It follows the children lists of
// every thread (/proc/PID/task/TID/children), which costs a few small
// reads per process, and falls back to reading the parent of every
// process in /proc where the kernel lacks those lists.
func tree(root int) ([]int, error) {
	out := []int{root}
	for i := 0; i < len(out); i++ {
		dir := "/proc/" + strconv.Itoa(out[i]) + "/task"
		tasks, err := os.ReadDir(dir)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("process %d: %w", root, err)
			}
			continue // exited meanwhile
		}
		for _, task := range tasks {
			b, err := os.ReadFile(dir + "/" + task.Name() + "/children")
			if errors.Is(err, fs.ErrNotExist) && i == 0 && task.Name() == strconv.Itoa(root) {
				return treeByParents(root)
			}
			if err != nil {
				continue
			}
			for _, f := range bytes.Fields(b) {
				if pid, err := strconv.Atoi(string(f)); err == nil {
					out = append(out, pid)
				}
			}
		}
	}
	return out, nil
}

// treeByParents is tree by reading the parent of every process.
func treeByParents(root int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("read /proc: %w", err)
	}
	children := map[int][]int{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		ppid, err := parentPID(b)
		if err != nil {
			continue
		}
		children[ppid] = append(children[ppid], pid)
	}
	out := []int{root}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out, nil
}

// ProcessMemory returns the resident memory of one process, read from
// /proc as TreeMemory does.
func ProcessMemory(pid int) (Memory, error) {
	dir := "/proc/" + strconv.Itoa(pid)
	if b, err := os.ReadFile(dir + "/smaps_rollup"); err == nil {
		if m, err := parseRollup(b); err == nil {
			return m, nil
		}
	}
	b, err := os.ReadFile(dir + "/statm")
	if err != nil {
		return Memory{}, err
	}
	pages, err := residentPages(b)
	if err != nil {
		return Memory{}, err
	}
	return Memory{RSS: pages * uint64(os.Getpagesize())}, nil
}

// parseRollup reads the Rss and Pss lines (in kB) of
// /proc/PID/smaps_rollup.
func parseRollup(b []byte) (Memory, error) {
	var m Memory
	var haveRSS, havePSS bool
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		f := bytes.Fields(line)
		if len(f) != 3 || string(f[2]) != "kB" {
			continue
		}
		var dst *uint64
		switch string(f[0]) {
		case "Rss:":
			dst, haveRSS = &m.RSS, true
		case "Pss:":
			dst, havePSS = &m.PSS, true
		default:
			continue
		}
		kb, err := strconv.ParseUint(string(f[1]), 10, 64)
		if err != nil {
			return Memory{}, fmt.Errorf("smaps_rollup: %q: %w", line, err)
		}
		*dst = kb << 10
	}
	if !haveRSS || !havePSS {
		return Memory{}, errors.New("smaps_rollup: no Rss and Pss lines")
	}
	return m, nil
}

// parentPID returns the parent pid from the contents of /proc/PID/stat:
// "pid (comm) state ppid …", where comm may hold spaces and parentheses.
func parentPID(stat []byte) (int, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	f := bytes.Fields(stat[i+1:])
	if len(f) < 2 {
		return 0, errors.New("stat: too few fields")
	}
	return strconv.Atoi(string(f[1]))
}

// residentPages returns the second field of /proc/PID/statm.
func residentPages(statm []byte) (uint64, error) {
	f := bytes.Fields(statm)
	if len(f) < 2 {
		return 0, errors.New("statm: too few fields")
	}
	return strconv.ParseUint(string(f[1]), 10, 64)
}
