package scheduler

import (
	"math/big"
	"time"

	"github.com/trellis-dag/trellis/store"
)

// Timetable is what interval computation needs from a parsed schedule;
// *dag.Timetable implements it.
type Timetable interface {
	// Next returns the first activation strictly after t, or the zero time
	// when there is none.
	Next(t time.Time) time.Time
	// Every returns the period of an "@every" schedule and 0 for cron
	// expressions and descriptors.
	Every() time.Duration
}

// Interval is a data interval [Start, End). Its run is due at End and its
// logical date is Start (Airflow's data-interval semantics).
type Interval struct {
	Start, End time.Time
}

// LogicalDate returns the logical date of the interval's run: its start.
func (iv Interval) LogicalDate() time.Time { return iv.Start }

// Policy is the part of a DAG's definition that bounds scheduling.
type Policy struct {
	// StartDate is the earliest instant an interval may start at; for
	// "@every d" it also anchors the grid of intervals
	// [StartDate + k·d, StartDate + (k+1)·d). Zero means none: only the
	// latest finished interval is scheduled at first, and @every intervals
	// are anchored at the Unix epoch.
	StartDate time.Time
	// EndDate, when set, ends scheduling: no interval starting after it
	// is scheduled (Airflow's rule; an interval starting at or before it
	// is scheduled even if it ends after it).
	EndDate time.Time
	// Catchup schedules every interval missed since the last one (true)
	// or only the latest one (false).
	Catchup bool
}

// RunID returns the run id Trellis gives a run of type t with the given
// logical date: "<type>__<logical date in RFC 3339, UTC>", e.g.
// "scheduled__2026-01-01T00:00:00Z". Fractions of a second are kept (and
// trailing zeros dropped) so that distinct logical dates never share an id.
func RunID(t store.RunType, logicalDate time.Time) string {
	return string(t) + "__" + logicalDate.UTC().Format(time.RFC3339Nano)
}

// Due returns the intervals whose runs are due at now, oldest first, and
// when the next run falls due (the zero time when the schedule has ended:
// past EndDate or no further activation).
//
// last is the end of the latest interval a run was created for (nil before
// the first). Cron intervals lie between consecutive activations, the first
// starting at the first activation at or after StartDate; "@every d"
// intervals lie on the grid StartDate + k·d. With Catchup every interval
// ending at or before now since last (or StartDate) is returned; without,
// only the latest one, if it is newer than last. An interval starting after
// EndDate is never returned.
//
// At most limit intervals are returned (limit ≤ 0 means no limit); when the
// cap cuts the list short, the returned next due instant is at or before
// now, telling the caller to come back at once for the rest.
func Due(tt Timetable, p Policy, last *time.Time, now time.Time, limit int) (intervals []Interval, nextDue time.Time) {
	g := newGrid(tt, p.StartDate)
	// The first candidate start is the latest of the bounds that apply;
	// a bound that is zero means the schedule has no activation left.
	var bounds []time.Time
	if !p.StartDate.IsZero() {
		bounds = append(bounds, g.alignNext(p.StartDate))
	}
	if last != nil {
		bounds = append(bounds, g.alignNext(*last))
	}
	if !p.Catchup || (p.StartDate.IsZero() && last == nil) {
		bounds = append(bounds, g.skipToLatest(now))
	}
	var start time.Time
	for _, b := range bounds {
		if b.IsZero() {
			return nil, time.Time{}
		}
		if b.After(start) {
			start = b
		}
	}
	for s := start; ; {
		if s.IsZero() || (!p.EndDate.IsZero() && s.After(p.EndDate)) {
			return intervals, time.Time{}
		}
		e := g.end(s)
		if e.IsZero() {
			return intervals, time.Time{}
		}
		if e.After(now) || (limit > 0 && len(intervals) == limit) {
			return intervals, e
		}
		intervals = append(intervals, Interval{Start: s, End: e})
		s = e
	}
}

// ManualInterval returns the data interval of a run triggered by hand with
// the given logical date, as Airflow infers it: the latest complete
// interval of the schedule ending at or before the logical date, or
// [logicalDate, logicalDate) for a DAG without schedule (tt == nil) or when
// no interval ended by then.
func ManualInterval(tt Timetable, p Policy, logicalDate time.Time) Interval {
	if tt == nil {
		return Interval{Start: logicalDate, End: logicalDate}
	}
	g := newGrid(tt, p.StartDate)
	if iv, ok := g.latestEnded(logicalDate); ok {
		return iv
	}
	return Interval{Start: logicalDate, End: logicalDate}
}

