package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/trellis-dag/trellis/dag"
)

// MaxBodyBytes is the largest request body the API reads; larger bodies are
// answered with 413.
const MaxBodyBytes = 1 << 20

// body is a decoded JSON request object: its members, raw, by name.
type body map[string]json.RawMessage

// decodeBody reads the request body as one JSON object whose member names
// are all in allowed; readOnly names fields of the resource that a client
// may not set. Anything else is a 400 naming the problem (413 over
// MaxBodyBytes).
func decodeBody(r *http.Request, allowed []string, readOnly []string) (body, error) {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, tooLarge()
		}
		return nil, badRequest("reading the request body: %v", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, badRequest("the request body is empty; send a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return nil, badRequest("the request body is not valid JSON: %s", jsonErrText(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, badRequest("the request body has data after its JSON value")
	}
	if t := bytes.TrimSpace(raw); len(t) == 0 || t[0] != '{' {
		return nil, badRequest("the request body must be a JSON object")
	}
	var b body
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, badRequest("the request body is not a valid JSON object: %s", jsonErrText(err))
	}
	var unknown []string
	for name := range b {
		switch {
		case slices.Contains(allowed, name):
		case slices.Contains(readOnly, name):
			return nil, badRequest("field %q is read-only and cannot be set", name)
		default:
			unknown = append(unknown, name)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, badRequest("unknown field(s) %s; accepted fields: %s",
			quoteList(unknown), strings.Join(allowed, ", "))
	}
	return b, nil
}

func tooLarge() error {
	return &apiError{status: http.StatusRequestEntityTooLarge,
		detail: "the request body is larger than " + strconv.Itoa(MaxBodyBytes) + " bytes"}
}

func jsonErrText(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return se.Error() + " at byte " + strconv.FormatInt(se.Offset, 10)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

func quoteList(names []string) string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = strconv.Quote(n)
	}
	return strings.Join(q, ", ")
}

func isNull(m json.RawMessage) bool { return string(bytes.TrimSpace(m)) == "null" }

// jsonKind names the JSON type of a raw value for error messages.
func jsonKind(m json.RawMessage) string {
	t := bytes.TrimSpace(m)
	if len(t) == 0 {
		return "nothing"
	}
	switch t[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	}
	return "a number"
}

// boolField returns the boolean member name, or def when absent. null is a
// wrong type, as in Airflow's schemas.
func (b body) boolField(name string, def bool) (bool, error) {
	m, ok := b[name]
	if !ok {
		return def, nil
	}
	var v bool
	if isNull(m) || json.Unmarshal(m, &v) != nil {
		return false, badRequest("field %q must be a boolean, got %s", name, jsonKind(m))
	}
	return v, nil
}

// stringField returns the string member name; ok is false when it is absent
// or, with nullable, null.
func (b body) stringField(name string, nullable bool) (s string, ok bool, err error) {
	m, present := b[name]
	if !present {
		return "", false, nil
	}
	if isNull(m) {
		if nullable {
			return "", false, nil
		}
		return "", false, badRequest("field %q must be a string, got null", name)
	}
	if json.Unmarshal(m, &s) != nil {
		return "", false, badRequest("field %q must be a string, got %s", name, jsonKind(m))
	}
	return s, true, nil
}

// stringsField returns the array of strings member name (nil when absent).
func (b body) stringsField(name string) ([]string, error) {
	m, ok := b[name]
	if !ok {
		return nil, nil
	}
	var v []string
	if isNull(m) || json.Unmarshal(m, &v) != nil {
		return nil, badRequest("field %q must be an array of strings, got %s", name, jsonKind(m))
	}
	return v, nil
}

// timeField returns the date-time member name (nil when absent or, with
// nullable, null).
func (b body) timeField(name string, nullable bool) (*time.Time, error) {
	m, ok := b[name]
	if !ok || (nullable && isNull(m)) {
		return nil, nil
	}
	var s string
	if isNull(m) || json.Unmarshal(m, &s) != nil {
		return nil, badRequest("field %q must be a date-time string, got %s", name, jsonKind(m))
	}
	t, err := parseTime(s)
	if err != nil {
		return nil, badRequest("field %q: %v", name, err)
	}
	return &t, nil
}

// intField returns the integer member name, or def when absent.
func (b body) intField(name string, def int) (int, error) {
	m, ok := b[name]
	if !ok {
		return def, nil
	}
	var v int
	if isNull(m) || json.Unmarshal(m, &v) != nil {
		return 0, badRequest("field %q must be an integer, got %s", name, jsonKind(m))
	}
	return v, nil
}

