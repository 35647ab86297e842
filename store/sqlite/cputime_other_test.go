//go:build !unix

package sqlite_test

import "time"

// cpuTime is not measured here: the CPU figure of the benchmarks reads 0.
func cpuTime() time.Duration { return 0 }