// Intervals returns the intervals whose start lies in [from, to], oldest
// first, stopping after limit of them (limit ≤ 0 means no limit); more
// reports whether the cap cut the list short. Backfill uses it.
func Intervals(tt Timetable, p Policy, from, to time.Time, limit int) (ivs []Interval, more bool) {
	g := newGrid(tt, p.StartDate)
	for s := g.alignNext(from); !s.IsZero() && !s.After(to); {
		e := g.end(s)
		if e.IsZero() {
			break
		}
		if limit > 0 && len(ivs) == limit {
			return ivs, true
		}
		ivs = append(ivs, Interval{Start: s, End: e})
		s = e
	}
	return ivs, false
}

// grid answers interval questions for one schedule: "@every" schedules
// arithmetically on the grid anchor + k·every, cron schedules through
// Next (and a bisection on Next for going backwards).
type grid struct {
	tt     Timetable
	every  time.Duration
	anchor time.Time
}

func newGrid(tt Timetable, startDate time.Time) grid {
	g := grid{tt: tt, every: tt.Every(), anchor: startDate}
	if g.anchor.IsZero() {
		g.anchor = time.Unix(0, 0).UTC()
	}
	return g
}

// alignNext returns the first interval start at or after t (zero: none).
func (g grid) alignNext(t time.Time) time.Time {
	if g.every > 0 {
		k, exact := g.steps(t)
		if !exact {
			k.Add(k, big.NewInt(1))
		}
		return g.at(k)
	}
	return g.tt.Next(t.Add(-time.Nanosecond))
}

// end returns the end of the interval starting at the activation s.
func (g grid) end(s time.Time) time.Time {
	if g.every > 0 {
		return s.Add(g.every)
	}
	return g.tt.Next(s)
}

// prevStart returns the last interval boundary at or before t (ok=false:
// none within the search horizon).
func (g grid) prevStart(t time.Time) (time.Time, bool) {
	if g.every > 0 {
		k, _ := g.steps(t)
		return g.at(k), true
	}
	return g.cronPrev(t)
}

// latestEnded returns the latest interval ending at or before t.
func (g grid) latestEnded(t time.Time) (Interval, bool) {
	end, ok := g.prevStart(t)
	if !ok {
		return Interval{}, false
	}
	if g.every > 0 {
		return Interval{Start: end.Add(-g.every), End: end}, true
	}
	start, ok := g.cronPrev(end.Add(-time.Nanosecond))
	if !ok {
		return Interval{}, false
	}
	return Interval{Start: start, End: end}, true
}

// skipToLatest is Airflow's bound for schedules without catchup: the start
// of the latest interval that ended at or before now; failing that, the
// start of the interval in progress; failing that, the first start after
// now.
func (g grid) skipToLatest(now time.Time) time.Time {
	if iv, ok := g.latestEnded(now); ok {
		return iv.Start
	}
	if s, ok := g.prevStart(now); ok {
		return s
	}
	return g.alignNext(now)
}

// horizon bounds how far back cronPrev looks for an activation (2^32 s,
// about 136 years).
const horizon = time.Duration(1<<32) * time.Second

// cronPrev returns the last activation at or before t. It widens a window
// [t−w, t] until it holds an activation and then bisects on Next, so the
// cost is logarithmic whatever the density of the schedule.
func (g grid) cronPrev(t time.Time) (time.Time, bool) {
	fires := func(from time.Time) bool { // an activation in (from, t]?
		n := g.tt.Next(from)
		return !n.IsZero() && !n.After(t)
	}
	var lo time.Time
	found := false
	for w := time.Second; w <= horizon && !found; w *= 2 {
		lo = t.Add(-w)
		found = fires(lo)
	}
	if !found {
		return time.Time{}, false
	}
	hi := t // invariant: fires(lo) && !fires(hi)
	for hi.Sub(lo) > time.Nanosecond {
		mid := lo.Add(hi.Sub(lo) / 2)
		if fires(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return g.tt.Next(lo), true
}

// steps returns k = floor((t − anchor) / every) and whether t lies exactly
// on the grid. Big integers keep it exact for any pair of dates.
func (g grid) steps(t time.Time) (*big.Int, bool) {
	diff := new(big.Int).Sub(nanos(t), nanos(g.anchor))
	k, m := new(big.Int).DivMod(diff, big.NewInt(int64(g.every)), new(big.Int))
	return k, m.Sign() == 0
}

// at returns anchor + k·every in the anchor's location.
func (g grid) at(k *big.Int) time.Time {
	n := new(big.Int).Mul(k, big.NewInt(int64(g.every)))
	n.Add(n, nanos(g.anchor))
	sec, ns := new(big.Int).DivMod(n, big.NewInt(int64(time.Second)), new(big.Int))
	return time.Unix(sec.Int64(), ns.Int64()).In(g.anchor.Location())
}

// nanos returns t as nanoseconds since the Unix epoch, without overflow.
func nanos(t time.Time) *big.Int {
	n := new(big.Int).Mul(big.NewInt(t.Unix()), big.NewInt(int64(time.Second)))
	return n.Add(n, big.NewInt(int64(t.Nanosecond())))
}
