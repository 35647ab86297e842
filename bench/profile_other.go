//go:build !unix

package bench

// HeapProfileOnSignal needs SIGUSR1: elsewhere no profile is written.
func HeapProfileOnSignal(func(string) (string, bool), func(string, ...any)) (stop func()) { return nil }
