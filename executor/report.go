package executor

import (
	"bytes"
	"encoding/json"
	"strconv"
	"time"

	"github.com/trellis-dag/trellis/state"
)

// The reports of the supervision channel are JSON lines, written and
// read here without reflection: a child sends one for each batch of
// finishes (every try a worker runs), so encoding/json was a good part of
// the CPU a try costs the child and the pool. appendReport writes what
// json.Marshal would (strings it would escape go through it); parseReport
// reads exactly that shape and hands anything else to json.Unmarshal.

// appendReport appends r as one JSON line.
func appendReport(b []byte, r report) []byte {
	b = append(b, '{')
	if len(r.Finishes) > 0 {
		b = append(b, `"f":[`...)
		for i, f := range r.Finishes {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"dag":`...)
			b = appendString(b, f.DAGID)
			b = append(b, `,"run":`...)
			b = appendString(b, f.RunID)
			b = append(b, `,"task":`...)
			b = appendString(b, f.TaskID)
			b = append(b, `,"try":`...)
			b = strconv.AppendInt(b, int64(f.Try), 10)
			b = append(b, `,"state":`...)
			b = appendString(b, string(f.State))
			b = append(b, `,"dur":`...)
			b = strconv.AppendInt(b, int64(f.Duration), 10)
			b = append(b, `,"queued":`...)
			b = strconv.AppendInt(b, int64(f.Queued), 10)
			b = append(b, '}')
		}
		b = append(b, "],"...)
	}
	b = append(b, `"running":`...)
	b = strconv.AppendInt(b, int64(r.Running), 10)
	if r.Dropped != 0 {
		b = append(b, `,"dropped":`...)
		b = strconv.AppendInt(b, r.Dropped, 10)
	}
	return append(b, '}', '\n')
}

// appendString appends s as a JSON string: as it is when it holds only
// printable ASCII that needs no escape, else as json.Marshal writes it.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// parseReport reads one report line into r (reset first), as
// json.Unmarshal would.
func parseReport(line []byte, r *report) error {
	fs := r.Finishes[:0]
	*r = report{}
	p := reportParser{b: line}
	if p.parse(r, fs) {
		return nil
	}
	*r = report{}
	return json.Unmarshal(line, r)
}

// reportParser reads the shape appendReport writes: those keys in that
// order, integers, strings without escapes. false means "not that
// shape" (the line may still be valid JSON).
type reportParser struct {
	b []byte
	i int
}

func (p *reportParser) parse(r *report, fs []Finish) bool {
	if !p.lit("{") {
		return false
	}
	if p.lit(`"f":[`) {
		var prev Finish // a batch's finishes mostly share DAG, run and state
		for {
			f := Finish{DAGID: prev.DAGID, RunID: prev.RunID, State: prev.State}
			st := string(f.State)
			var try, dur, queued int64
			if !(p.lit(`{"dag":`) && p.str(&f.DAGID) && p.lit(`,"run":`) && p.str(&f.RunID) &&
				p.lit(`,"task":`) && p.str(&f.TaskID) && p.lit(`,"try":`) && p.num(&try) &&
				p.lit(`,"state":`) && p.str(&st) && p.lit(`,"dur":`) && p.num(&dur) &&
				p.lit(`,"queued":`) && p.num(&queued) && p.lit("}")) {
				return false
			}
			f.Try, f.State, f.Duration, f.Queued = int(try), state.TaskState(st), time.Duration(dur), time.Duration(queued)
			fs = append(fs, f)
			prev = f
			if p.lit("],") {
				break
			}
			if !p.lit(",") {
				return false
			}
		}
		r.Finishes = fs
	}
	var running int64
	if !p.lit(`"running":`) || !p.num(&running) {
		return false
	}
	r.Running = int(running)
	if p.lit(`,"dropped":`) && !p.num(&r.Dropped) {
		return false
	}
	return p.lit("}") && len(bytes.TrimSpace(p.b[p.i:])) == 0
}

// lit consumes s if the input continues with it.
func (p *reportParser) lit(s string) bool {
	if !bytes.HasPrefix(p.b[p.i:], []byte(s)) {
		return false
	}
	p.i += len(s)
	return true
}

// str consumes a JSON string without escapes into s, keeping s when it
// holds that string already (no allocation).
func (p *reportParser) str(s *string) bool {
	if !p.lit(`"`) {
		return false
	}
	end := bytes.IndexByte(p.b[p.i:], '"')
	if end < 0 {
		return false
	}
	raw := p.b[p.i : p.i+end]
	for _, c := range raw {
		if c < 0x20 || c >= 0x7f || c == '\\' {
			return false
		}
	}
	if string(raw) != *s {
		*s = string(raw)
	}
	p.i += end + 1
	return true
}

// num consumes a JSON integer of at most 18 digits into n.
func (p *reportParser) num(n *int64) bool {
	i, neg := p.i, false
	if i < len(p.b) && p.b[i] == '-' {
		i, neg = i+1, true
	}
	var v int64
	start := i
	for ; i < len(p.b) && p.b[i] >= '0' && p.b[i] <= '9'; i++ {
		v = v*10 + int64(p.b[i]-'0')
	}
	if digits := i - start; digits == 0 || digits > 18 || (digits > 1 && p.b[start] == '0') {
		return false
	}
	if neg {
		v = -v
	}
	*n, p.i = v, i
	return true
}
