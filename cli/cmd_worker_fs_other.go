//go:build !linux

package cli

// networkFilesystem cannot tell on this platform.
func networkFilesystem(string) string { return "" }
