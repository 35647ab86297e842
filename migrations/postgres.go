package migrations

import "embed"

// Postgres holds the PostgreSQL migrations under the folder "postgres",
// named NNNNN_description.sql in goose's format. They create every table
// in the connection's current schema (the first entry of search_path), so
// one database can hold several independent Trellis installations.
//
//go:embed postgres/*.sql
var Postgres embed.FS
