//go:build linux

package cli

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// networkFilesystems maps the statfs magic numbers of network file
// systems to their names.
var networkFilesystems = map[int64]string{
	0x6969:     "NFS",
	0xFF534D42: "CIFS",
	0xFE534D42: "SMB2",
	0x517B:     "SMB",
	0x564C:     "NCP",
	0x73757245: "Coda",
	0x47504653: "GPFS",
	0x0BD00BD0: "Lustre",
	0x00C36400: "CephFS",
}

// networkFilesystem names the network file system holding path's
// directory, or "" for a local one (or when it cannot tell).
func networkFilesystem(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(path), &st); err != nil {
		return ""
	}
	if name, ok := networkFilesystems[int64(st.Type)]; ok {
		return fmt.Sprintf("%s (statfs type %#x)", name, st.Type)
	}
	return ""
}
