package dag

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
)

// DefaultPool is the pool of tasks that name none (Airflow's
// default_pool).
const DefaultPool = "default_pool"

// PoolNamePattern is the pattern pool names must match.
const PoolNamePattern = `^[A-Za-z0-9_.-]{1,250}$`

var poolNameRE = regexp.MustCompile(PoolNamePattern)

// ValidPoolName reports whether name matches PoolNamePattern.
func ValidPoolName(name string) bool { return poolNameRE.MatchString(name) }

// MaxKeyLength bounds a rendered concurrency key.
const MaxKeyLength = 250

// Pool runs the task in the named pool: the task's instances run only
// while the pool has PoolSlots free. A pool that does not exist yet is
// valid: instances wait queued until it is created (API or RegisterPool).
func Pool(name string) TaskOption { return func(t *Task) { t.setM().pool = name } }

// PoolSlots sets how many slots of its pool one instance of the task
// takes (default 1).
func PoolSlots(n int) TaskOption {
	return func(t *Task) { m := t.setM(); m.poolSlots, m.poolSlotsSet = n, true }
}

// MaxActive caps the instances of this task running at once, across all
// runs of its DAG (0 = no cap).
func MaxActive(n int) TaskOption { return func(t *Task) { t.setM().maxActive = n } }

// ConcurrencyKey puts each instance of the task under a concurrency key
// rendered from template when the instance is created (Go text/template
// over .Params, the DAG's params overlaid by the run's conf, .DAGID,
// .TaskID and .RunID): at most limit instances with the same key run at
// once, whatever task or DAG they belong to. A saturated key never holds
// back instances of other keys.
func ConcurrencyKey(template string, limit int) TaskOption {
	return func(t *Task) {
		m := t.setM()
		m.keyTemplate, m.keyLimit, m.keySet = template, limit, true
		m.callKey, m.keyFields = false, nil
	}
}

// ConcurrencyByArguments lets at most limit instances of a callable with
// the same canonical arguments run at once, across runs and workers
// (Pynenc's concurrency by arguments): the call instance's concurrency
// key is "call:<dag>.<task>:<arguments>" (arguments longer than 128 bytes
// by their SHA-256).
func ConcurrencyByArguments(limit int) TaskOption {
	return func(t *Task) {
		m := t.setM()
		m.keyTemplate, m.keyLimit, m.keySet = "call:{{.DAGID}}.{{.TaskID}}:{{.CallArgs}}", limit, true
		m.callKey, m.keyFields = true, nil
	}
}

// ConcurrencyByKeys lets at most limit instances of a callable whose
// arguments (a JSON object) have the same values of the named fields run
// at once, across runs and workers (Pynenc's concurrency by keys). A call
// whose arguments are not an object or lack a field fails.
func ConcurrencyByKeys(limit int, fields ...string) TaskOption {
	return func(t *Task) {
		tpl := "call:{{.DAGID}}.{{.TaskID}}:{{.CallKeys"
		for _, f := range fields {
			tpl += " " + strconv.Quote(f)
		}
		m := t.setM()
		m.keyTemplate, m.keyLimit, m.keySet = tpl+"}}", limit, true
		m.callKey, m.keyFields = true, slices.Clone(fields)
		if m.keyFields == nil {
			m.keyFields = []string{}
		}
	}
}

// Pool returns the task's pool name ("" = DefaultPool).
func (t *Task) Pool() string { return t.m().pool }

// PoolSlots returns the slots an instance takes in its pool (1 unless
// set).
func (t *Task) PoolSlots() int {
	if !t.m().poolSlotsSet {
		return 1
	}
	return t.m().poolSlots
}

// MaxActive returns the cap on running instances of the task (0 = none).
func (t *Task) MaxActive() int { return t.m().maxActive }

// ConcurrencyKey returns the key template and its limit ("" = none).
func (t *Task) ConcurrencyKey() (template string, limit int) {
	return t.m().keyTemplate, t.m().keyLimit
}

