package dag

import (
	"strings"
	"testing"
	"time"
)

func utc(y int, mo time.Month, d, h, mi, s int) time.Time {
	return time.Date(y, mo, d, h, mi, s, 0, time.UTC)
}

func TestParseScheduleNext(t *testing.T) {
	tokyo, err := time.LoadLocation("Asia/Tokyo")
	if err != nil {
		t.Fatal(err)
	}
	// 2026-01-01 is a Thursday.
	tests := []struct {
		name  string
		expr  string
		from  time.Time
		want  []time.Time // successive activations
		zone  string
		every time.Duration
	}{
		{"5 fields daily", "0 0 * * *", utc(2026, 1, 1, 10, 30, 0),
			[]time.Time{utc(2026, 1, 2, 0, 0, 0), utc(2026, 1, 3, 0, 0, 0)}, "UTC", 0},
		{"5 fields step", "*/15 * * * *", utc(2026, 1, 1, 10, 7, 30),
			[]time.Time{utc(2026, 1, 1, 10, 15, 0), utc(2026, 1, 1, 10, 30, 0)}, "UTC", 0},
		{"5 fields weekdays from a Saturday", "30 2 * * 1-5", utc(2026, 1, 3, 12, 0, 0),
			[]time.Time{utc(2026, 1, 5, 2, 30, 0), utc(2026, 1, 6, 2, 30, 0)}, "UTC", 0},
		{"5 fields names", "0 12 1 jan,jul *", utc(2026, 1, 1, 12, 0, 0),
			[]time.Time{utc(2026, 7, 1, 12, 0, 0), utc(2027, 1, 1, 12, 0, 0)}, "UTC", 0},
		{"5 fields leap day", "0 0 29 2 *", utc(2026, 3, 1, 0, 0, 0),
			[]time.Time{utc(2028, 2, 29, 0, 0, 0), utc(2032, 2, 29, 0, 0, 0)}, "UTC", 0},
		{"6 fields hourly with seconds", "0 0 * * * *", utc(2026, 1, 1, 10, 30, 0),
			[]time.Time{utc(2026, 1, 1, 11, 0, 0), utc(2026, 1, 1, 12, 0, 0)}, "UTC", 0},
		{"6 fields every 10 seconds", "*/10 * * * * *", utc(2026, 1, 1, 10, 0, 5),
			[]time.Time{utc(2026, 1, 1, 10, 0, 10), utc(2026, 1, 1, 10, 0, 20)}, "UTC", 0},
		{"6 fields seconds set", "15 30 9 * * *", utc(2026, 1, 1, 9, 30, 15),
			[]time.Time{utc(2026, 1, 2, 9, 30, 15)}, "UTC", 0},
		{"strictly after an activation", "@daily", utc(2026, 1, 1, 0, 0, 0),
			[]time.Time{utc(2026, 1, 2, 0, 0, 0)}, "UTC", 0},
		{"strictly after, sub-second", "* * * * * *", utc(2026, 1, 1, 0, 0, 0).Add(500 * time.Millisecond),
			[]time.Time{utc(2026, 1, 1, 0, 0, 1), utc(2026, 1, 1, 0, 0, 2)}, "UTC", 0},
		{"@yearly", "@yearly", utc(2026, 3, 1, 0, 0, 0), []time.Time{utc(2027, 1, 1, 0, 0, 0)}, "UTC", 0},
		{"@annually", "@annually", utc(2026, 3, 1, 0, 0, 0), []time.Time{utc(2027, 1, 1, 0, 0, 0)}, "UTC", 0},
		{"@monthly", "@monthly", utc(2026, 3, 15, 0, 0, 0), []time.Time{utc(2026, 4, 1, 0, 0, 0), utc(2026, 5, 1, 0, 0, 0)}, "UTC", 0},
		{"@weekly (Sundays)", "@weekly", utc(2026, 1, 1, 10, 0, 0), []time.Time{utc(2026, 1, 4, 0, 0, 0), utc(2026, 1, 11, 0, 0, 0)}, "UTC", 0},
		{"@daily", "@daily", utc(2026, 1, 1, 10, 0, 0), []time.Time{utc(2026, 1, 2, 0, 0, 0)}, "UTC", 0},
		{"@midnight", "@midnight", utc(2026, 1, 1, 10, 0, 0), []time.Time{utc(2026, 1, 2, 0, 0, 0)}, "UTC", 0},
		{"@hourly", "@hourly", utc(2026, 1, 1, 10, 0, 1), []time.Time{utc(2026, 1, 1, 11, 0, 0)}, "UTC", 0},
		{"@every", "@every 1h30m", utc(2026, 1, 1, 10, 0, 0),
			[]time.Time{utc(2026, 1, 1, 11, 30, 0), utc(2026, 1, 1, 13, 0, 0)}, "UTC", 90 * time.Minute},
		{"@every sub-second keeps precision", "@every 1.5s", utc(2026, 1, 1, 10, 0, 0),
			[]time.Time{utc(2026, 1, 1, 10, 0, 1).Add(500 * time.Millisecond), utc(2026, 1, 1, 10, 0, 3)}, "UTC", 1500 * time.Millisecond},
		{"surrounding spaces", "  0 0 * * *  ", utc(2026, 1, 1, 10, 30, 0), []time.Time{utc(2026, 1, 2, 0, 0, 0)}, "UTC", 0},
		{"CRON_TZ winter", "CRON_TZ=America/New_York 0 9 * * *", utc(2026, 1, 1, 0, 0, 0),
			[]time.Time{utc(2026, 1, 1, 14, 0, 0)}, "America/New_York", 0},
		{"CRON_TZ summer", "CRON_TZ=America/New_York 0 9 * * *", utc(2026, 7, 1, 0, 0, 0),
			[]time.Time{utc(2026, 7, 1, 13, 0, 0)}, "America/New_York", 0},
		{"TZ prefix", "TZ=Asia/Tokyo 0 0 * * *", utc(2026, 1, 1, 0, 0, 0),
			[]time.Time{utc(2026, 1, 1, 15, 0, 0)}, "Asia/Tokyo", 0},
		{"CRON_TZ with descriptor", "CRON_TZ=Asia/Tokyo @daily", utc(2026, 1, 1, 0, 0, 0),
			[]time.Time{utc(2026, 1, 1, 15, 0, 0)}, "Asia/Tokyo", 0},
		{"CRON_TZ with @every", "CRON_TZ=Asia/Tokyo @every 10m", utc(2026, 1, 1, 0, 0, 0),
			[]time.Time{utc(2026, 1, 1, 0, 10, 0)}, "Asia/Tokyo", 10 * time.Minute},
		{"default zone is UTC, not the input's", "0 9 * * *", time.Date(2026, 1, 1, 0, 0, 0, 0, tokyo),
			[]time.Time{utc(2026, 1, 1, 9, 0, 0), utc(2026, 1, 2, 9, 0, 0)}, "UTC", 0},

		// Daylight saving time (America/New_York: 2026-03-08 02:00 EST -> 03:00 EDT,
		// 2026-11-01 02:00 EDT -> 01:00 EST).
		{"DST gap: skipped wall time fires at the jump", "CRON_TZ=America/New_York 30 2 * * *", utc(2026, 3, 7, 12, 0, 0),
			[]time.Time{utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 9, 6, 30, 0)}, "America/New_York", 0},
		{"DST gap: two skipped times fire once", "CRON_TZ=America/New_York 0,30 2 * * *", utc(2026, 3, 7, 12, 0, 0),
			[]time.Time{utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 9, 6, 0, 0)}, "America/New_York", 0},
		{"DST fold: repeated wall time fires once", "CRON_TZ=America/New_York 30 1 * * *", utc(2026, 10, 31, 12, 0, 0),
			[]time.Time{utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 2, 6, 30, 0)}, "America/New_York", 0},
		{"DST fold: from inside the second pass", "CRON_TZ=America/New_York 20,40 1 * * *", utc(2026, 11, 1, 6, 10, 0),
			[]time.Time{utc(2026, 11, 2, 6, 20, 0)}, "America/New_York", 0},
		{"DST fold: hourly counts real hours", "CRON_TZ=America/New_York 0 * * * *", utc(2026, 11, 1, 4, 30, 0),
			[]time.Time{utc(2026, 11, 1, 5, 0, 0), utc(2026, 11, 1, 6, 0, 0), utc(2026, 11, 1, 7, 0, 0)}, "America/New_York", 0},
		{"DST gap: hourly counts real hours", "CRON_TZ=America/New_York 0 * * * *", utc(2026, 3, 8, 6, 30, 0),
			[]time.Time{utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 8, 8, 0, 0)}, "America/New_York", 0},
		{"DST gap at midnight (Sao Paulo 2018)", "CRON_TZ=America/Sao_Paulo 0 0 * * *", utc(2018, 11, 3, 12, 0, 0),
			[]time.Time{utc(2018, 11, 4, 3, 0, 0), utc(2018, 11, 5, 2, 0, 0)}, "America/Sao_Paulo", 0},
		{"half-hour DST fold (Lord Howe)", "CRON_TZ=Australia/Lord_Howe 45 1 * * *", utc(2026, 4, 4, 12, 0, 0),
			[]time.Time{utc(2026, 4, 4, 14, 45, 0), utc(2026, 4, 5, 15, 15, 0)}, "Australia/Lord_Howe", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSchedule(tc.expr)
			if err != nil {
				t.Fatalf("ParseSchedule(%q): %v", tc.expr, err)
			}
			if s.Expr() != tc.expr || s.String() != tc.expr {
				t.Errorf("Expr() = %q, want %q", s.Expr(), tc.expr)
			}
			if got := s.Location().String(); got != tc.zone {
				t.Errorf("Location() = %s, want %s", got, tc.zone)
			}
			if s.Every() != tc.every {
				t.Errorf("Every() = %s, want %s", s.Every(), tc.every)
			}
			at := tc.from
			for i, want := range tc.want {
				got := s.Next(at)
				if !got.Equal(want) {
					t.Fatalf("activation %d after %s = %s, want %s", i+1, at, got.UTC(), want)
				}
				if got.Location() != at.Location() {
					t.Errorf("Next returned location %s, want the input's %s", got.Location(), at.Location())
				}
				at = got
			}
		})
	}
}

