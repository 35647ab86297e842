package cli

import "testing"

func TestParseMemSize(t *testing.T) {
	for in, want := range map[string]int64{
		"": 0, "0": 0, "1024": 1024, "512MiB": 512 << 20, "512M": 512 << 20, "512mb": 512 << 20,
		"2GiB": 2 << 30, " 3 G ": 3 << 30, "64K": 64 << 10, "100B": 100, "1TiB": 1 << 40,
	} {
		if got, err := parseMemSize(in); err != nil || got != want {
			t.Errorf("parseMemSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"-1", "lots", "1.5G", "G", "9999999999999T", "12X"} {
		if _, err := parseMemSize(in); err == nil {
			t.Errorf("parseMemSize(%q) accepted", in)
		}
	}
}
