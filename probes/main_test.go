package probes

import (
	"fmt"
	"os"
	"testing"
)

// TestMain raises the locked-memory limit as Prepare does before a run:
// the tests start probes directly (Probe.Start), as root.
func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		if err := raiseMemlock(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	os.Exit(m.Run())
}
