package scenario

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/sysattr"
)

// IOCost turns the iocost controller on for block device dev with a model
// and QoS of the test's (the lines io.cost.model and io.cost.qos take,
// without the device's MAJ:MIN), in the cgroup2 root, and off again on
// cleanup. It skips the test, saying why, where iocost cannot be
// configured: the kernel has no iocost, or the io controller is bound to
// cgroup v1's blkio hierarchy (as on this project's 6.18 host).
func IOCost(t testing.TB, dev, model, qos string) {
	t.Helper()
	RequireRoot(t)
	hold(t)
	root, v1, err := ioHierarchy()
	if err != nil {
		t.Fatalf("iocost: %v", err)
	}
	if v1 {
		Skip(t, "iocost: the io controller is bound to cgroup v1's blkio hierarchy here; iocost needs it on cgroup2")
	}
	qosFile := filepath.Join(root, "io.cost.qos")
	if _, err := os.Stat(qosFile); err != nil {
		Skip(t, "iocost: %s: %v (a kernel without CONFIG_BLK_CGROUP_IOCOST)", qosFile, err)
	}
	enableIO(t, root)
	id, err := devID(dev)
	if err != nil {
		t.Fatalf("iocost: %v", err)
	}
	if err := sysattr.Write(filepath.Join(root, "io.cost.model"), id+" "+model); err != nil {
		t.Fatalf("iocost: io.cost.model: %v", err)
	}
	if err := sysattr.Write(qosFile, id+" "+qos); err != nil {
		t.Fatalf("iocost: io.cost.qos: %v", err)
	}
	t.Cleanup(func() {
		if err := sysattr.Write(qosFile, id+" enable=0"); err != nil {
			t.Errorf("iocost cleanup: %v", err)
		}
	})
	b, _ := os.ReadFile(qosFile)
	t.Logf("scenario: iocost on %s (%s): %s", dev, id, strings.TrimSpace(string(b)))
}
