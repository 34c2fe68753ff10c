package diagnose

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// fakeSysfs builds a sysfs tree with bcache0 on sda1 (a partition of sda)
// and nvme0n1, the way the kernel links them.
func fakeSysfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	mk := func(p string) {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, name string) {
		if err := os.Symlink(target, filepath.Join(root, name)); err != nil {
			t.Fatal(err)
		}
	}
	mk("devices/pci/block/sda/sda1")
	mk("devices/pci/block/nvme0n1")
	mk("devices/virtual/block/bcache0/slaves")
	mk("devices/virtual/block/loop0")
	if err := os.WriteFile(filepath.Join(root, "devices/pci/block/sda/sda1/partition"), []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mk("block")
	mk("class/block")
	for name, dir := range map[string]string{"sda": "pci/block/sda", "nvme0n1": "pci/block/nvme0n1", "bcache0": "virtual/block/bcache0", "loop0": "virtual/block/loop0"} {
		link("../devices/"+dir, "block/"+name)
		link("../../devices/"+dir, "class/block/"+name)
	}
	link("../../devices/pci/block/sda/sda1", "class/block/sda1")
	link("../../../../pci/block/sda/sda1", "devices/virtual/block/bcache0/slaves/sda1")
	link("../../../../pci/block/nvme0n1", "devices/virtual/block/bcache0/slaves/nvme0n1")
	return root
}

func TestReadHolders(t *testing.T) {
	got, err := ReadHolders(fakeSysfs(t))
	if err != nil {
		t.Fatal(err)
	}
	want := []event.Holder{{Upper: "bcache0", Lower: "nvme0n1"}, {Upper: "bcache0", Lower: "sda"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("holders = %+v, want %+v", got, want)
	}
}

func TestReadHoldersMissingSysfs(t *testing.T) {
	if _, err := ReadHolders(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("want an error for a sysfs root without block/")
	}
}
