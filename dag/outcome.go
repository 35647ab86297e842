package dag

import (
	"errors"
	"fmt"
)

// SkipError ends a task as skipped. Create it with Skip.
type SkipError struct{ Reason string }

func (e *SkipError) Error() string { return "skipped: " + e.Reason }

// Skip returns an error that ends the task as skipped, not failed.
func Skip(reason string) error { return &SkipError{Reason: reason} }

// PermanentError ends a task as failed with no further retries. Create it
// with Permanent.
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return fmt.Sprintf("permanent: %v", e.Err) }

// Unwrap returns the wrapped error.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so the task fails without further retries.
func Permanent(err error) error {
	if err == nil {
		err = errors.New("permanent failure")
	}
	return &PermanentError{Err: err}
}

// IsSkip reports whether err (or an error it wraps) is a Skip, with its reason.
func IsSkip(err error) (reason string, ok bool) {
	var s *SkipError
	if errors.As(err, &s) {
		return s.Reason, true
	}
	return "", false
}

// IsPermanent reports whether err (or an error it wraps) is Permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// ErrorText is err's message without the "permanent: " of a Permanent
// error at its top ("" for nil).
func ErrorText(err error) string {
	if err == nil {
		return ""
	}
	if p, ok := err.(*PermanentError); ok && p.Err != nil {
		return p.Err.Error()
	}
	return err.Error()
}
