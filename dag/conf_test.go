package dag

import (
	"errors"
	"strings"
	"testing"
)

func TestParseConf(t *testing.T) {
	for in, want := range map[string]string{
		`{"n": 1e400}`:              `conf.n: the number (5 characters) is beyond the range`,
		`{"a": [1, -1e309]}`:        `conf.a[1]: the number`,
		`{"odd key": {"x": 1e999}}`: `conf["odd key"].x: the number`,
		`{"a": "\ud800"}`:           `conf: a string holds the escape \ud800 (at byte 7)`,
		`{"\udc00": 1}`:             `\udc00`,
		`{"a": "\ud800\u0041"}`:     `\ud800`,
		`{"a": "x\u0000"}`:          `\u0000`,
		`[1]`:                       "got an array",
		`{} {}`:                     "data after",
		`{"a": `:                    "not valid JSON",
	} {
		_, err := ParseConf([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseConf(%s) error %v, want %q", in, err, want)
		}
	}
	var ce *ConfError
	if _, err := ParseConf([]byte(`{"n": 1e400}`)); !errors.As(err, &ce) || ce.Path != "conf.n" {
		t.Errorf("1e400: %v, want a *ConfError at conf.n", err)
	}
	got, err := ParseConf([]byte(`{"s": "\ud83d\ude00 \\u0000 \"\\\"", "n": 12345678901234567890, "t": 1e-400}`))
	if err != nil || got["s"] != "😀 \\u0000 \"\\\"" || got["n"] != 1.2345678901234567e19 || got["t"] != 0.0 {
		t.Errorf("ParseConf of valid values = %#v, %v", got, err)
	}
	if got, err := ParseConf([]byte(" null ")); got != nil || err != nil {
		t.Errorf("null: %v, %v", got, err)
	}
}
