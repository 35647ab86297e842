package api

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/trellis-dag/trellis/dag"
	"github.com/trellis-dag/trellis/state"
	"github.com/trellis-dag/trellis/store"
)

// Task instance lists are the API's hottest answers (clients poll them),
// so they are written by hand instead of through encoding/json's
// reflection: appendTaskInstance writes exactly what json.Marshal writes
// for toTaskInstance's taskInstanceJSON (a test checks the two agree).

// appendString appends s as a JSON string, escaped as encoding/json does
// (HTML-safe).
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= utf8.RuneSelf || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			data, _ := json.Marshal(s) // a string: cannot fail
			return append(b, data...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = appendTimeText(b, t)
	return append(b, '"')
}

// appendTimeText appends t in UTC as timeLayout formats it
// (2006-01-02T15:04:05.999999-07:00), without time.Format's layout
// interpretation, which dominates the cost of a task instance list.
func appendTimeText(b []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, timeLayout)
	}
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	if us := t.Nanosecond() / 1000; us > 0 {
		n := 6
		for us%10 == 0 {
			us /= 10
			n--
		}
		b = append(b, '.')
		b = appendDigits(b, us, n)
	}
	return append(b, "+00:00"...)
}

// appendDigits appends v (≥ 0) in decimal, zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	var buf [20]byte
	i := len(buf)
	for v > 0 || width > 0 {
		i--
		buf[i] = byte('0' + v%10)
		v /= 10
		width--
	}
	return append(b, buf[i:]...)
}

func appendTimePtr(b []byte, t *time.Time) []byte {
	if t == nil || t.IsZero() {
		return append(b, "null"...)
	}
	return appendTime(b, *t)
}

// seconds is a duration in seconds, written with microsecond precision.
type seconds float64

// MarshalJSON writes the number as appendSeconds does.
func (s seconds) MarshalJSON() ([]byte, error) { return appendSeconds(nil, float64(s)), nil }

func durationSeconds(d time.Duration) seconds { return seconds(d.Round(time.Microsecond).Seconds()) }

// appendSeconds writes f in plain decimal notation, as short as it reads
// back exactly (durations are far from the exponent range).
func appendSeconds(b []byte, f float64) []byte { return strconv.AppendFloat(b, f, 'f', -1, 64) }

// appendTaskInstance appends the JSON of toTaskInstance(ti, logicalDate, kind).
func appendTaskInstance(b []byte, ti store.TaskInstance, logicalDate time.Time, kind dag.Kind) []byte {
	b = append(b, `{"task_id":`...)
	b = appendString(b, ti.TaskID)
	b = append(b, `,"task_display_name":`...)
	b = appendString(b, ti.TaskID)
	b = append(b, `,"dag_id":`...)
	b = appendString(b, ti.DAGID)
	b = append(b, `,"dag_run_id":`...)
	b = appendString(b, ti.DAGRunID)
	b = append(b, `,"execution_date":`...)
	b = appendTime(b, logicalDate)
	b = append(b, `,"start_date":`...)
	b = appendTimePtr(b, ti.StartedAt)
	b = append(b, `,"end_date":`...)
	b = appendTimePtr(b, ti.EndedAt)
	b = append(b, `,"duration":`...)
	if ti.StartedAt != nil && ti.EndedAt != nil {
		b = appendSeconds(b, float64(durationSeconds(ti.Duration())))
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"state":`...)
	if ti.State == state.None || ti.State == "" {
		b = append(b, "null"...)
	} else {
		b = appendString(b, string(ti.State))
	}
	b = append(b, `,"try_number":`...)
	b = strconv.AppendInt(b, int64(ti.TryNumber), 10)
	b = append(b, `,"map_index":`...)
	b = strconv.AppendInt(b, int64(ti.MapIndex), 10)
	b = append(b, `,"max_tries":`...)
	b = strconv.AppendInt(b, int64(max(ti.MaxTries-1, 0)), 10)
	b = append(b, `,"hostname":`...)
	b = appendString(b, ti.Hostname)
	b = append(b, `,"unixname":"","pool":`...)
	b = appendString(b, poolOf(ti))
	b = append(b, `,"pool_slots":`...)
	b = strconv.AppendInt(b, int64(max(ti.PoolSlots, 1)), 10)
	b = append(b, `,"queue":"`+defaultQueue+`","priority_weight":`...)
	b = strconv.AppendInt(b, int64(ti.Priority), 10)
	b = append(b, `,"operator":`...)
	if kind != "" {
		b = appendString(b, operatorName(kind))
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"queued_when":`...)
	b = appendTimePtr(b, ti.QueuedAt)
	b = append(b, `,"pid":`...)
	if ti.PID > 0 {
		b = strconv.AppendInt(b, int64(ti.PID), 10)
	} else {
		b = append(b, "null"...)
	}
	b = append(b, `,"executor":null,"executor_config":"{}","sla_miss":null,"rendered_map_index":null,`+
		`"rendered_fields":{},"trigger":null,"triggerer_job":null,"note":null`...)
	if ti.State == state.Deferred {
		if ti.TriggerTimeout != nil && !ti.TriggerTimeout.IsZero() {
			b = append(b, `,"trigger_timeout":`...)
			b = appendTime(b, *ti.TriggerTimeout)
		}
		if ti.NextCheckAt != nil && !ti.NextCheckAt.IsZero() {
			b = append(b, `,"next_check_at":`...)
			b = appendTime(b, *ti.NextCheckAt)
		}
		if ti.WaitEvent != "" {
			b = append(b, `,"wait_event":`...)
			b = appendString(b, ti.WaitEvent)
		}
	}
	if ti.MapIndex >= 0 && len(ti.Arguments) > 0 {
		b = append(b, `,"arguments":`...)
		b = append(b, ti.Arguments...)
	}
	if ti.MapIndex >= 0 && ti.State == state.Success && len(ti.Output) > 0 {
		b = append(b, `,"result":`...)
		b = append(b, ti.Output...)
	}
	if ti.State == state.Deferred {
		b = append(b, `,"waiting_on":`...)
		b = strconv.AppendInt(b, int64(ti.WaitingOn), 10)
	}
	return append(b, '}')
}
