package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"
)

// clockTicks is the unit of utime and stime in /proc/PID/stat (USER_HZ).
const clockTicks = 100

// TreeCPU returns the CPU time (user and system) used so far by root and
// its descendants alive now, read from /proc.
func TreeCPU(root int) (time.Duration, error) {
	pids, err := tree(root)
	if err != nil {
		return 0, err
	}
	var ticks uint64
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // exited meanwhile
		}
		// Fields after the command (which may hold spaces) in parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 13 {
			continue
		}
		u, err1 := strconv.ParseUint(string(f[11]), 10, 64)
		s, err2 := strconv.ParseUint(string(f[12]), 10, 64)
		if err1 == nil && err2 == nil {
			ticks += u + s
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}
