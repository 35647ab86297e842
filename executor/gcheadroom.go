package executor

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// ChildGCHeadroom is the least a worker child's Go heap may grow over its
// live heap before the collector runs (KeepGCHeadroom). A worker's live
// heap is small — a few MiB besides the DAGs — and each try allocates a
// few KiB, so at the runtime's default (GOGC 100: grow by the live heap)
// it collected every hundred or so tries, each collection scanning the
// whole live heap (docs/benchmarks.md, "Session 8: gocpu"). With a live
// heap of 16 MiB or more nothing changes.
const ChildGCHeadroom = 16 << 20

// gcPercentFor returns the GOGC that lets a heap of live bytes grow by at
// least headroom before the next collection: 100 (the default) or more.
func gcPercentFor(live, headroom uint64) int {
	const floor = 1 << 20 // below it the runtime's 4 MiB minimum goal decides
	live = max(live, floor)
	return max(100, int((headroom*100+live-1)/live))
}

// KeepGCHeadroom makes the collector of this process let the heap grow by
// at least headroom bytes over the live heap, and by the live heap when
// that is larger (GOGC 100): after every collection it sets GOGC from the
// live heap that collection found (gcPercentFor). So the heap stays
// within max(2 × live, live + headroom): bounded, and never larger than
// GOGC 100 allows once the live heap reaches headroom. Nothing is changed
// when GOGC is in the environment (lookup: os.LookupEnv): that wins. The
// returned function stops the adjustments (GOGC stays as last set).
func KeepGCHeadroom(headroom uint64, lookup func(string) (string, bool)) (stop func()) {
	return keepGCHeadroom(headroom, lookup, nil)
}

// keepGCHeadroom is KeepGCHeadroom calling adjusted (when not nil) after
// each adjustment.
func keepGCHeadroom(headroom uint64, lookup func(string) (string, bool), adjusted func(percent int)) (stop func()) {
	if _, set := lookup("GOGC"); set || headroom == 0 {
		return func() {}
	}
	t := &gcTuner{headroom: headroom, percent: 100, sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}, adjusted: adjusted}
	t.arm()
	return func() { t.stopped.Store(true) }
}

// gcTuner adjusts GOGC once per collection, from the finalizer of an
// object made unreachable at once (it runs after the next collection).
type gcTuner struct {
	headroom uint64
	percent  int // only the finalizer goroutine touches it
	sample   []metrics.Sample
	stopped  atomic.Bool
	adjusted func(percent int)
}

// gcSentinel is an object large enough not to share a tiny block, so its
// finalizer runs after the first collection that finds it unreachable.
type gcSentinel struct {
	_ *int
	_ [16]byte
}

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&gcSentinel{}, func(*gcSentinel) {
		if t.stopped.Load() {
			return
		}
		t.adjust()
		t.arm()
	})
}

func (t *gcTuner) adjust() {
	metrics.Read(t.sample)
	if t.sample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	if p := gcPercentFor(t.sample[0].Value.Uint64(), t.headroom); p != t.percent {
		debug.SetGCPercent(p)
		t.percent = p
	}
	if t.adjusted != nil {
		t.adjusted(t.percent)
	}
}
