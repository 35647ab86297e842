package store

import "testing"

func TestRedactURL(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://user:secret@db:5432/trellis", "postgres://user:xxxxx@db:5432/trellis"},
		{"postgres://user@db:5432/trellis", "postgres://user@db:5432/trellis"},
		{"sqlite:trellis.db", "sqlite:trellis.db"},
		{"postgres://user:se%zzcret@db/x", "postgres://user:xxxxx@db/x"},
		{"host=db dbname=x", "host=db dbname=x"},
	} {
		if got := RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
