package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/command"
	"github.com/whyslow/whyslow/internal/sysattr"
)

// DiskBySerial returns the name of the block device whose serial (as
// /sys/block/<name>/serial shows it: virtio disks of the qemu kernel
// matrix) is serial, or "" when there is none.
func DiskBySerial(serial string) string {
	paths, _ := filepath.Glob("/sys/block/*/serial")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err == nil && strings.TrimSpace(string(b)) == serial {
			return filepath.Base(filepath.Dir(p))
		}
	}
	return ""
}

// Bcache makes a bcache device of backing (the slow disk) with cache (the
// fast one) in front of it, as the seed's host had an HDD behind an NVMe
// cache, and returns its name (bcache0). It formats both disks
// (make-bcache -B backing -C cache: the cache set is attached to the
// backing device), registers them with the kernel, waits for the device
// and sets its cache mode (writeback, writethrough, writearound or none).
// On cleanup the device is stopped, the cache set unregistered and both
// superblocks wiped. It needs the bcache module and bcache-tools.
func Bcache(t testing.TB, backing, cache, mode string) string {
	t.Helper()
	RequireRoot(t)
	hold(t)
	for _, d := range []string{backing, cache} {
		if err := checkDev(d); err != nil {
			t.Fatalf("bcache: %v", err)
		}
	}
	if _, err := os.Stat("/sys/fs/bcache/register"); err != nil {
		t.Fatalf("bcache: the kernel has no bcache (load the bcache module): %v", err)
	}
	if _, err := lookPath("bcache-tools", "make-bcache"); err != nil {
		t.Fatalf("bcache: %v", err)
	}
	if _, err := command.Run(time.Minute, "make-bcache", "--wipe-bcache", "-B", "/dev/"+backing, "-C", "/dev/"+cache); err != nil {
		t.Fatalf("bcache: %v", err)
	}
	t.Cleanup(func() {
		for _, d := range []string{backing, cache} {
			// The superblock is at 4 KiB: zero the first 64 KiB.
			if err := zero("/dev/"+d, 64<<10); err != nil {
				t.Errorf("bcache cleanup: wiping %s: %v", d, err)
			}
		}
	})
	for _, d := range []string{backing, cache} {
		// A device registered already (by udev's bcache rule) says so.
		if err := sysattr.Write("/sys/fs/bcache/register", "/dev/"+d); err != nil && !strings.Contains(err.Error(), "exist") {
			t.Logf("bcache: registering %s: %v", d, err)
		}
	}
	var name string
	if !waitFor(30*time.Second, func() bool {
		holders, _ := os.ReadDir(filepath.Join("/sys/block", backing, "holders"))
		for _, h := range holders {
			if strings.HasPrefix(h.Name(), "bcache") {
				name = h.Name()
				return true
			}
		}
		return false
	}) {
		t.Fatalf("bcache: no bcache device on %s after registering", backing)
	}
	t.Cleanup(func() {
		// Stopping the backing device's bcache and unregistering the cache
		// set releases both disks.
		_ = sysattr.Write(filepath.Join("/sys/block", name, "bcache", "stop"), "1")
		sets, _ := filepath.Glob("/sys/fs/bcache/*-*-*-*-*")
		for _, s := range sets {
			_ = sysattr.Write(filepath.Join(s, "unregister"), "1")
		}
		// Both go away asynchronously; the disks are busy until then.
		if !waitFor(60*time.Second, func() bool {
			left, _ := filepath.Glob("/sys/fs/bcache/*-*-*-*-*")
			for _, p := range []string{name, backing + "/bcache", cache + "/bcache"} {
				if _, err := os.Stat(filepath.Join("/sys/block", p)); err == nil {
					left = append(left, p)
				}
			}
			return len(left) == 0
		}) {
			t.Errorf("bcache cleanup: %s or its cache set still registered", name)
		}
	})
	if !waitFor(30*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join("/sys/block", name, "bcache", "state"))
		return err == nil && strings.TrimSpace(string(b)) == "clean"
	}) {
		state, _ := os.ReadFile(filepath.Join("/sys/block", name, "bcache", "state"))
		t.Fatalf("bcache: %s is %q, want its cache attached (clean)", name, strings.TrimSpace(string(state)))
	}
	modePath := filepath.Join("/sys/block", name, "bcache", "cache_mode")
	if err := sysattr.Write(modePath, mode); err != nil {
		t.Fatalf("bcache: cache mode %s: %v", mode, err)
	}
	got, _ := os.ReadFile(modePath)
	if !strings.Contains(string(got), "["+mode+"]") {
		t.Fatalf("bcache: cache mode is %q after writing %s", strings.TrimSpace(string(got)), mode)
	}
	t.Logf("scenario: /dev/%s = %s (backing) + %s (cache), cache mode %s", name, backing, cache, strings.TrimSpace(string(got)))
	return name
}

// zero writes n zero bytes at the start of path.
func zero(path string, n int) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(make([]byte, n))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
