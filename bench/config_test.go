package bench

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseDB(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "x.db")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   string
		want DB
		err  string
	}{
		{in: "sqlite", want: DB{Backend: BackendSQLite}},
		{in: "SQLite", want: DB{Backend: BackendSQLite}},
		{in: "sqlite:" + dir, want: DB{Backend: BackendSQLite, Location: dir}},
		{in: "sqlite://" + dir + "/sub/", want: DB{Backend: BackendSQLite, Location: dir + "/sub"}},
		{in: "postgres", want: DB{Backend: BackendPostgres, Location: DefaultPostgresURL}},
		{in: "postgres://u:pw@db:5432/x", want: DB{Backend: BackendPostgres, Location: "postgres://u:pw@db:5432/x"}},
		{in: "postgresql://u@db/x", want: DB{Backend: BackendPostgres, Location: "postgresql://u@db/x"}},
		{in: "sqlite:", err: "want sqlite:DIR"},
		{in: "sqlite:" + file, err: "is a file; give a directory"},
		{in: "mysql://u:secret@db/x", err: "want sqlite, sqlite:DIR, postgres or postgres://"},
	} {
		got, err := ParseDB(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseDB(%q) = %v, want an error containing %q", tc.in, err, tc.err)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("ParseDB(%q) error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseDB(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	if s := (DB{Backend: BackendPostgres, Location: "postgres://u:pw@db/x"}).String(); strings.Contains(s, "pw") {
		t.Errorf("DB.String shows the password: %s", s)
	}
}

func TestParseScenarios(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want []string
	}{
		{nil, Scenarios},
		{[]string{"big", "wide"}, []string{"wide", "big"}},
		{[]string{"cron,chain", "chain"}, []string{"chain", "cron"}},
		{[]string{" shell ", ""}, []string{"shell"}},
	} {
		got, err := ParseScenarios(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParseScenarios(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	if _, err := ParseScenarios([]string{"wide,tall"}); err == nil || !strings.Contains(err.Error(), `unknown scenario "tall"`) {
		t.Errorf("unknown scenario: %v", err)
	}
}

func TestConfigDefaultsAndProblems(t *testing.T) {
	cfg, err := Config{DBs: DefaultDBs(), Scenarios: Scenarios}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Sizes != DefaultSizes() || cfg.CronDuration != DefaultCronDuration || cfg.Workers < 1 ||
		cfg.Slots < 1 || cfg.Executable == "" || cfg.Timeout != DefaultTimeout {
		t.Errorf("defaults not applied: %+v", cfg)
	}
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Scenarios: Scenarios}, "no databases"},
		{Config{DBs: DefaultDBs()}, "no scenarios"},
		{Config{DBs: DefaultDBs(), Scenarios: Scenarios, CronDuration: 1500 * time.Millisecond}, "want whole seconds"},
		{Config{DBs: DefaultDBs(), Scenarios: []string{"tall"}}, `unknown scenario "tall"`},
		{Config{DBs: DefaultDBs(), Scenarios: Scenarios, Sizes: Sizes{Wide: 1, Chain: 1, Shell: 1, ShellChain: 2, Cron: 1, Big: 3}}, "size must be between 2"},
		{Config{DBs: DefaultDBs(), Scenarios: Scenarios, Workers: -1}, "must not be negative"},
	} {
		if _, err := tc.cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("withDefaults(%+v) = %v, want an error containing %q", tc.cfg, err, tc.want)
		}
	}
}
