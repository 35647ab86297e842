package clock

import (
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	day := 24 * time.Hour
	for in, want := range map[string]time.Duration{
		"30d": 30 * day, "1w": 7 * day, "1d12h": day + 12*time.Hour, "2w3d": 17 * day, "90m": 90 * time.Minute,
		"0": 0, "0d": 0, " 7d ": 7 * day, "1.5h": 90 * time.Minute,
	} {
		got, err := ParseDuration(in)
		if err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for in, msg := range map[string]string{
		"": "empty", "d": "invalid", "30x": "invalid", "-1h": "negative", "1d-1h": "negative",
		"30 days": "invalid", "999999999999d": "too long", "100000w": "too long",
	} {
		if _, err := ParseDuration(in); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("ParseDuration(%q) error %v, want %q", in, err, msg)
		}
	}
}
