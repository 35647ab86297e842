package dag

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/robfig/cron/v3"

	// Embed the IANA time zone database so CRON_TZ= works in minimal
	// containers that have no /usr/share/zoneinfo.
	_ "time/tzdata"
)

// Timetable is a parsed schedule expression: a cron spec, a descriptor or
// an @every interval, in a time zone. Create one with ParseSchedule; a
// DAG's comes from DAG.ParsedSchedule. A Timetable is immutable and safe for
// concurrent use. (The name is Airflow's; Schedule is the DAG option.)
type Timetable struct {
	expr  string
	loc   *time.Location
	every time.Duration      // > 0 for @every
	spec  *cron.SpecSchedule // nil for @every
	wall  *cron.SpecSchedule // spec reading wall-clock times held as UTC
}

// cronParser accepts 5 fields, 6 fields with leading seconds, and the
// named descriptors. Zones and @every are handled by ParseSchedule.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour |
	cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// descriptors lists the named schedules ParseSchedule accepts.
const descriptors = "@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly or @every <duration>"

// ParseSchedule parses a schedule expression:
//
//   - five cron fields "m h dom mon dow", e.g. "30 2 * * 1-5";
//   - six cron fields with leading seconds "s m h dom mon dow", e.g. "0 0 * * * *";
//   - a descriptor: @yearly (@annually), @monthly, @weekly, @daily
//     (@midnight), @hourly;
//   - "@every <Go duration>" with a positive duration, e.g. "@every 1h30m";
//
// each optionally preceded by "CRON_TZ=<IANA zone> " (or "TZ=<zone> "). The
// zone defaults to UTC, never to the machine's local zone. A cron spec that
// can never fire (e.g. "0 0 30 2 *") is an error. Errors name the
// expression and the reason.
func ParseSchedule(expr string) (s *Timetable, err error) {
	defer func() {
		// The cron parser has panicked on malformed input in the past;
		// a schedule expression must never bring the process down.
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("invalid schedule %q: parser failed: %v", expr, r)
		}
	}()
	loc, every, spec, err := parseSchedule(expr)
	if err != nil {
		return nil, fmt.Errorf("invalid schedule %q: %w", expr, err)
	}
	tt := &Timetable{expr: expr, loc: loc, every: every, spec: spec}
	if spec != nil {
		wall := *spec
		wall.Location = time.UTC
		tt.wall = &wall
	}
	return tt, nil
}

func parseSchedule(expr string) (*time.Location, time.Duration, *cron.SpecSchedule, error) {
	rest := strings.TrimSpace(expr)
	if rest == "" {
		return nil, 0, nil, errors.New("empty expression")
	}
	loc := time.UTC
	if zone, after, ok := cutZonePrefix(rest); ok {
		if zone == "" {
			return nil, 0, nil, errors.New("time zone prefix names no zone (want e.g. CRON_TZ=Europe/Paris 0 3 * * *)")
		}
		if after == "" {
			return nil, 0, nil, fmt.Errorf("nothing follows the time zone prefix %q", zone)
		}
		if _, _, again := cutZonePrefix(after); again {
			return nil, 0, nil, errors.New("more than one time zone prefix")
		}
		if zone == "Local" {
			return nil, 0, nil, errors.New(`time zone "Local" depends on the machine; name an IANA zone such as Europe/Paris`)
		}
		l, err := loadLocation(zone)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("unknown time zone %q (want an IANA name such as Europe/Paris)", zone)
		}
		loc, rest = l, after
	}

	if strings.Fields(rest)[0] == "@every" {
		d, err := parseEvery(strings.TrimSpace(rest[len("@every"):]))
		if err != nil {
			return nil, 0, nil, err
		}
		return loc, d, nil, nil
	}

	sched, err := cronParser.Parse(rest)
	if err != nil {
		if strings.HasPrefix(rest, "@") {
			return nil, 0, nil, fmt.Errorf("unknown descriptor %q (want %s)", rest, descriptors)
		}
		return nil, 0, nil, err
	}
	spec, ok := sched.(*cron.SpecSchedule)
	if !ok {
		return nil, 0, nil, fmt.Errorf("unexpected schedule type %T", sched)
	}
	spec.Location = loc
	// robfig/cron gives up after five years; a leap day fires within any
	// five years, so a zero answer means the spec never fires.
	if spec.Next(time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, 0, nil, errors.New("the expression never fires (no such date)")
	}
	return loc, 0, spec, nil
}

// zones caches loaded time zones: time.LoadLocation reads the zone
// database on every call.
var zones sync.Map // zone name -> *time.Location

func loadLocation(name string) (*time.Location, error) {
	if l, ok := zones.Load(name); ok {
		return l.(*time.Location), nil
	}
	l, err := time.LoadLocation(name)
	if err != nil {
		return nil, err
	}
	zones.Store(name, l)
	return l, nil
}

