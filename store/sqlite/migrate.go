package sqlite

import (
	"context"
	"fmt"
	"io/fs"

	"github.com/pressly/goose/v3"

	"github.com/trellis-dag/trellis/migrations"
)

// Migrate applies the pending migrations of migrations.SQLite with goose
// (version table goose_db_version). Two processes migrating one file at
// once are serialised by the write lock (<path>.lock), held for the whole
// run, so the second one finds nothing left to do.
func (s *Store) Migrate(ctx context.Context) error {
	fsys, err := fs.Sub(migrations.SQLite, "sqlite")
	if err != nil {
		return fmt.Errorf("migrate sqlite %q: %w", s.path, err)
	}
	// The lock is taken before goose takes the writer connection: a
	// writer of this process waits for the lock without holding the
	// connection goose needs.
	if err := s.wlock.acquire(ctx, 0); err != nil {
		return fmt.Errorf("migrate sqlite %q: wait for the write lock: %w", s.path, err)
	}
	defer s.wlock.release()
	p, err := goose.NewProvider(goose.DialectSQLite3, s.wdb, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("migrate sqlite %q: %w", s.path, err)
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate sqlite %q: %w", s.path, mapErr(err))
	}
	for _, r := range results {
		s.log.Info("applied migration", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}
