package bench

import (
	"sync"
	"sync/atomic"
	"time"
)

// Memory is the resident memory of a process tree.
type Memory struct {
	// RSS is the sum of the processes' resident set sizes: pages shared
	// between them (the binary's text, a memory-mapped database file) are
	// counted once per process, so it errs on the high side.
	RSS uint64
	// PSS is the sum of their proportional set sizes: a shared page counts
	// 1/n in each of the n processes mapping it, so the sum is the memory
	// the tree uses together. Zero where the kernel does not report it.
	PSS uint64
}

// Sampler samples the resident memory of a process tree (TreeMemory) at a
// fixed interval and keeps the peaks. Start it, Stop it, read Peak.
type Sampler struct {
	root     int
	only     bool // the root process alone, not its descendants
	interval time.Duration
	peakRSS  atomic.Uint64
	peakPSS  atomic.Uint64
	samples  atomic.Int64

	mu     sync.Mutex // held by a periodic sample; guards paused
	paused bool

	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NewSampler returns a sampler of the tree rooted at pid.
func NewSampler(pid int, interval time.Duration) *Sampler {
	return &Sampler{root: pid, interval: interval, stop: make(chan struct{})}
}

// NewProcessSampler returns a sampler of process pid alone.
func NewProcessSampler(pid int, interval time.Duration) *Sampler {
	s := NewSampler(pid, interval)
	s.only = true
	return s
}

// Start takes a first sample and starts sampling in a goroutine.
func (s *Sampler) Start() {
	s.sample()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.interval)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.tick()
			}
		}
	}()
}

// Stop takes a last sample, ends the sampling and waits for it.
func (s *Sampler) Stop() {
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
		s.sample()
	})
}

// Peak returns the largest sums seen (each on its own), and whether any
// sample could be taken (false where /proc is not available).
func (s *Sampler) Peak() (Memory, bool) {
	return Memory{RSS: s.peakRSS.Load(), PSS: s.peakPSS.Load()}, s.samples.Load() > 0
}

// tick takes a periodic sample unless paused.
func (s *Sampler) tick() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.paused {
		s.sample()
	}
}

// Pause takes a sample and stops the periodic ones until Resume: a CPU
// measurement of the tree leaves out the sampler's reads of
// smaps_rollup (the kernel walks each process's page tables), which
// cost the bench process about 0.02 cores at the 200 ms interval. When
// Pause returns no periodic sample is running.
func (s *Sampler) Pause() {
	s.mu.Lock()
	s.paused = true
	s.mu.Unlock()
	s.sample()
}

// Resume takes a sample and starts the periodic ones again.
func (s *Sampler) Resume() {
	s.sample()
	s.mu.Lock()
	s.paused = false
	s.mu.Unlock()
}

// Sample takes a sample now, in addition to the periodic ones: a short
// run may end between two of them.
func (s *Sampler) Sample() { s.sample() }

func (s *Sampler) sample() {
	measure := TreeMemory
	if s.only {
		measure = ProcessMemory
	}
	m, err := measure(s.root)
	if err != nil {
		return
	}
	s.samples.Add(1)
	raise(&s.peakRSS, m.RSS)
	raise(&s.peakPSS, m.PSS)
}

// raise sets p to v when v is larger.
func raise(p *atomic.Uint64, v uint64) {
	for {
		old := p.Load()
		if v <= old || p.CompareAndSwap(old, v) {
			return
		}
	}
}
