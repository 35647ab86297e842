package clock

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// ParseDuration reads a duration as time.ParseDuration does, with two more
// units: d (24 hours) and w (7 days), e.g. "30d", "1w", "1d12h", "90m".
// Retention settings are written this way. Negative durations are refused.
func ParseDuration(s string) (time.Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return 0, fmt.Errorf("empty duration (want e.g. 30d, 12h, 1w)")
	}
	rest, total := in, time.Duration(0)
	// Leading day and week terms; the remainder is Go's syntax.
	for rest != "" {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9') {
			i++
		}
		if i == 0 || i == len(rest) || (rest[i] != 'd' && rest[i] != 'w') {
			break
		}
		n, err := strconv.ParseInt(rest[:i], 10, 64)
		unit := 24 * time.Hour
		if rest[i] == 'w' {
			unit *= 7
		}
		if err != nil || n > int64(time.Duration(1<<63-1)/unit) {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		total += time.Duration(n) * unit
		rest = rest[i+1:]
	}
	if rest != "" {
		d, err := time.ParseDuration(rest)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q (want e.g. 30d, 12h, 1w, 1d12h)", s)
		}
		if d < 0 {
			return 0, fmt.Errorf("duration %q is negative", s)
		}
		if total+d < total {
			return 0, fmt.Errorf("duration %q is too long", s)
		}
		total += d
	}
	return total, nil
}
