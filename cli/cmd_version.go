package cli

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

func init() { addCommand("", newVersionCmd) }

// version is the release version, set at link time with
// -ldflags "-X github.com/trellis-dag/trellis/cli.version=v1.2.3". When
// empty, the version of the Trellis module from the build info is used:
// the main module's when this is Trellis's own build, the dependency's in
// a binary of another module ("dev" for a build of a working tree).
var version string

// modulePath is the Trellis module, whose version a binary of another
// module reports.
const modulePath = "github.com/trellis-dag/trellis"

// buildInfo is what `trellis version` reports.
type buildInfo struct {
	Version      string `json:"version"`
	GoVersion    string `json:"go_version"`
	Platform     string `json:"platform"`
	Revision     string `json:"revision,omitempty"`
	RevisionTime string `json:"revision_time,omitempty"`
	Modified     bool   `json:"modified,omitempty"`
}

// readBuildInfo gathers the version and VCS stamp of this binary.
func readBuildInfo() buildInfo {
	bi := buildInfo{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if ok {
		if bi.Version == "" {
			bi.Version = moduleVersion(info)
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				bi.Revision = s.Value
			case "vcs.time":
				bi.RevisionTime = s.Value
			case "vcs.modified":
				bi.Modified = s.Value == "true"
			}
		}
	}
	if bi.Version == "" {
		bi.Version = "dev"
	}
	return bi
}

// moduleVersion returns the version of the Trellis module in info, or ""
// for a working tree or a replaced module.
func moduleVersion(info *debug.BuildInfo) string {
	m := &info.Main
	if info.Main.Path != modulePath {
		m = nil
		for _, d := range info.Deps {
			if d.Path == modulePath && d.Replace == nil {
				m = d
			}
		}
	}
	if m == nil || m.Version == "" || m.Version == "(devel)" {
		return ""
	}
	return m.Version
}

func newVersionCmd(a *app) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, Go version and VCS revision of this binary",
		Long: `Print the version of this trellis binary, the Go version it was built
with, and the version-control revision, its time and whether the working tree
had local modifications, as stamped by the Go toolchain (go build stamps
them; go run and go test do not).`,
		Example: `  trellis version
  trellis version --json`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			bi := readBuildInfo()
			if asJSON {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(bi)
			}
			fmt.Fprintf(a.stdout, "trellis %s\n", bi.Version)
			fmt.Fprintf(a.stdout, "go:       %s %s\n", bi.GoVersion, bi.Platform)
			if bi.Revision != "" {
				rev := bi.Revision
				if bi.Modified {
					rev += " (modified)"
				}
				fmt.Fprintf(a.stdout, "revision: %s\n", rev)
			}
			if bi.RevisionTime != "" {
				fmt.Fprintf(a.stdout, "time:     %s\n", bi.RevisionTime)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the build information as a JSON object")
	return cmd
}
