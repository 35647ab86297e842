//go:build !linux

package main

// networkFilesystem cannot tell on this platform.
func networkFilesystem(string) string { return "" }
