package store

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestAdmit(t *testing.T) {
	pool := func(n int) Use { return Use{Counter: "pool:p", Amount: n} }
	key := func(k string) Use { return Use{Counter: k, Amount: 1} }
	for _, tc := range []struct {
		name  string
		cands []Candidate
		room  map[string]int
		max   int
		want  []int64
	}{
		{"pool room", []Candidate{{1, []Use{pool(1)}}, {2, []Use{pool(1)}}, {3, []Use{pool(1)}}},
			map[string]int{"pool:p": 2}, 10, []int64{1, 2}},
		{"slots skip a big one", []Candidate{{1, []Use{pool(3)}}, {2, []Use{pool(1)}}},
			map[string]int{"pool:p": 2}, 10, []int64{2}},
		{"unlimited", []Candidate{{1, []Use{pool(5)}}, {2, []Use{pool(5)}}},
			map[string]int{"pool:p": -1}, 10, []int64{1, 2}},
		{"missing pool", []Candidate{{1, []Use{pool(1)}}, {2, nil}}, map[string]int{}, 10, []int64{2}},
		{"saturated key no head of line", []Candidate{{1, []Use{key("a")}}, {2, []Use{key("a")}}, {3, []Use{key("b")}}},
			map[string]int{"a": 1, "b": 1}, 10, []int64{1, 3}},
		{"all counters", []Candidate{{1, []Use{pool(1), key("a")}}, {2, []Use{pool(1), key("b")}}},
			map[string]int{"pool:p": 5, "a": 0, "b": 1}, 10, []int64{2}},
		{"max", []Candidate{{1, nil}, {2, nil}, {3, nil}}, nil, 2, []int64{1, 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tc.room)
			if got := Admit(tc.cands, tc.room, tc.max); !slices.Equal(got, tc.want) {
				t.Errorf("Admit = %v, want %v", got, tc.want)
			}
			if len(tc.room) != before {
				t.Errorf("Admit changed room")
			}
		})
	}
}

// TestAdmitProperty: whatever the candidates, what Admit takes stays
// within every room, and a candidate left out (while fewer than max were
// taken) did not fit in what was left when its turn came.
func TestAdmitProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	counters := []string{"pool:a", "pool:b", "k1", "k2", "k3"}
	for range 2000 {
		room := map[string]int{}
		for _, c := range counters {
			if rng.IntN(5) > 0 {
				room[c] = rng.IntN(4) - 1
			}
		}
		var cands []Candidate
		for i := range rng.IntN(12) {
			c := Candidate{ID: int64(i)}
			for _, name := range counters {
				if rng.IntN(3) == 0 {
					c.Counters = append(c.Counters, Use{Counter: name, Amount: 1 + rng.IntN(2)})
				}
			}
			cands = append(cands, c)
		}
		max := 1 + rng.IntN(8)
		got := Admit(cands, room, max)
		if len(got) > max {
			t.Fatalf("took %d > max %d", len(got), max)
		}
		used := map[string]int{}
		taken := map[int64]bool{}
		for _, id := range got {
			taken[id] = true
		}
		for _, c := range cands {
			fits := true
			for _, u := range c.Counters {
				r, ok := room[u.Counter]
				if !ok || (r >= 0 && used[u.Counter]+u.Amount > r) {
					fits = false
				}
			}
			if taken[c.ID] {
				if !fits {
					t.Fatalf("room %v: took %v beyond its room (used %v)", room, c, used)
				}
				for _, u := range c.Counters {
					used[u.Counter] += u.Amount
				}
			} else if fits && len(got) < max {
				t.Fatalf("room %v: left out %v though it fitted (used %v, took %v)", room, c, used, got)
			}
		}
	}
}