// numberField returns the number member name (nil when absent).
func (b body) numberField(name string) (*float64, error) {
	m, ok := b[name]
	if !ok {
		return nil, nil
	}
	var v float64
	if isNull(m) || json.Unmarshal(m, &v) != nil {
		return nil, badRequest("field %q must be a number, got %s", name, jsonKind(m))
	}
	return &v, nil
}

// timeLayouts are the date-time forms the API accepts: RFC 3339 with or
// without fractional seconds, and, read as UTC, a date-time without zone
// or a plain date.
var timeLayouts = []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999", "2006-01-02T15:04:05", "2006-01-02"}

// parseTime parses a date-time as Airflow accepts it, in UTC, truncated
// to microseconds (the precision the stores and Airflow keep). Years out of
// 1…9999 (in UTC) are refused.
func parseTime(s string) (time.Time, error) {
	for _, layout := range timeLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			t = t.UTC().Truncate(time.Microsecond)
			if t.Year() < 1 || t.Year() > 9999 {
				return time.Time{}, errors.New("date-time " + strconv.Quote(s) + " is out of range (years 1 to 9999 in UTC)")
			}
			return t, nil
		}
	}
	return time.Time{}, errors.New("invalid date-time " + strconv.Quote(s) + " (want RFC 3339, e.g. 2026-01-02T15:04:05Z)")
}

// query reads the query parameters of a request.
type query struct{ v url.Values }

func (q query) has(name string) bool { _, ok := q.v[name]; return ok }

// one returns the single value of name; repeating it is an error.
func (q query) one(name string) (string, bool, error) {
	vs, ok := q.v[name]
	if !ok {
		return "", false, nil
	}
	if len(vs) != 1 {
		return "", false, badRequest("query parameter %q is given %d times; give it once", name, len(vs))
	}
	return vs[0], true, nil
}

