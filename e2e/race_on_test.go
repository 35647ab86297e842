//go:build race

package e2e

// raceBuild says the tests run with the race detector, so the trellis
// binary they start is built with it too.
const raceBuild = true
