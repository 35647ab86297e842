package sqlite

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// Every LIMIT bound to a parameter is written as an expression (?n + 0):
// SQLite compiles a statement with a bare bound LIMIT again on every run
// (see claimFast).
func TestLimitsAreExpressions(t *testing.T) {
	bare := regexp.MustCompile(`(?i)\bLIMIT\s+\?[0-9]*\s*($|[^+0-9\s])`)
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.Contains(strings.ToUpper(line), "LIMIT ?") {
				checked++
			}
			if bare.MatchString(line) {
				t.Errorf("%s:%d: a bare bound LIMIT (write ?n + 0): %s", f, i+1, strings.TrimSpace(line))
			}
		}
	}
	if checked == 0 {
		t.Fatal("no LIMIT ? found: the test reads the wrong files")
	}
}
