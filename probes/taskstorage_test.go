package probes

import (
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"

	"github.com/whyslow/whyslow/internal/scenario"
)

// haveTaskStorage, read from the kernel BTF, agrees with cilium/ebpf's
// feature probe (which creates a task storage map) on the running kernel;
// without BTF it says no.
func TestHaveTaskStorageAgreesWithTheKernel(t *testing.T) {
	if haveTaskStorage(nil) {
		t.Error("haveTaskStorage(nil) = true, want false")
	}
	if testing.Short() {
		scenario.Skip(t, "skipped with -short: creates a task storage map")
	}
	if os.Geteuid() != 0 {
		scenario.Skip(t, "needs root: creates a task storage map")
	}
	kernel, err := KernelBTF()
	if err != nil {
		t.Fatal(err)
	}
	want := features.HaveMapType(ebpf.TaskStorage) == nil
	if got := haveTaskStorage(kernel); got != want {
		t.Errorf("haveTaskStorage = %v, the kernel's answer (a map created) %v", got, want)
	}
}
