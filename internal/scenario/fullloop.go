package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/command"
)

// FullLoopDevice attaches a loop device of size bytes over a sparse file
// on a tmpfs of room bytes, mounted for it: once its data fills the tmpfs,
// every write to a new block fails (the loop driver fails the request
// with an I/O error), as a disk whose backing store is failing does. With
// room at least size it is a healthy device in memory. The cleanup
// detaches it and unmounts the tmpfs.
func FullLoopDevice(t testing.TB, size, room int64) string {
	t.Helper()
	RequireRoot(t)
	hold(t)
	dir := t.TempDir()
	if _, err := command.Run(30*time.Second, "mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d", room), "whyslow-test", dir); err != nil {
		t.Fatalf("full loop device: %v", err)
	}
	t.Cleanup(func() {
		if _, err := command.Run(30*time.Second, "umount", dir); err != nil {
			t.Errorf("full loop device cleanup: %v", err)
		}
	})
	backing := filepath.Join(dir, fmt.Sprintf("%s%d.img", backingPrefix, os.Getpid()))
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatalf("full loop device: %v", err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatalf("full loop device: %v", err)
	}
	out, err := command.Run(30*time.Second, "losetup", "--find", "--show", backing)
	if err != nil {
		t.Fatalf("full loop device: %v", err)
	}
	dev := filepath.Base(strings.TrimSpace(out))
	if !loopName.MatchString(dev) {
		t.Fatalf("full loop device: losetup printed %q, want /dev/loopN", strings.TrimSpace(out))
	}
	t.Cleanup(func() {
		if _, err := command.Run(30*time.Second, "losetup", "--detach", "/dev/"+dev); err != nil {
			t.Errorf("full loop device cleanup: %v", err)
		}
	})
	t.Logf("scenario: attached /dev/%s (%d MiB over a tmpfs of %d MiB)", dev, size>>20, room>>20)
	return dev
}
