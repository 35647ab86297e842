package dag

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestCallConcurrencyValidate(t *testing.T) {
	fn := func(*Context, map[string]any) (int, error) { return 0, nil }
	for _, tc := range []struct {
		name     string
		opts     []TaskOption
		onStatic bool
		want     string // "" = valid
	}{
		{"by arguments", []TaskOption{ConcurrencyByArguments(1)}, false, ""},
		{"by keys", []TaskOption{ConcurrencyByKeys(2, "user", "region")}, false, ""},
		{"arguments limit", []TaskOption{ConcurrencyByArguments(0)}, false, "concurrency limit must be at least 1, got 0"},
		{"keys limit", []TaskOption{ConcurrencyByKeys(-1, "user")}, false, "concurrency limit must be at least 1, got -1"},
		{"no fields", []TaskOption{ConcurrencyByKeys(1)}, false, "ConcurrencyByKeys names no field"},
		{"empty field", []TaskOption{ConcurrencyByKeys(1, "")}, false, "ConcurrencyByKeys names an empty field"},
		{"template key on a callable", []TaskOption{ConcurrencyKey("k", 1)}, false, "a callable takes ConcurrencyByArguments or ConcurrencyByKeys"},
		{"static task", []TaskOption{ConcurrencyByArguments(1)}, true, "apply to callables (NewCallable) only"},
		{"pool on a callable", []TaskOption{Pool("warehouse")}, false, "Pool, PoolSlots and MaxActive apply to static tasks"},
		{"pool slots on a callable", []TaskOption{PoolSlots(2)}, false, "Pool, PoolSlots and MaxActive apply to static tasks"},
		{"max active on a callable", []TaskOption{MaxActive(3)}, false, "Pool, PoolSlots and MaxActive apply to static tasks"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := New("d")
			if tc.onStatic {
				d.Func("a", func(*Context) error { return nil }, tc.opts...)
			} else {
				NewCallable(d, "a", fn, tc.opts...)
			}
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

func TestCallConcurrencyKeys(t *testing.T) {
	render := func(opt TaskOption, args string) (string, error) {
		d := New("d")
		k := NewCallable(d, "f", func(*Context, any) (int, error) { return 0, nil }, opt)
		tpl, _ := k.Task().ConcurrencyKey()
		return RenderKey(tpl, KeyData{DAGID: "d", TaskID: "f", RunID: "r", Args: json.RawMessage(args)})
	}
	long := `"` + strings.Repeat("x", 200) + `"`
	for _, tc := range []struct {
		name string
		opt  TaskOption
		args string
		want string // prefix when it ends in "*"; "error: ..." for an error
	}{
		{"arguments", ConcurrencyByArguments(1), `{"a":1,"b":[2]}`, `call:d.f:{"a":1,"b":[2]}`},
		{"long arguments hashed", ConcurrencyByArguments(1), long, "call:d.f:sha256:*"},
		{"fields", ConcurrencyByKeys(1, "user"), `{"n":3,"user":"u"}`, `call:d.f:{"user":"u"}`},
		{"fields sorted", ConcurrencyByKeys(1, "z", "a"), `{"a":1,"n":3,"z":{"y":1,"x":2}}`, `call:d.f:{"a":1,"z":{"x":2,"y":1}}`},
		{"odd field name", ConcurrencyByKeys(1, `we"ird field`), `{"we\"ird field":1}`, `call:d.f:{"we\"ird field":1}`},
		{"missing field", ConcurrencyByKeys(1, "user"), `{"n":3}`, `error: the arguments have no field "user"`},
		{"not an object", ConcurrencyByKeys(1, "user"), `[1,2]`, `error: the arguments [1,2] are not a JSON object`},
		{"null", ConcurrencyByKeys(1, "user"), `null`, `error: the arguments null are not a JSON object`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := render(tc.opt, tc.args)
			switch {
			case strings.HasPrefix(tc.want, "error: "):
				if err == nil || !strings.Contains(err.Error(), strings.TrimPrefix(tc.want, "error: ")) {
					t.Fatalf("key %q, error %v; want an error containing %q", got, err, tc.want[7:])
				}
			case err != nil:
				t.Fatalf("error %v, want key %q", err, tc.want)
			case strings.HasSuffix(tc.want, "*"):
				if !strings.HasPrefix(got, strings.TrimSuffix(tc.want, "*")) || len(got) != len(tc.want)-1+64 {
					t.Fatalf("key %q, want %s followed by a SHA-256", got, tc.want)
				}
			case got != tc.want:
				t.Fatalf("key %q, want %q", got, tc.want)
			}
		})
	}
	// A static task's instance has no arguments: the call key functions
	// say so instead of rendering an empty key.
	if _, err := RenderKey("{{.CallArgs}}", KeyData{DAGID: "d", TaskID: "a"}); err == nil || !strings.Contains(err.Error(), "not a call instance") {
		t.Errorf("CallArgs of a static instance: %v, want an error", err)
	}
}
