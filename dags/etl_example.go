package dags

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/trellis-dag/trellis/dag"
)

// order is one row extracted from the (simulated) source system.
type order struct {
	ID          int    `json:"id"`
	Customer    string `json:"customer"`
	AmountCents int64  `json:"amount_cents"`
	Status      string `json:"status"` // "paid" or "cancelled"
}

// customerTotal is one row of the transformed data.
type customerTotal struct {
	Customer   string `json:"customer"`
	Orders     int    `json:"orders"`
	TotalCents int64  `json:"total_cents"`
}

// salesSummary is what transform hands to the branch and to load.
type salesSummary struct {
	Day       string          `json:"day"`      // logical date, YYYY-MM-DD
	Rows      int             `json:"rows"`     // paid orders kept
	Rejected  int             `json:"rejected"` // cancelled orders dropped
	Customers []customerTotal `json:"customers"`
}

var etlCustomers = []string{"acme", "globex", "initech", "umbrella", "hooli"}

// etlDir is the example's working directory under the system temporary
// directory (TMPDIR): staging/<run> for one run's scratch files, warehouse/
// for the loaded data.
func etlDir(parts ...string) string {
	return filepath.Join(append([]string{os.TempDir(), "trellis-etl"}, parts...)...)
}

// pathSafe turns a run id into one safe path element: every character
// outside [A-Za-z0-9_-] becomes "_".
func pathSafe(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		}
		return '_'
	}, s)
}

// intParam reads a non-negative integer parameter. Params set in Go are
// ints; values from a run's JSON conf arrive as float64.
func intParam(params map[string]any, key string, def int) (int, error) {
	v, ok := params[key]
	if !ok || v == nil {
		return def, nil
	}
	var f float64
	switch n := v.(type) {
	case int:
		f = float64(n)
	case int64:
		f = float64(n)
	case float64:
		f = n
	case json.Number:
		x, err := n.Float64()
		if err != nil {
			return 0, fmt.Errorf("param %q: %q is not a number", key, n)
		}
		f = x
	default:
		return 0, fmt.Errorf("param %q: want a number, got %T %v", key, v, v)
	}
	if f < 0 || f != math.Trunc(f) || f > 1_000_000 {
		return 0, fmt.Errorf("param %q: want a whole number from 0 to 1000000, got %v", key, v)
	}
	return int(f), nil
}

// extract pretends to read the day's orders from a source system. The
// source is "not ready" on the first try, so the task fails once and
// succeeds on its retry; the data is generated deterministically from the
// logical date.
func extract(c *dag.Context) error {
	n, err := intParam(c.Params(), "rows", 20)
	if err != nil {
		return dag.Permanent(err) // bad configuration: retrying cannot help
	}
	if c.TryNumber() == 1 {
		return errors.New("source system not ready (simulated transient failure on the first try)")
	}
	day := c.LogicalDate().UTC()
	rng := rand.New(rand.NewPCG(uint64(day.Unix()), 42))
	orders := make([]order, n)
	for i := range orders {
		status := "paid"
		if rng.IntN(5) == 0 {
			status = "cancelled"
		}
		orders[i] = order{
			ID:          i + 1,
			Customer:    etlCustomers[rng.IntN(len(etlCustomers))],
			AmountCents: 500 + rng.Int64N(100_000),
			Status:      status,
		}
	}
	c.Logger().Info("extracted orders", "rows", len(orders), "day", day.Format(time.DateOnly), "try", c.TryNumber())
	return c.SetOutput(orders)
}

// transform drops cancelled orders and totals the rest per customer.
func transform(c *dag.Context) error {
	var orders []order
	if err := c.Output("extract", &orders); err != nil {
		return fmt.Errorf("read extracted orders: %w", err)
	}
	s := salesSummary{Day: c.LogicalDate().UTC().Format(time.DateOnly), Customers: []customerTotal{}}
	byCustomer := map[string]*customerTotal{}
	for _, o := range orders {
		if o.Status != "paid" {
			s.Rejected++
			continue
		}
		s.Rows++
		t := byCustomer[o.Customer]
		if t == nil {
			t = &customerTotal{Customer: o.Customer}
			byCustomer[o.Customer] = t
		}
		t.Orders++
		t.TotalCents += o.AmountCents
	}
	for _, t := range byCustomer {
		s.Customers = append(s.Customers, *t)
	}
	slices.SortFunc(s.Customers, func(a, b customerTotal) int { return strings.Compare(a.Customer, b.Customer) })
	c.Logger().Info("transformed orders", "kept", s.Rows, "rejected", s.Rejected, "customers", len(s.Customers))
	return c.SetOutput(s)
}