// list returns the values of an array parameter: repeated and/or
// comma-separated.
func (q query) list(name string) []string {
	var out []string
	for _, v := range q.v[name] {
		for _, part := range strings.Split(v, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

func (q query) boolean(name string) (*bool, error) {
	s, ok, err := q.one(name)
	if err != nil || !ok {
		return nil, err
	}
	b, perr := strconv.ParseBool(s)
	if perr != nil {
		return nil, badRequest("query parameter %q must be true or false, got %q", name, s)
	}
	return &b, nil
}

func (q query) integer(name string) (*int, error) {
	s, ok, err := q.one(name)
	if err != nil || !ok {
		return nil, err
	}
	n, perr := strconv.Atoi(s)
	if perr != nil {
		return nil, badRequest("query parameter %q must be an integer, got %q", name, s)
	}
	return &n, nil
}

func (q query) number(name string) (*float64, error) {
	s, ok, err := q.one(name)
	if err != nil || !ok {
		return nil, err
	}
	f, perr := strconv.ParseFloat(s, 64)
	if perr != nil {
		return nil, badRequest("query parameter %q must be a number, got %q", name, s)
	}
	return &f, nil
}

// time parses a date-time parameter. A '+' of a zone offset that arrived
// decoded as a space (an unescaped '+' in a query string) is put back.
func (q query) time(name string) (*time.Time, error) {
	s, ok, err := q.one(name)
	if err != nil || !ok {
		return nil, err
	}
	t, perr := parseTime(s)
	if perr != nil && strings.Contains(s, " ") {
		t, perr = parseTime(strings.ReplaceAll(s, " ", "+"))
	}
	if perr != nil {
		return nil, badRequest("query parameter %q: %v", name, perr)
	}
	return &t, nil
}

// page is a validated limit and offset.
type page struct{ limit, offset int }

// pageParams reads limit and offset as Airflow does: no limit or 0 is
// defaultLimit, a limit above max is max (both capped at max), a negative
// one an error; offset ≥ 0.
func pageParams(q query, defaultLimit, max int) (page, error) {
	p := page{limit: min(defaultLimit, max)}
	l, err := q.integer("limit")
	if err != nil {
		return p, err
	}
	switch {
	case l == nil || *l == 0:
	case *l < 0:
		return p, badRequest("limit must not be negative, got %d", *l)
	default:
		p.limit = min(*l, max)
	}
	o, err := q.integer("offset")
	if err != nil {
		return p, err
	}
	if o != nil {
		p.offset = *o
	}
	return p, checkPage(p, "limit", "offset", max)
}

func checkPage(p page, limitName, offsetName string, max int) error {
	if p.limit < 1 || p.limit > max {
		return badRequest("%s must be between 1 and %d, got %d", limitName, max, p.limit)
	}
	if p.offset < 0 {
		return badRequest("%s must not be negative, got %d", offsetName, p.offset)
	}
	return nil
}

// pathParam returns the URL path parameter name, percent-decoded. chi
// routes on the escaped path when the request has one, so its parameters
// are then still escaped.
//
// Ids that cannot exist are answered 404 here, before they reach the
// store: DAG and task ids must match dag.IDPattern (dag_id may also be ~),
// run ids must be text the store can hold.
func pathParam(r *http.Request, name string) (string, error) {
	v := chi.URLParam(r, name)
	if r.URL.RawPath != "" {
		u, err := url.PathUnescape(v)
		if err != nil {
			return "", badRequest("path parameter %s: bad percent-encoding in %q", name, v)
		}
		v = u
	}
	switch name {
	case "dag_id":
		if v != "~" && !validDAGID(v) {
			return "", dagNotFound(v)
		}
	case "task_id":
		if !dag.ValidID(v) {
			return "", notFound("Task not found", "Task with task_id: '%s' not found", v)
		}
	case "dag_run_id":
		if v != "~" && !validRunID(v) {
			return "", notFound("DAGRun not found", "DagRun ID: '%s' not found", v)
		}
	}
	return v, nil
}

// runIDPattern is what a dag_run_id given by a client must match: it
// appears in URL paths, so no '/', and no characters that need quoting.
var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9_.~:+-]{1,250}$`)

// returnFields reads Airflow's "fields" parameter: the members to return,
// each one of allowed. nil means all.
func returnFields(q query, allowed []string) ([]string, error) {
	fields := q.list("fields")
	for _, f := range fields {
		if !slices.Contains(allowed, f) {
			return nil, badRequest("unknown field %q in query parameter \"fields\"", f)
		}
	}
	return fields, nil
}

// project returns v with only the members named in fields (all when
// fields is nil).
func project(v any, fields []string) (any, error) {
	if len(fields) == 0 {
		return v, nil
	}
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var all map[string]json.RawMessage
	if err := json.Unmarshal(data, &all); err != nil {
		return nil, err
	}
	out := make(map[string]json.RawMessage, len(fields))
	for _, f := range fields {
		if m, ok := all[f]; ok {
			out[f] = m
		}
	}
	return out, nil
}

func sortedStrings(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// Stores keep text without NUL characters (PostgreSQL refuses them), so
// text that reaches the store is checked first.

// checkText returns a 400 when s, the value of what, holds a NUL or is
// not valid UTF-8.
func checkText(what, s string) error {
	if strings.IndexByte(s, 0) >= 0 {
		return badRequest("%s must not contain NUL characters", what)
	}
	if !utf8.ValidString(s) {
		return badRequest("%s is not valid UTF-8", what)
	}
	return nil
}

// checkJSONText returns a 400 when a string or member name inside the
// JSON value m holds a NUL.
func checkJSONText(what string, m json.RawMessage) error {
	if !bytes.Contains(m, []byte(`\u0000`)) {
		return nil // a NUL can only be written as an escape
	}
	var v any
	if err := json.Unmarshal(m, &v); err != nil {
		return badRequest("%s is not valid JSON", what)
	}
	var walk func(v any) bool
	walk = func(v any) bool {
		switch x := v.(type) {
		case string:
			return strings.IndexByte(x, 0) < 0
		case []any:
			for _, e := range x {
				if !walk(e) {
					return false
				}
			}
		case map[string]any:
			for k, e := range x {
				if strings.IndexByte(k, 0) >= 0 || !walk(e) {
					return false
				}
			}
		}
		return true
	}
	if !walk(v) {
		return badRequest("%s must not contain NUL characters (\\u0000)", what)
	}
	return nil
}

// idsField returns the array of ids member name (nil when absent), each
// checked by valid; kind names the ids in errors ("DAG id").
func (b body) idsField(name, kind string, valid func(string) bool) ([]string, error) {
	ids, err := b.stringsField(name)
	if err != nil {
		return nil, err
	}
	for i, id := range ids {
		if !valid(id) {
			return nil, badRequest("%s[%d] %q is not a valid %s", name, i, id, kind)
		}
	}
	return ids, nil
}

// validRunID reports whether a run id can be looked up: any text the
// store can hold.
func validRunID(id string) bool { return checkText("", id) == nil && id != "" }

// validDAGID and validTaskID report whether an id can exist (dag.ValidID).
func validDAGID(id string) bool { return dag.ValidID(id) }

// bodyPage reads and checks page_limit and page_offset of a batch list
// form (Airflow's ListDagRunsForm and ListTaskInstanceForm).
func (a *api) bodyPage(b body) (page, error) {
	var p page
	var err error
	if p.limit, err = b.intField("page_limit", min(a.defLimit, a.maxLimit)); err != nil {
		return p, err
	}
	if p.offset, err = b.intField("page_offset", 0); err != nil {
		return p, err
	}
	return p, checkPage(p, "page_limit", "page_offset", a.maxLimit)
}
