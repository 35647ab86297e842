package dag

import (
	"slices"
	"sync"
)

// Registry holds DAGs by id. The package-level functions use a default
// registry that the files of package dags fill from init().
type Registry struct {
	mu   sync.Mutex
	dags []*DAG
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{} }

// Register records d. It never panics: duplicate ids and bad DAGs are kept
// and reported by Validate.
func (r *Registry) Register(d *DAG) {
	if d == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dags = append(r.dags, d)
}

// DAGs returns the registered DAGs in registration order.
func (r *Registry) DAGs() []*DAG {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.dags)
}

// Lookup returns the first DAG registered with id, or nil.
func (r *Registry) Lookup(id string) *DAG {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.dags {
		if d.id == id {
			return d
		}
	}
	return nil
}

var defaultRegistry = NewRegistry()

// Default returns the registry that Register fills.
func Default() *Registry { return defaultRegistry }

// Register records d in the default registry. It never panics.
func Register(d *DAG) { defaultRegistry.Register(d) }
