package dag

import (
	"slices"
	"sync"
)

// Registry holds DAGs by id. The package-level functions use a default
// registry that the files of package dags fill from init().
type Registry struct {
	mu sync.Mutex
	// regs is every registration in order, nil ones included, so that
	// Validate can report them.
	regs []*DAG
	// pools are the pools declared with RegisterPool.
	pools []PoolDecl
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Register records d. It never panics: a nil DAG, duplicate ids and bad
// DAGs are kept and reported by Validate.
func (r *Registry) Register(d *DAG) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.regs = append(r.regs, d)
}

// DAGs returns the registered DAGs in registration order, without nil
// registrations.
func (r *Registry) DAGs() []*DAG {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*DAG, 0, len(r.regs))
	for _, d := range r.regs {
		if d != nil {
			out = append(out, d)
		}
	}
	return out
}

// Lookup returns the first DAG registered with id, or nil.
func (r *Registry) Lookup(id string) *DAG {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.regs {
		if d != nil && d.id == id {
			return d
		}
	}
	return nil
}

// Validate checks every registration, nil ones included, and returns every
// problem found, as the package-level Validate does.
func (r *Registry) Validate() []Problem {
	r.mu.Lock()
	regs := slices.Clone(r.regs)
	pools := slices.Clone(r.pools)
	r.mu.Unlock()
	return append(Validate(regs), ValidatePools(pools, regs...)...)
}

var defaultRegistry = NewRegistry()

// Default returns the registry that Register fills.
func Default() *Registry { return defaultRegistry }

// Register records d in the default registry. It never panics.
func Register(d *DAG) { defaultRegistry.Register(d) }
