package executor

import (
	"bytes"
	"fmt"
	"strconv"
)

// procInfo is what the supervisor needs to know about a process.
type procInfo struct {
	PID   int
	PPID  int
	PGID  int
	State byte // R, S, D, Z, …
}

// parseStat parses the content of /proc/PID/stat. The command name (field
// 2) is in parentheses and may itself contain spaces and parentheses, so
// the fields after it are found from the last ')'.
func parseStat(b []byte) (procInfo, error) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 1 || closing < open {
		return procInfo{}, fmt.Errorf("parse /proc stat %q: no (command) field", b)
	}
	pid, err := strconv.Atoi(string(bytes.TrimSpace(b[:open])))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc stat %q: pid: %w", b, err)
	}
	rest := bytes.Fields(b[closing+1:])
	if len(rest) < 3 || len(rest[0]) != 1 {
		return procInfo{}, fmt.Errorf("parse /proc stat %q: want state, ppid and pgrp after the command", b)
	}
	ppid, err := strconv.Atoi(string(rest[1]))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc stat %q: ppid: %w", b, err)
	}
	pgid, err := strconv.Atoi(string(rest[2]))
	if err != nil {
		return procInfo{}, fmt.Errorf("parse /proc stat %q: pgrp: %w", b, err)
	}
	return procInfo{PID: pid, PPID: ppid, PGID: pgid, State: rest[0][0]}, nil
}

// environHas reports whether a NUL-separated environment block (the
// content of /proc/PID/environ) holds the entry kv ("NAME=value").
func environHas(environ []byte, kv string) bool {
	for entry := range bytes.SplitSeq(environ, []byte{0}) {
		if string(entry) == kv {
			return true
		}
	}
	return false
}
