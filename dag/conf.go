package dag

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
)

// ConfError says which member of a run's conf cannot be a param and why.
// It never repeats the value, which may be large or secret.
type ConfError struct {
	Path    string // e.g. conf.rows or conf.limits[2]
	Problem string
}

func (e *ConfError) Error() string { return e.Path + ": " + e.Problem }

// ParseConf decodes a run's conf into params: nil for an empty conf or
// JSON null, else a JSON object whose values arrive as JSON types (numbers
// as float64). A number a float64 cannot hold (e.g. 1e400, or an integer of
// 400 digits) is a *ConfError naming its path, so a conf the store accepts
// is one every task can read. The stored conf keeps its text as sent.
func ParseConf(conf []byte) (map[string]any, error) {
	t := bytes.TrimSpace(conf)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(t))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("conf is not valid JSON: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("conf is not valid JSON: data after its JSON value")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("conf must be a JSON object such as {\"key\": \"value\"}, got %s", jsonKind(v))
	}
	out, err := toParam(obj, "conf")
	if err != nil {
		return nil, err
	}
	return out.(map[string]any), nil
}

// toParam turns the json.Numbers of v into float64s, in place.
func toParam(v any, path string) (any, error) {
	switch x := v.(type) {
	case json.Number:
		f, err := strconv.ParseFloat(string(x), 64)
		if err != nil {
			return nil, &ConfError{Path: path, Problem: fmt.Sprintf(
				"the number (%d characters) is beyond the range of a 64-bit float, which params are read as", len(x))}
		}
		return f, nil
	case []any:
		for i, e := range x {
			p, err := toParam(e, path+"["+strconv.Itoa(i)+"]")
			if err != nil {
				return nil, err
			}
			x[i] = p
		}
	case map[string]any:
		for k, e := range x {
			p, err := toParam(e, memberPath(path, k))
			if err != nil {
				return nil, err
			}
			x[k] = p
		}
	}
	return v, nil
}

var plainKey = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// memberPath names member k of the object at path.
func memberPath(path, k string) string {
	if plainKey.MatchString(k) {
		return path + "." + k
	}
	return path + "[" + strconv.Quote(k) + "]"
}

func jsonKind(v any) string {
	switch v.(type) {
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number, float64:
		return "a number"
	case bool:
		return "a boolean"
	default:
		return fmt.Sprintf("%T", v)
	}
}
