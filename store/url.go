package store

import (
	"net/url"
	"strings"
)

// RedactURL hides the password of a database URL, for messages and logs.
// A URL that does not parse still has any "user:password@" part masked.
func RedactURL(raw string) string {
	if p, err := url.Parse(raw); err == nil && p.User != nil {
		return p.Redacted()
	}
	if at, sch := strings.LastIndex(raw, "@"), strings.Index(raw, "://"); at > sch && sch >= 0 {
		if i := strings.Index(raw[sch+3:at], ":"); i >= 0 {
			return raw[:sch+3+i] + ":xxxxx" + raw[at:]
		}
	}
	return raw
}
