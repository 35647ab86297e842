package dag

import (
	"strings"
	"testing"
)

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts []TaskOption
		want string // "" = valid
	}{
		{"none", nil, ""},
		{"pool", []TaskOption{Pool("warehouse"), PoolSlots(2)}, ""},
		{"missing pool is valid", []TaskOption{Pool("not_created_yet")}, ""},
		{"bad pool name", []TaskOption{Pool("ware house")}, `invalid pool name "ware house"`},
		{"zero slots", []TaskOption{PoolSlots(0)}, "PoolSlots must be at least 1, got 0"},
		{"negative cap", []TaskOption{MaxActive(-1)}, "MaxActive must be 0 (no cap) or positive, got -1"},
		{"key", []TaskOption{ConcurrencyKey("customer:{{.Params.customer}}", 1)}, ""},
		{"key limit", []TaskOption{ConcurrencyKey("k", 0)}, "ConcurrencyKey limit must be at least 1, got 0"},
		{"bad template", []TaskOption{ConcurrencyKey("{{.Params.x", 1)}, "ConcurrencyKey template \"{{.Params.x\" does not parse"},
		{"empty template", []TaskOption{ConcurrencyKey(" ", 1)}, "ConcurrencyKey template is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New("d")
			d.Func("a", func(*Context) error { return nil }, tc.opts...)
			ps := d.Validate()
			if tc.want == "" {
				if len(ps) != 0 {
					t.Fatalf("problems %v, want none", ps)
				}
				return
			}
			if len(ps) != 1 || !strings.Contains(ps[0].Message, tc.want) || ps[0].TaskID != "a" {
				t.Fatalf("problems %v, want one on task a containing %q", ps, tc.want)
			}
		})
	}
}

func TestLimitsInFingerprint(t *testing.T) {
	build := func(opts ...TaskOption) string {
		d := New("d")
		d.Func("a", func(*Context) error { return nil }, opts...)
		return d.Fingerprint()
	}
	plain := build()
	if build(PoolSlots(1)) != plain {
		t.Errorf("the default PoolSlots changed the fingerprint")
	}
	seen := map[string]string{plain: "none"}
	for name, opts := range map[string][]TaskOption{
		"pool":  {Pool("p")},
		"slots": {PoolSlots(2)},
		"cap":   {MaxActive(2)},
		"key":   {ConcurrencyKey("k", 1)},
		"key2":  {ConcurrencyKey("k", 2)},
	} {
		fp := build(opts...)
		if other, dup := seen[fp]; dup {
			t.Errorf("limits %s and %s give the same fingerprint", name, other)
		}
		seen[fp] = name
	}
}

func TestRenderKey(t *testing.T) {
	data := KeyData{Params: map[string]any{"customer": "42"}, DAGID: "d", TaskID: "t", RunID: "r"}
	if k, err := RenderKey("customer:{{.Params.customer}}:{{.DAGID}}", data); err != nil || k != "customer:42:d" {
		t.Errorf("RenderKey = %q, %v", k, err)
	}
	for _, bad := range []string{"{{.Params.missing}}", "{{.Nope}}", "{{\"\"}}", strings.Repeat("x", MaxKeyLength+1)} {
		if k, err := RenderKey(bad, data); err == nil {
			t.Errorf("RenderKey(%q) = %q, want an error", bad, k)
		}
	}
}

func TestValidatePools(t *testing.T) {
	r := NewRegistry()
	for _, p := range []PoolDecl{{"ok", 3, ""}, {"ok", 4, ""}, {"bad name", 1, ""}, {"neg", -2, ""}, {"inf", -1, ""}} {
		r.RegisterPool(p.Name, p.Slots, p.Description)
	}
	d := New("d")
	d.Func("big", func(*Context) error { return nil }, Pool("ok"), PoolSlots(4))
	d.Func("fits", func(*Context) error { return nil }, Pool("ok"), PoolSlots(3))
	d.Func("inf", func(*Context) error { return nil }, Pool("inf"), PoolSlots(40))
	r.Register(d)
	ps := r.Validate()
	var msgs []string
	for _, p := range ps {
		msgs = append(msgs, p.String())
	}
	got := strings.Join(msgs, "\n")
	for _, want := range []string{`pool "ok" is declared more than once`, `invalid pool name "bad name"`,
		`slots must be -1 (unlimited) or at least 0, got -2`, `task "big": PoolSlots 4 is more than pool "ok" has (3 slots)`} {
		if !strings.Contains(got, want) {
			t.Errorf("problems:\n%s\nwant one containing %q", got, want)
		}
	}
	if len(ps) != 4 {
		t.Errorf("%d problems, want 4:\n%s", len(ps), got)
	}
	if n := len(r.Pools()); n != 5 {
		t.Errorf("Pools() has %d declarations, want 5", n)
	}
}
