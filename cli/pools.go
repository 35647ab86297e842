package cli

import (
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// poolFlags size default_pool.
type poolFlags struct {
	defaultSlots int
	// slots is defaultSlots when the flag was given, else nil (keep the
	// stored size).
	slots *int
}

func (f *poolFlags) add(fs *pflag.FlagSet) {
	fs.IntVar(&f.defaultSlots, "default-pool-slots", -1,
		"size default_pool at start-up (-1 = unlimited); unset, the stored size (which the API may change) is kept")
}

func (f *poolFlags) resolve(cmd *cobra.Command) error {
	if !cmd.Flags().Changed("default-pool-slots") {
		return nil
	}
	if f.defaultSlots < -1 {
		return usagef("--default-pool-slots must be -1 (unlimited) or at least 0, got %d", f.defaultSlots)
	}
	f.slots = &f.defaultSlots
	return nil
}