// cutZonePrefix splits "CRON_TZ=<zone> <rest>" or "TZ=<zone> <rest>".
func cutZonePrefix(s string) (zone, rest string, ok bool) {
	var after string
	switch {
	case strings.HasPrefix(s, "CRON_TZ="):
		after = s[len("CRON_TZ="):]
	case strings.HasPrefix(s, "TZ="):
		after = s[len("TZ="):]
	default:
		return "", "", false
	}
	i := strings.IndexFunc(after, unicode.IsSpace)
	if i < 0 {
		return after, "", true
	}
	return after[:i], strings.TrimSpace(after[i:]), true
}

func parseEvery(arg string) (time.Duration, error) {
	if arg == "" {
		return 0, errors.New("@every needs a duration, e.g. @every 1h30m")
	}
	d, err := time.ParseDuration(arg)
	if err != nil {
		return 0, fmt.Errorf("@every needs a Go duration such as 1h30m: %w", err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("@every needs a positive duration, got %s", arg)
	}
	return d, nil
}

// Next returns the first activation strictly after t, in t's location, or
// the zero time when there is none. For @every it is t plus the interval.
// Cron activations fall on whole seconds.
//
// Daylight saving time follows Airflow: an expression that fires in every
// hour (hour field "*") counts real hours, so it fires once per existing
// hour. Any other expression counts wall-clock time in its zone, so a
// daily or weekly run happens exactly once per day or week: a wall-clock
// time that occurs twice when clocks go back fires at its first
// occurrence only, and one skipped when clocks go forward fires at the
// instant the clocks jump.
func (s *Timetable) Next(t time.Time) time.Time {
	if s.every > 0 {
		return t.Add(s.every)
	}
	if s.spec == nil { // a zero Timetable, not made by ParseSchedule
		return time.Time{}
	}
	if s.loc == time.UTC || s.spec.Hour&allHours == allHours {
		return s.spec.Next(t)
	}
	// Find the next matching wall-clock time with the copy of the spec that
	// treats wall-clock readings as UTC, then place it in the zone.
	w := wallClock(t.In(s.loc))
	// Each round moves w strictly forward, and a wall-clock time after
	// t's reading plus the largest DST shift lies after t, so this ends;
	// the bound only guards against the unforeseen.
	for range 1 << 17 {
		w = s.wall.Next(w)
		if w.IsZero() {
			return time.Time{}
		}
		if n := placeWall(w, s.loc); n.After(t) {
			return n.In(t.Location())
		}
	}
	return time.Time{}
}

// allHours has the bits of hours 0-23 set, as in cron.SpecSchedule.Hour.
const allHours = 1<<24 - 1

// wallClock returns t's wall-clock reading as a UTC time.
func wallClock(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond(), time.UTC)
}

// placeWall returns the instant at which the clocks of loc read w (a
// wall-clock reading held as UTC): the first such instant when the
// reading occurs twice, and the instant the clocks jump forward when it
// falls into a gap.
func placeWall(w time.Time, loc *time.Location) time.Time {
	n := time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), w.Nanosecond(), loc)
	switch got := wallClock(n); {
	case got.Before(w): // in a gap, placed before it: the jump is the end of n's zone period
		_, end := n.ZoneBounds()
		return end
	case got.After(w): // in a gap, placed after it: the jump is the start of n's zone period
		start, _ := n.ZoneBounds()
		return start
	}
	// Occurs twice? Then n may be the second occurrence, just after the
	// clocks went back; the first lies one offset change earlier.
	start, _ := n.ZoneBounds()
	if start.IsZero() {
		return n
	}
	_, before := start.Add(-time.Nanosecond).Zone()
	_, now := n.Zone()
	if before > now {
		if c := n.Add(-time.Duration(before-now) * time.Second); c.Before(start) && wallClock(c.In(loc)).Equal(w) {
			return c
		}
	}
	return n
}

// Expr returns the expression as it was given to ParseSchedule.
func (s *Timetable) Expr() string { return s.expr }

// Location returns the schedule's time zone (UTC unless the expression
// names one).
func (s *Timetable) Location() *time.Location {
	if s.loc == nil {
		return time.UTC
	}
	return s.loc
}

// Every returns the interval of an @every schedule, 0 for cron specs and
// descriptors.
func (s *Timetable) Every() time.Duration { return s.every }

// String returns the expression.
func (s *Timetable) String() string { return s.expr }

// ParsedSchedule parses the DAG's schedule. It returns (nil, nil) for a
// DAG without schedule (manual runs only). The result is computed once.
func (d *DAG) ParsedSchedule() (*Timetable, error) {
	if d.schedule == "" {
		return nil, nil
	}
	d.parseOnce.Do(func() { d.parsed, d.parseErr = ParseSchedule(d.schedule) })
	return d.parsed, d.parseErr
}