// chooseLoad follows load when transform kept rows, skip_load otherwise.
func chooseLoad(c *dag.Context) ([]string, error) {
	var s salesSummary
	if err := c.Output("transform", &s); err != nil {
		return nil, fmt.Errorf("read transformed data: %w", err)
	}
	if s.Rows == 0 {
		c.Logger().Info("no rows to load")
		return []string{"skip_load"}, nil
	}
	c.Logger().Info("rows to load", "rows", s.Rows)
	return []string{"load"}, nil
}

// load writes the day's totals to the warehouse: first to this run's
// staging directory, then renamed into warehouse/daily_sales_<day>.json,
// so a rerun of the same day replaces its partition atomically.
func load(c *dag.Context) error {
	var s salesSummary
	if err := c.Output("transform", &s); err != nil {
		return fmt.Errorf("read transformed data: %w", err)
	}
	staging := etlDir("staging", pathSafe(c.RunID()))
	warehouse := etlDir("warehouse")
	for _, dir := range []string{staging, warehouse} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("load: %w", err)
		}
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("load: encode summary: %w", err)
	}
	tmp := filepath.Join(staging, "daily_sales.json")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	dst := filepath.Join(warehouse, "daily_sales_"+s.Day+".json")
	if err := os.Rename(tmp, dst); err != nil {
		return fmt.Errorf("load: %w", err)
	}
	c.Logger().Info("loaded daily sales", "path", dst, "rows", s.Rows, "customers", len(s.Customers))
	return c.SetOutput(dst)
}

// skipLoad runs instead of load when there is nothing to load.
func skipLoad(c *dag.Context) error {
	c.Logger().Info("nothing to load for this day; the warehouse is unchanged")
	return nil
}

// report joins the two paths of the branch: it runs after whichever of
// load and skip_load ran (none_failed_min_one_success) and says what the
// run did. Being a leaf that becomes upstream_failed when the pipeline
// fails, it also makes the run fail then; cleanup alone, which runs
// whatever happened, would let a broken run end as success.
func report(c *dag.Context) error {
	var path string
	err := c.Output("load", &path)
	switch {
	case errors.Is(err, dag.ErrNoOutput):
		c.Logger().Info("run finished: nothing was loaded")
		return nil
	case err != nil:
		return fmt.Errorf("read load result: %w", err)
	}
	c.Logger().Info("run finished: daily sales loaded", "path", path)
	return nil
}

// cleanup removes this run's staging directory, whatever happened upstream.
func cleanup(c *dag.Context) error {
	staging := etlDir("staging", pathSafe(c.RunID()))
	if err := os.RemoveAll(staging); err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	c.Logger().Info("removed staging directory", "path", staging)
	return nil
}

// An extract-transform-load pipeline showing outputs passed between tasks,
// a branch whose paths join again, a retried task and a cleanup task that
// runs whatever happened upstream:
//
//	extract -> transform -> choose_load -> load      -> report, cleanup
//	                                    -> skip_load -> report, cleanup
//
// The "rows" param (default 20) sets how many orders extract
// produces; trigger with conf {"rows": 0} to take the skip_load branch.
func init() {
	d := dag.New("etl_example",
		dag.Description("Extract orders, total them per customer, and load them into a warehouse file unless there is nothing to load."),
		dag.Schedule("@daily"),
		dag.StartDate(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		dag.Params(map[string]any{"rows": 20}),
		dag.Tags("example", "etl"),
		dag.TaskMetrics(), // a few long-lived tasks: a metric series each
	)
	ext := d.Func("extract", extract, dag.Retries(2), dag.RetryDelay(200*time.Millisecond))
	tr := d.Func("transform", transform)
	choose := d.Branch("choose_load", chooseLoad)
	ld := d.Func("load", load)
	skip := d.Func("skip_load", skipLoad)
	rep := d.Func("report", report, dag.Trigger(dag.NoneFailedMinOneSuccess))
	clean := d.Func("cleanup", cleanup, dag.Trigger(dag.AllDone))
	ext.SetDownstream(tr)
	tr.SetDownstream(choose)
	choose.SetDownstream(ld, skip)
	rep.SetUpstream(ld, skip)
	clean.SetUpstream(ld, skip)
	dag.Register(d)
}
