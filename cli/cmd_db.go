package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/trellis-dag/trellis/store"
)

func init() {
	addCommand("", func(*app) *cobra.Command {
		return groupCommand("db", "Manage the database",
			`Commands on the database named by --database-url (TRELLIS_DATABASE_URL).`)
	})
	addCommand("db", newDBMigrateCmd)
}

func newDBMigrateCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create or upgrade the database schema",
		Long: `Migrate applies the pending schema migrations to the database, creating the
tables on a new database. It is safe to run while other Trellis processes
use the database, and from several processes at once. "trellis serve",
"trellis scheduler" and "trellis worker" migrate on start-up as well.`,
		Example: `  trellis db migrate --database-url postgres://trellis@db:5432/trellis
  trellis db migrate --database-url sqlite:/var/lib/trellis/trellis.db`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := a.openStore(cmd.Context(), false)
			if err != nil {
				return err
			}
			defer st.Close()
			if err := st.Migrate(cmd.Context()); err != nil {
				return fmt.Errorf("migrate %s: %w", store.RedactURL(a.config.DatabaseURL), err)
			}
			fmt.Fprintf(a.stdout, "database %s (%s) is up to date\n", store.RedactURL(a.config.DatabaseURL), st.Backend())
			return nil
		},
	}
}
