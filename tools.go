//go:build tools

// Package tools pins dependencies that later packages use, so go mod tidy keeps them.
package tools

import (
	_ "github.com/getkin/kin-openapi/openapi3filter"
	_ "github.com/go-chi/chi/v5"
	_ "github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/pressly/goose/v3"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/robfig/cron/v3"
	_ "github.com/spf13/cobra"
	_ "gonum.org/v1/gonum/graph/topo"
	_ "modernc.org/sqlite"
)
