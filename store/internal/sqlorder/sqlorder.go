// Package sqlorder turns the order_by of a list query ("field" or
// "-field") into an ORDER BY clause through a whitelist of columns, for
// both SQL backends.
package sqlorder

import (
	"fmt"
	"slices"
	"strings"
)

// Order is what a list may be ordered by.
type Order struct {
	// Columns maps the names a caller may give to SQL expressions.
	Columns map[string]string
	// Default is the order when none is given, e.g. "-logical_date".
	Default string
	// Tie is a unique column that ends every order, in the same
	// direction, so pages are stable.
	Tie string
	// Nulls spells out where NULLs go: first ascending, last descending
	// (SQLite's default, which PostgreSQL needs to be told).
	Nulls bool
}

// Clause returns " ORDER BY …" for by ("" means Default), or an error
// naming the allowed fields.
func (o Order) Clause(by string) (string, error) {
	if by == "" {
		by = o.Default
	}
	dir, field := "ASC", by
	if strings.HasPrefix(by, "-") {
		dir, field = "DESC", by[1:]
	}
	col, ok := o.Columns[field]
	if !ok {
		names := make([]string, 0, len(o.Columns))
		for k := range o.Columns {
			names = append(names, k)
		}
		slices.Sort(names)
		return "", fmt.Errorf("cannot order by %q (want one of %s, with an optional leading -)", by, strings.Join(names, ", "))
	}
	clause := " ORDER BY " + col + " " + dir
	if o.Nulls {
		if dir == "ASC" {
			clause += " NULLS FIRST"
		} else {
			clause += " NULLS LAST"
		}
	}
	if col != o.Tie {
		clause += ", " + o.Tie + " " + dir
	}
	return clause, nil
}
