package cli

import (
	"bufio"
	"strings"
	"testing"
)

func TestMemLimitFlag(t *testing.T) {
	for in, want := range map[string]memLimit{
		"auto": {auto: true}, " AUTO ": {auto: true}, "0": {}, "": {}, "512MiB": {bytes: 512 << 20}, "2G": {bytes: 2 << 30},
	} {
		var m memLimit
		if err := m.Set(in); err != nil || m != want {
			t.Errorf("Set(%q) = %+v, %v; want %+v", in, m, err, want)
		}
	}
	for _, in := range []string{"automatic", "-1", "lots"} {
		var m memLimit
		if err := m.Set(in); err == nil {
			t.Errorf("Set(%q) accepted", in)
		}
	}
}

func TestServeMemoryShare(t *testing.T) {
	const gib = int64(1) << 30
	for _, c := range []struct {
		name       string
		limit      memLimit
		available  int64
		workers    int
		gomemlimit bool
		want       int64
	}{
		{"explicit, split between serve and 2 workers", memLimit{bytes: 3 * gib}, 24 * gib, 2, false, gib},
		{"explicit 0: none", memLimit{}, 24 * gib, 2, false, 0},
		{"auto: 3/4 of what is available, split", memLimit{auto: true}, 4 * gib, 2, false, gib},
		{"auto, nothing known: none", memLimit{auto: true}, 0, 2, false, 0},
		{"GOMEMLIMIT in the environment wins", memLimit{bytes: 3 * gib}, 24 * gib, 2, true, 0},
		{"GOMEMLIMIT wins over auto", memLimit{auto: true}, 24 * gib, 2, true, 0},
		{"one worker", memLimit{bytes: gib}, 24 * gib, 1, false, gib / 2},
	} {
		asked := false
		available := func() int64 { asked = true; return c.available }
		if got := serveMemoryShare(c.limit, available, c.workers, c.gomemlimit); got != c.want {
			t.Errorf("%s: share %d, want %d", c.name, got, c.want)
		}
		if asked && !c.limit.auto {
			t.Errorf("%s: read the available memory for an explicit limit", c.name)
		}
	}
}

func TestCgroupLimitAndMemTotal(t *testing.T) {
	for in, want := range map[string]int64{
		"max\n": 0, "9223372036854771712\n": 0, "536870912\n": 512 << 20, "": 0,
	} {
		if got := cgroupLimit(in); got != want {
			t.Errorf("cgroupLimit(%q) = %d, want %d", in, got, want)
		}
	}
	meminfo := "MemFree:         1000 kB\nMemTotal:       24684104 kB\nSwapTotal: 0 kB\n"
	if got := memTotal(bufio.NewScanner(strings.NewReader(meminfo))); got != 24684104<<10 {
		t.Errorf("memTotal = %d", got)
	}
	if got := memTotal(bufio.NewScanner(strings.NewReader("MemFree: 1 kB\n"))); got != 0 {
		t.Errorf("memTotal without the line = %d", got)
	}
}
