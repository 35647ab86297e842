package store

import (
	"slices"
	"testing"
)

func TestCapRuns(t *testing.T) {
	counts := map[int64]int{1: 5, 2: 5, 3: 20, 4: 1}
	for _, c := range []struct {
		ids  []int64
		max  int
		want []int64
	}{
		{[]int64{1, 2, 3, 4}, 10, []int64{1, 2}},
		{[]int64{1, 2, 3, 4}, 9, []int64{1}},
		{[]int64{3, 4}, 10, []int64{3}}, // the first run goes even when larger
		{[]int64{1, 2, 3, 4}, 100, []int64{1, 2, 3, 4}},
		{[]int64{4, 9}, 1, []int64{4, 9}}, // a run without instances adds none
		{nil, 5, nil},
	} {
		if got := CapRuns(c.ids, counts, c.max); !slices.Equal(got, c.want) {
			t.Errorf("CapRuns(%v, %d) = %v, want %v", c.ids, c.max, got, c.want)
		}
	}
}
