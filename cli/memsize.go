package cli

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// memSize is a flag value of bytes written as a number with an optional
// binary unit: 536870912, 512MiB, 512M, 2GiB, 2G. Empty or 0 = no limit.
type memSize int64

func (m *memSize) String() string {
	if *m == 0 {
		return ""
	}
	return strconv.FormatInt(int64(*m), 10)
}

func (m *memSize) Type() string { return "size" }

func (m *memSize) Set(s string) error {
	v, err := parseMemSize(s)
	if err != nil {
		return err
	}
	*m = memSize(v)
	return nil
}

// parseMemSize reads a size such as 512MiB (units K, M, G, T with an
// optional "iB" or "B" are powers of 1024).
func parseMemSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, nil
	}
	upper := strings.ToUpper(t)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40}} {
		for _, form := range []string{u.suffix + "IB", u.suffix + "B", u.suffix} {
			if strings.HasSuffix(upper, form) {
				upper, mult = strings.TrimSuffix(upper, form), u.mult
				goto parsed
			}
		}
	}
	upper = strings.TrimSuffix(upper, "B")
parsed:
	n, err := strconv.ParseInt(strings.TrimSpace(upper), 10, 64)
	if err != nil || n < 0 || n > math.MaxInt64/mult {
		return 0, fmt.Errorf("%q is not a memory size such as 512MiB or 2GiB", s)
	}
	return n * mult, nil
}
