package postgres

import "testing"

func TestParseURLTurnsJITOff(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"postgres://u@127.0.0.1:5432/db", "off"},
		{"postgres://u@127.0.0.1:5432/db?jit=on", "on"},
		{"host=127.0.0.1 dbname=db", "off"},
	} {
		cfg, err := parseURL(tc.url)
		if err != nil {
			t.Fatalf("parseURL(%q): %v", tc.url, err)
		}
		if got := cfg.ConnConfig.RuntimeParams["jit"]; got != tc.want {
			t.Errorf("parseURL(%q): jit = %q, want %q", tc.url, got, tc.want)
		}
	}
}
