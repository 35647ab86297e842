package cli_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/cli"
	"github.com/trellis-dag/trellis/dag"
)

// TestRunServesTheDAGsGiven: cli.DAGs alone serves exactly those DAGs (not
// dag.Default()'s, which holds the examples of package dags here), cli.Registry serves a registry's, and both together
// add the DAGs to the registry; a bad DAG given is reported, not a panic.
func TestRunServesTheDAGsGiven(t *testing.T) {
	mk := func(id string) *dag.DAG {
		d := dag.New(id)
		d.Func("t", func(*dag.Context) error { return nil })
		return d
	}
	reg := dag.NewRegistry()
	reg.Register(mk("in_registry"))

	list := func(opts ...cli.Option) string {
		var out, errb bytes.Buffer
		if code := cli.Run(context.Background(), []string{"dags", "list"}, &out, &errb, opts...); code != 0 {
			t.Fatalf("dags list: exit %d\n%s", code, errb.String())
		}
		return out.String()
	}
	for _, tc := range []struct {
		name       string
		opts       []cli.Option
		want, lack []string
	}{
		{"DAGs", []cli.Option{cli.DAGs(mk("given_a"), mk("given_b"))}, []string{"given_a", "given_b"}, []string{"etl_example", "in_registry"}},
		{"Registry", []cli.Option{cli.Registry(reg)}, []string{"in_registry"}, []string{"etl_example"}},
		{"Registry and DAGs", []cli.Option{cli.Registry(reg), cli.DAGs(mk("added"))}, []string{"in_registry", "added"}, []string{"etl_example"}},
		{"none", nil, []string{"etl_example"}, []string{"in_registry"}},
	} {
		out := list(tc.opts...)
		for _, id := range tc.want {
			if !strings.Contains(out, id) {
				t.Errorf("%s: dags list lacks %s:\n%s", tc.name, id, out)
			}
		}
		for _, id := range tc.lack {
			if strings.Contains(out, id) {
				t.Errorf("%s: dags list shows %s:\n%s", tc.name, id, out)
			}
		}
	}

	var out, errb bytes.Buffer
	bad := dag.New("bad id!")
	if code := cli.Run(context.Background(), []string{"dags", "validate"}, &out, &errb, cli.DAGs(bad, nil)); code != 1 ||
		!strings.Contains(out.String()+errb.String(), "bad id!") {
		t.Errorf("dags validate of a bad DAG: exit %d\n%s%s", code, out.String(), errb.String())
	}
}