// KeyData is what a concurrency key template renders from.
type KeyData struct {
	Params map[string]any
	DAGID  string
	TaskID string
	RunID  string
	// Args are the canonical JSON arguments of a call instance (nil for
	// instances of other tasks).
	Args json.RawMessage
}

// CallArgs renders the call's canonical arguments for a key: themselves,
// or "sha256:" and their hash when longer than 128 bytes.
func (k KeyData) CallArgs() (string, error) {
	if k.Args == nil {
		return "", &CallKeyError{"CallArgs: not a call instance"}
	}
	return shortArgs(k.Args), nil
}

// CallKeys renders the named fields of the call's arguments (a JSON
// object) as a canonical JSON object, hashed when longer than 128 bytes.
func (k KeyData) CallKeys(fields ...string) (string, error) {
	if k.Args == nil {
		return "", &CallKeyError{"CallKeys: not a call instance"}
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(k.Args, &obj); err != nil || obj == nil {
		label := CallLabel("", k.Args)
		return "", &CallKeyError{fmt.Sprintf("the arguments %s are not a JSON object (ConcurrencyByKeys)", label[1:len(label)-1])}
	}
	sel := make(map[string]json.RawMessage, len(fields))
	for _, f := range fields {
		v, ok := obj[f]
		if !ok {
			return "", &CallKeyError{fmt.Sprintf("the arguments have no field %q (ConcurrencyByKeys)", f)}
		}
		sel[f] = v
	}
	b, err := json.Marshal(sel)
	if err != nil {
		return "", err
	}
	c, err := CanonicalJSON(b)
	if err != nil {
		return "", err
	}
	return shortArgs(c), nil
}

// CallKeyError says why a call's arguments give no concurrency key.
type CallKeyError struct{ Reason string }

func (e *CallKeyError) Error() string { return e.Reason }

func shortArgs(b []byte) string {
	if len(b) <= 128 {
		return string(b)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// ParseKeyTemplate parses a concurrency key template; a reference to a
// missing map key is an error when rendered.
func ParseKeyTemplate(text string) (*template.Template, error) {
	return template.New("concurrency key").Option("missingkey=error").Parse(text)
}

// RenderKey renders a concurrency key template. The key must not be
// empty nor longer than MaxKeyLength.
func RenderKey(text string, data KeyData) (string, error) {
	tpl, err := ParseKeyTemplate(text)
	if err != nil {
		return "", fmt.Errorf("concurrency key template %q: %w", text, err)
	}
	var b bytes.Buffer
	if err := tpl.Execute(&b, data); err != nil {
		return "", fmt.Errorf("concurrency key template %q: %w", text, err)
	}
	key := b.String()
	if strings.TrimSpace(key) == "" {
		return "", fmt.Errorf("concurrency key template %q renders an empty key", text)
	}
	if len(key) > MaxKeyLength {
		return "", fmt.Errorf("concurrency key template %q renders a key of %d bytes (at most %d)", text, len(key), MaxKeyLength)
	}
	return key, nil
}

// PoolDecl is a pool declared in code by RegisterPool.
type PoolDecl struct {
	Name        string
	Slots       int
	Description string
}

// RegisterPool declares a pool in code, in the default registry: the
// scheduler creates it when it is missing and leaves an existing one
// (resized through the API) as it is. slots -1 means unlimited, as in
// Airflow. Bad declarations are reported by the registry's Validate.
func RegisterPool(name string, slots int, description string) {
	defaultRegistry.RegisterPool(name, slots, description)
}

// RegisterPool declares a pool in r (see the package-level RegisterPool).
func (r *Registry) RegisterPool(name string, slots int, description string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pools = append(r.pools, PoolDecl{Name: name, Slots: slots, Description: description})
}

// Pools returns the pools declared in r, in declaration order.
func (r *Registry) Pools() []PoolDecl {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.pools)
}

// CheckPool returns what is wrong with a pool's name and size, or nil.
func CheckPool(name string, slots int) error {
	if !ValidPoolName(name) {
		return fmt.Errorf("invalid pool name %q: must match %s", name, PoolNamePattern)
	}
	if slots < -1 {
		return fmt.Errorf("pool %q: slots must be -1 (unlimited) or at least 0, got %d", name, slots)
	}
	return nil
}

// ValidatePools checks pool declarations (names, sizes, duplicates) and
// that no task of dags takes more slots than the declared size of its
// pool.
func ValidatePools(decls []PoolDecl, dags ...*DAG) []Problem {
	var out []Problem
	seen := map[string]bool{}
	size := map[string]int{}
	for _, p := range decls {
		if err := CheckPool(p.Name, p.Slots); err != nil {
			out = append(out, Problem{Message: "RegisterPool: " + err.Error()})
			continue
		}
		if seen[p.Name] {
			out = append(out, Problem{Message: fmt.Sprintf("RegisterPool: pool %q is declared more than once", p.Name)})
			continue
		}
		seen[p.Name] = true
		size[p.Name] = p.Slots
	}
	for _, d := range dags {
		if d == nil {
			continue
		}
		for _, t := range d.tasks {
			pool := t.m().pool
			if pool == "" {
				pool = DefaultPool
			}
			if n, ok := size[pool]; ok && n >= 0 && t.PoolSlots() > n {
				out = append(out, Problem{DAGID: d.id, TaskID: t.id, Message: fmt.Sprintf(
					"PoolSlots %d is more than pool %q has (%d slots): the task could never run", t.PoolSlots(), pool, n)})
			}
		}
	}
	return out
}

// validateLimits reports the task's bad pool, slots, cap and key.
func (t *Task) validateLimits(problem func(format string, args ...any)) {
	if t.m().pool != "" && !ValidPoolName(t.m().pool) {
		problem("invalid pool name %q: must match %s", t.m().pool, PoolNamePattern)
	}
	if t.m().poolSlotsSet && t.m().poolSlots < 1 {
		problem("PoolSlots must be at least 1, got %d", t.m().poolSlots)
	}
	if t.m().maxActive < 0 {
		problem("MaxActive must be 0 (no cap) or positive, got %d", t.m().maxActive)
	}
	// Call instances are created by Store.Call, which renders concurrency
	// keys but takes no pool slot and no per-task cap: refuse what would
	// otherwise be ignored.
	if t.Kind() == KindCallable && (t.m().pool != "" || t.m().poolSlotsSet || t.m().maxActive != 0) {
		problem("Pool, PoolSlots and MaxActive apply to static tasks: limit a callable's calls with ConcurrencyByArguments or ConcurrencyByKeys")
	}
	if t.m().callKey {
		switch {
		case t.Kind() != KindCallable:
			problem("ConcurrencyByArguments and ConcurrencyByKeys apply to callables (NewCallable) only")
		case t.m().keyLimit < 1:
			problem("concurrency limit must be at least 1, got %d", t.m().keyLimit)
		case t.m().keyFields != nil && len(t.m().keyFields) == 0:
			problem("ConcurrencyByKeys names no field")
		}
		for _, f := range t.m().keyFields {
			if f == "" {
				problem("ConcurrencyByKeys names an empty field")
			}
		}
		return
	}
	if t.m().keySet && t.Kind() == KindCallable {
		problem("ConcurrencyKey applies to static tasks: a callable takes ConcurrencyByArguments or ConcurrencyByKeys")
		return
	}
	if t.m().keySet {
		if t.m().keyLimit < 1 {
			problem("ConcurrencyKey limit must be at least 1, got %d", t.m().keyLimit)
		}
		if strings.TrimSpace(t.m().keyTemplate) == "" {
			problem("ConcurrencyKey template is empty")
		} else if _, err := ParseKeyTemplate(t.m().keyTemplate); err != nil {
			problem("ConcurrencyKey template %q does not parse: %v", t.m().keyTemplate, err)
		}
	}
}
