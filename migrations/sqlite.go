// Package migrations embeds the numbered SQL migrations of every store
// backend. The files are applied with pressly/goose by the backends'
// Migrate methods (`trellis db migrate` and start-up).
package migrations

import "embed"

// SQLite holds the SQLite migrations under the folder "sqlite", named
// NNNNN_description.sql in goose's format.
//
//go:embed sqlite/*.sql
var SQLite embed.FS
