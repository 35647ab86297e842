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
	ps := ValidatePools([]PoolDecl{{"ok", 3, ""}, {"ok", 4, ""}, {"bad name", 1, ""}, {"neg", -2, ""}, {"inf", -1, ""}})
	if len(ps) != 3 {
		t.Fatalf("problems %v, want 3 (duplicate, bad name, negative slots)", ps)
	}
}
