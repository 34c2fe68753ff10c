package scenario

import (
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/command"
)

// Ext4 makes an ext4 filesystem on block device dev (e.g. "loop3") and
// mounts it on a new directory, which it returns. The cleanup thaws it in
// case it is frozen and unmounts it.
func Ext4(t testing.TB, dev string) string {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if err := checkDev(dev); err != nil {
		t.Fatalf("ext4: %v", err)
	}
	if _, err := lookPath("e2fsprogs", "mkfs.ext4"); err != nil {
		t.Fatalf("ext4: %v", err)
	}
	if _, err := command.Run(time.Minute, "mkfs.ext4", "-q", "-F", "/dev/"+dev); err != nil {
		t.Fatalf("ext4: %v", err)
	}
	dir, err := os.MkdirTemp("", "whyslow-ext4-")
	if err != nil {
		t.Fatalf("ext4: %v", err)
	}
	if _, err := command.Run(30*time.Second, "mount", "-t", "ext4", "/dev/"+dev, dir); err != nil {
		os.Remove(dir)
		t.Fatalf("ext4: %v", err)
	}
	t.Cleanup(func() {
		command.Run(30*time.Second, "fsfreeze", "--unfreeze", dir) // fails when not frozen
		if _, err := command.Run(time.Minute, "umount", dir); err != nil {
			t.Errorf("ext4 cleanup: %v", err)
			return
		}
		os.Remove(dir)
	})
	t.Logf("scenario: ext4 on /dev/%s mounted on %s", dev, dir)
	return dir
}

// Freezer freezes the filesystem mounted on dir (fsfreeze --freeze, as a
// backup tool does for a snapshot) for frozen, thaws it for thawed, and
// again, until the returned stop is called or the test ends. Writers to
// the filesystem block while it is frozen. stop and the cleanup leave it
// thawed; stop returns the number of freezes and the first error.
func Freezer(t testing.TB, dir string, frozen, thawed time.Duration) (stop func() (int, error)) {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if _, err := lookPath("util-linux", "fsfreeze"); err != nil {
		t.Fatalf("freezer: %v", err)
	}
	quit := make(chan struct{})
	done := make(chan struct{})
	var n int
	var ferr error
	go func() {
		defer close(done)
		for {
			if _, err := command.Run(30*time.Second, "fsfreeze", "--freeze", dir); err != nil {
				ferr = err
				return
			}
			n++
			select {
			case <-quit:
			case <-time.After(frozen):
			}
			if _, err := command.Run(30*time.Second, "fsfreeze", "--unfreeze", dir); err != nil {
				ferr = fmt.Errorf("thawing %s: %w", dir, err)
				return
			}
			select {
			case <-quit:
				return
			case <-time.After(thawed):
			}
		}
	}()
	var once sync.Once
	stop = func() (int, error) {
		once.Do(func() {
			close(quit)
			<-done
		})
		return n, ferr
	}
	t.Cleanup(func() { stop() })
	return stop
}
