package bench

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/trellis-dag/trellis/executor"
)

func TestStartChildProfile(t *testing.T) {
	dir := t.TempDir()
	prefix := filepath.Join(dir, "worker")
	env := map[string]string{EnvCPUProfile: prefix, EnvTrace: prefix}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }

	// Not a worker child: nothing is recorded.
	stop, err := StartChildProfile(lookup)
	if err != nil || stop != nil {
		t.Fatalf("outside a worker child: stop %v, err %v; want nothing", stop != nil, err)
	}

	env[executor.EnvChild] = "w1"
	stop, err = StartChildProfile(lookup)
	if err != nil || stop == nil {
		t.Fatalf("worker child: stop %v, err %v", stop != nil, err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(os.Getpid())
	for _, name := range []string{"worker-" + pid + ".pprof", "worker-" + pid + ".trace"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v (size %d), want a non-empty file", name, err, sizeOf(fi))
		}
	}

	env[EnvCPUProfile] = filepath.Join(dir, "missing", "x")
	delete(env, EnvTrace)
	if stop, err := StartChildProfile(lookup); err == nil || stop != nil {
		t.Errorf("profile into a missing directory: err %v, want an error and nothing started", err)
	}
}

func sizeOf(fi os.FileInfo) int64 {
	if fi == nil {
		return 0
	}
	return fi.Size()
}
