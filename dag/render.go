package dag

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteDOT writes d as a Graphviz digraph laid out left to right: one node
// per task, labelled with its id and kind (and trigger rule when it is not
// all_success), Branch tasks as diamonds, and one edge per dependency. Ids
// are always quoted, so any id renders.
func WriteDOT(w io.Writer, d *DAG) error {
	bw := bufio.NewWriter(w)
	title := d.id
	if d.schedule != "" {
		title += "\n" + d.schedule
	}
	fmt.Fprintf(bw, "digraph %s {\n", dotQuote(d.id))
	fmt.Fprintf(bw, "\tgraph [rankdir=LR, labelloc=t, fontname=\"Helvetica\", label=%s];\n", dotQuote(title))
	bw.WriteString("\tnode [shape=box, style=rounded, fontname=\"Helvetica\"];\n")
	for _, t := range d.tasks {
		label := t.id + "\n(" + t.describe() + ")"
		attrs := "label=" + dotQuote(label)
		switch {
		case t.Kind() == KindBranch:
			attrs += ", shape=diamond, style=solid"
		case t.Waits():
			attrs += `, style="rounded,dashed"`
		}
		fmt.Fprintf(bw, "\t%s [%s];\n", dotQuote(t.id), attrs)
	}
	for _, t := range d.tasks {
		for _, v := range t.downTasks() {
			fmt.Fprintf(bw, "\t%s -> %s;\n", dotQuote(t.id), dotQuote(v.id))
		}
	}
	bw.WriteString("}\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write DOT of DAG %q: %w", d.id, err)
	}
	return nil
}

// describe is the kind of t (with "waits" for the kinds that defer, and
// their poke interval or approvers), with its trigger rule when not the
// default.
func (t *Task) describe() string {
	s := string(t.Kind())
	switch t.Kind() {
	case KindSensor:
		s += ", waits: poke every " + t.PokeInterval().String()
	case KindResumable:
		s += ", waits"
	case KindApproval:
		s += ", waits"
		if len(t.m().approvers) > 0 {
			s += " for " + strings.Join(t.m().approvers, "|")
		}
	}
	if t.o().trigger == AllSuccess {
		return s
	}
	return s + ", " + string(t.o().trigger)
}

// dotQuote returns s as a DOT double-quoted string.
func dotQuote(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// JSONDAG is the JSON form WriteJSON writes.
type JSONDAG struct {
	DAGID       string     `json:"dag_id"`
	Schedule    *string    `json:"schedule"` // null for manual only
	Description string     `json:"description"`
	Tags        []string   `json:"tags"`
	EventKey    string     `json:"schedule_on_event,omitempty"`
	Tasks       []JSONTask `json:"tasks"`
	Edges       []JSONEdge `json:"edges"`
}

// JSONTask is one task of JSONDAG.
type JSONTask struct {
	TaskID            string   `json:"task_id"`
	Kind              Kind     `json:"kind"`
	TriggerRule       string   `json:"trigger_rule"`
	Retries           int      `json:"retries"`
	RetryDelaySeconds float64  `json:"retry_delay_seconds"`
	TimeoutSeconds    float64  `json:"timeout_seconds"`
	Priority          int      `json:"priority"`
	Upstream          []string `json:"upstream"`
	Downstream        []string `json:"downstream"`
	// Waits is set for the kinds that defer themselves (sensor,
	// resumable, approval).
	Waits bool `json:"waits,omitempty"`
}

// JSONEdge is one dependency of JSONDAG: To runs after From.
type JSONEdge struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// ToJSON returns the JSON form of d: tasks in insertion order, edges in
// the order of their upstream task, then as added. Lists are never nil.
func ToJSON(d *DAG) JSONDAG {
	j := JSONDAG{
		DAGID:       d.id,
		Description: d.description,
		Tags:        append([]string{}, d.tags...),
		EventKey:    d.eventKey,
		Tasks:       make([]JSONTask, 0, len(d.tasks)),
		Edges:       []JSONEdge{},
	}
	if d.schedule != "" {
		s := d.schedule
		j.Schedule = &s
	}
	for _, t := range d.tasks {
		j.Tasks = append(j.Tasks, JSONTask{
			TaskID:            t.id,
			Kind:              t.Kind(),
			TriggerRule:       string(t.o().trigger),
			Retries:           t.o().retries,
			RetryDelaySeconds: t.o().retryDelay.Seconds(),
			TimeoutSeconds:    t.o().timeout.Seconds(),
			Priority:          t.o().priority,
			Upstream:          t.idsAt(t.upstream),
			Downstream:        t.idsAt(t.downstream),
			Waits:             t.Waits(),
		})
		for _, v := range t.downTasks() {
			j.Edges = append(j.Edges, JSONEdge{From: t.id, To: v.id})
		}
	}
	return j
}

// WriteJSON writes ToJSON(d) as indented JSON followed by a newline.
func WriteJSON(w io.Writer, d *DAG) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	if err := enc.Encode(ToJSON(d)); err != nil {
		return fmt.Errorf("write JSON of DAG %q: %w", d.id, err)
	}
	return nil
}

// WriteText writes d as a readable tree: a header line, then each root task
// (one without upstream tasks) with its downstream tasks indented below
// it. A task reached again is printed once more with "(see above)" and not
// expanded; tasks reachable from no root (they sit on a cycle) start trees
// of their own, so every task appears.
func WriteText(w io.Writer, d *DAG) error {
	bw := bufio.NewWriter(w)
	sched := "manual only"
	if d.schedule != "" {
		sched = "schedule " + d.schedule
	}
	if d.eventKey != "" {
		sched += ", on event " + d.eventKey
	}
	noun := "tasks"
	if len(d.tasks) == 1 {
		noun = "task"
	}
	fmt.Fprintf(bw, "%s (%s, %d %s)\n", d.id, sched, len(d.tasks), noun)
	shown := make([]bool, len(d.tasks))
	tp := textPrinter{w: bw, shown: shown}
	for _, t := range d.tasks {
		if len(t.upstream) == 0 {
			tp.print(t, "", "", "")
		}
	}
	for _, t := range d.tasks {
		if !shown[t.index] {
			tp.print(t, "", "", "")
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write text of DAG %q: %w", d.id, err)
	}
	return nil
}

type textPrinter struct {
	w     *bufio.Writer
	shown []bool
}

// print writes t on a line started by indent+branch, then its downstream
// tasks with indent+cont as their indent.
func (p textPrinter) print(t *Task, indent, branch, cont string) {
	p.w.WriteString(indent)
	p.w.WriteString(branch)
	p.w.WriteString(t.id)
	p.w.WriteString(" (")
	p.w.WriteString(t.describe())
	p.w.WriteString(")")
	if p.shown[t.index] {
		p.w.WriteString(" (see above)\n")
		return
	}
	p.w.WriteString("\n")
	p.shown[t.index] = true
	for i, v := range t.downTasks() {
		if i == len(t.downstream)-1 {
			p.print(v, indent+cont, "└── ", "    ")
		} else {
			p.print(v, indent+cont, "├── ", "│   ")
		}
	}
}