func TestParseScheduleErrors(t *testing.T) {
	tests := []struct {
		expr string
		want string // substring of the error after the quoted expression
	}{
		{"", "empty expression"},
		{"   ", "empty expression"},
		{"0 0 * *", "expected 5 to 6 fields, found 4"},
		{"* * * * * * *", "expected 5 to 6 fields, found 7"},
		{"61 * * * *", "end of range (61) above maximum (59)"},
		{"0 24 * * *", "end of range (24) above maximum (23)"},
		{"0 0 0 * *", "beginning of range (0) below minimum (1)"},
		{"0 0 * 13 *", "end of range (13) above maximum (12)"},
		{"0 0 * * 8", "end of range (8) above maximum (6)"},
		{"5-1 * * * *", "beginning of range (5) beyond end of range (1)"},
		{"*/0 * * * *", "step of range should be a positive number"},
		{"a b c d e", "failed to parse int from a"},
		{"1-2-3 * * * *", "too many hyphens"},
		{"0 0 30 2 *", "never fires"},
		{"@once", `unknown descriptor "@once"`},
		{"@DAILY", `unknown descriptor "@DAILY"`},
		{"@every", "@every needs a duration"},
		{"@every   ", "@every needs a duration"},
		{"@every banana", `time: invalid duration "banana"`},
		{"@every -5m", "positive duration, got -5m"},
		{"@every 0s", "positive duration, got 0s"},
		{"CRON_TZ=Mars/Olympus_Mons 0 0 * * *", `unknown time zone "Mars/Olympus_Mons"`},
		{"CRON_TZ=UTC", `nothing follows the time zone prefix "UTC"`},
		{"TZ=UTC", `nothing follows the time zone prefix "UTC"`},
		{"CRON_TZ= 0 0 * * *", "names no zone"},
		{"CRON_TZ=Local 0 0 * * *", `"Local" depends on the machine`},
		{"TZ=UTC TZ=UTC 0 0 * * *", "more than one time zone prefix"},
		{"CRON_TZ=UTC CRON_TZ=UTC", "more than one time zone prefix"},
		{"CRON_TZ=Europe/Paris 0 0 * *", "expected 5 to 6 fields, found 4"},
	}
	for _, tc := range tests {
		t.Run(tc.expr, func(t *testing.T) {
			s, err := ParseSchedule(tc.expr)
			if err == nil {
				t.Fatalf("ParseSchedule(%q) = %v, want an error containing %q", tc.expr, s, tc.want)
			}
			prefix := `invalid schedule "` + strings.ReplaceAll(tc.expr, `"`, `\"`) + `": `
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start with %q", err, prefix)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestDAGParsedSchedule(t *testing.T) {
	if s, err := New("manual").ParsedSchedule(); s != nil || err != nil {
		t.Fatalf("manual DAG: ParsedSchedule() = %v, %v; want nil, nil", s, err)
	}
	d := New("hourly", Schedule("@hourly"))
	s, err := d.ParsedSchedule()
	if err != nil || s == nil {
		t.Fatalf("ParsedSchedule() = %v, %v", s, err)
	}
	if again, _ := d.ParsedSchedule(); again != s {
		t.Error("ParsedSchedule() parsed again instead of reusing its result")
	}
	if got := s.Next(utc(2026, 1, 1, 0, 30, 0)); !got.Equal(utc(2026, 1, 1, 1, 0, 0)) {
		t.Errorf("Next = %s", got)
	}
	if _, err := New("bad", Schedule("nope")).ParsedSchedule(); err == nil ||
		!strings.Contains(err.Error(), `invalid schedule "nope"`) {
		t.Errorf("bad schedule: err = %v", err)
	}
}

// TestNextIsAfter walks a year of activations of zoned schedules and checks
// each is strictly after the previous one, across both DST changes.
func TestNextIsAfter(t *testing.T) {
	for _, expr := range []string{
		"CRON_TZ=Europe/Berlin 30 2 * * *",
		"CRON_TZ=Europe/Berlin 0 */2 * * *",
		"CRON_TZ=America/New_York */20 1-3 * * *",
		"CRON_TZ=Australia/Lord_Howe 15,45 1,2 * * *",
		"CRON_TZ=America/Santiago 0 0 * * *",
	} {
		s, err := ParseSchedule(expr)
		if err != nil {
			t.Fatal(err)
		}
		at := utc(2026, 1, 1, 0, 0, 0)
		end := utc(2027, 1, 1, 0, 0, 0)
		days := map[string]int{}
		for at.Before(end) {
			n := s.Next(at)
			if !n.After(at) {
				t.Fatalf("%s: Next(%s) = %s, not after", expr, at, n)
			}
			days[n.In(s.Location()).Format(time.DateOnly)]++
			at = n
		}
		if strings.HasSuffix(expr, " 2 * * *") || strings.HasSuffix(expr, " 0 * * *") {
			for day, n := range days {
				if n != 1 {
					t.Errorf("%s: %d activations on %s, want 1", expr, n, day)
				}
			}
			if len(days) < 365 {
				t.Errorf("%s: activations on %d days of 2026, want every day", expr, len(days))
			}
		}
	}
}

func TestZeroTimetable(t *testing.T) {
	var tt Timetable
	if !tt.Next(jan1).IsZero() || tt.Location() != time.UTC || tt.Every() != 0 || tt.Expr() != "" {
		t.Error("a zero Timetable must fire never, in UTC")
	}
}
