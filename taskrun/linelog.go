package taskrun

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// maxPartialLine is how much of a line without a newline a tryWriter
// holds before writing it out anyway.
const maxPartialLine = 64 << 10

// sharedLog is the one writer the task logs of a RunDAG run go to. It
// writes whole lines, each prefixed with its task and try, so that the
// output of tasks running at once is never interleaved mid-line.
type sharedLog struct {
	mu  sync.Mutex
	w   io.Writer
	buf []byte
}

func prefix(taskID string, try int) string { return fmt.Sprintf("[%s try=%d] ", taskID, try) }

// writeLines writes prefix before each line of lines (which ends with a
// newline) in a single Write.
func (s *sharedLog) writeLines(pfx string, lines []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = s.buf[:0]
	for len(lines) > 0 {
		n := bytes.IndexByte(lines, '\n') + 1
		s.buf = append(s.buf, pfx...)
		s.buf = append(s.buf, lines[:n]...)
		lines = lines[n:]
	}
	_, _ = s.w.Write(s.buf)
}

// line writes one message line for a task's try.
func (s *sharedLog) line(taskID string, try int, msg string) {
	s.writeLines(prefix(taskID, try), []byte(msg+"\n"))
}

// forTry returns the writer of one try.
func (s *sharedLog) forTry(taskID string, try int) *tryWriter {
	return &tryWriter{log: s, prefix: prefix(taskID, try)}
}

// tryWriter buffers a try's output until a newline and hands whole lines
// to the shared log.
type tryWriter struct {
	mu      sync.Mutex
	log     *sharedLog
	prefix  string
	partial []byte
}

func (w *tryWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	data := p
	if len(w.partial) > 0 {
		w.partial = append(w.partial, p...)
		data = w.partial
	}
	last := bytes.LastIndexByte(data, '\n')
	if last >= 0 {
		w.log.writeLines(w.prefix, data[:last+1])
		data = data[last+1:]
	}
	if len(data) > maxPartialLine {
		w.log.writeLines(w.prefix, append(data[:len(data):len(data)], '\n'))
		data = nil
	}
	w.partial = append(w.partial[:0], data...) // memmove: data may alias partial
	return len(p), nil
}

// flush writes out a last line without a newline.
func (w *tryWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.partial) > 0 {
		w.log.writeLines(w.prefix, append(w.partial, '\n'))
		w.partial = nil
	}
}
