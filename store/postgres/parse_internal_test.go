package postgres

import (
	"slices"
	"strings"
	"testing"

	"github.com/trellis-dag/trellis/state"
)

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

// TestParseURLLoopbackPlainFirst: on loopback, without an sslmode of the
// URL's, the first connection attempt is without TLS (TLS only as a
// fallback); elsewhere, and when the URL says, pgx's default stands.
func TestParseURLLoopbackPlainFirst(t *testing.T) {
	t.Setenv("PGSSLMODE", "")
	for _, tc := range []struct {
		url          string
		plainPrimary bool
	}{
		{"postgres://u@127.0.0.1:5432/db", true},
		{"postgres://u@localhost/db?search_path=s", true},
		{"host=::1 dbname=db", true},
		{"postgres://u@127.0.0.1:5432/db?sslmode=require", false},
		{"host=127.0.0.1 dbname=db sslmode=prefer", false},
		{"postgres://u@db.example.com:5432/db", false},
	} {
		cfg, err := parseURL(tc.url)
		if err != nil {
			t.Fatalf("parseURL(%q): %v", tc.url, err)
		}
		plain := cfg.ConnConfig.TLSConfig == nil
		if plain != tc.plainPrimary {
			t.Errorf("parseURL(%q): first attempt without TLS = %v, want %v", tc.url, plain, tc.plainPrimary)
		}
		if tc.plainPrimary {
			hasTLS := false
			for _, f := range cfg.ConnConfig.Fallbacks {
				hasTLS = hasTLS || f.TLSConfig != nil
			}
			if !hasTLS {
				t.Errorf("parseURL(%q): no TLS fallback for a server that demands it", tc.url)
			}
		}
	}
}

func TestCheckServerVersion(t *testing.T) {
	if err := checkServerVersion(150020, "15.20"); err != nil {
		t.Errorf("15.20 refused: %v", err)
	}
	err := checkServerVersion(120017, "12.17")
	if err == nil || !strings.Contains(err.Error(), "12.17") || !strings.Contains(err.Error(), "13 or newer") {
		t.Errorf("12.17: %v, want an error naming the version and what is needed", err)
	}
}

// TestFailingLeafStates: settleSQL's rule (a run fails when any leaf is
// in failingLeafStates) is state.RunOutcome's, over every set of up to
// three terminal leaf states.
func TestFailingLeafStates(t *testing.T) {
	var terminal []state.TaskState
	for _, st := range state.TaskStates {
		if st.Terminal() {
			terminal = append(terminal, st)
		}
	}
	sets := [][]state.TaskState{{}}
	for range 3 {
		var next [][]state.TaskState
		for _, s := range sets {
			for _, st := range terminal {
				next = append(next, append(slices.Clone(s), st))
			}
		}
		sets = append(sets, next...)
	}
	for _, leaves := range sets {
		sql := state.RunSuccess
		for _, l := range leaves {
			if slices.Contains(failingLeafStates, string(l)) {
				sql = state.RunFailed
			}
		}
		if got := state.RunOutcome(leaves); got != sql {
			t.Errorf("leaves %v: RunOutcome %s, settleSQL's rule %s", leaves, got, sql)
		}
	}
	if !slices.Contains(failingLeafStates, string(state.Failed)) || !slices.Contains(failingLeafStates, string(state.UpstreamFailed)) {
		t.Errorf("failingLeafStates = %v, want failed and upstream_failed among them", failingLeafStates)
	}
}
