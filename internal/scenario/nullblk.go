package scenario

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/sysattr"
)

// configfs is where null_blk's devices are made.
const configfs = "/sys/kernel/config"

// NullBlk makes a null_blk disk through configfs whose every request
// completes after exactly latency (a timer per request: irqmode 2,
// completion_nsec), whatever the load: a device whose reads always take
// that long. It is size bytes, backed by no memory (reads return zeros),
// with a queue of depth requests. It returns its name ("nullb1", or
// "whyslow-PID" where the kernel names it after its configfs directory); the
// cleanup removes it (and unmounts configfs if it mounted it). It skips
// (fails in the kernel matrix, which loads null_blk at boot) where there
// is no null_blk.
func NullBlk(t testing.TB, size int64, latency time.Duration, depth int) string {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if _, err := os.Stat("/sys/module/null_blk"); err != nil {
		Skip(t, "no null_blk module loaded (modprobe null_blk)")
	}
	if _, err := os.Stat(filepath.Join(configfs, "nullb")); err != nil {
		if err := unix.Mount("none", configfs, "configfs", 0, ""); err != nil && !errors.Is(err, unix.EBUSY) {
			t.Fatalf("null_blk: mounting configfs at %s: %v", configfs, err)
		} else if err == nil {
			t.Cleanup(func() { unix.Unmount(configfs, 0) })
		}
	}
	dir := filepath.Join(configfs, "nullb", fmt.Sprintf("whyslow-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("null_blk: %v", err)
	}
	t.Cleanup(func() {
		sysattr.Write(filepath.Join(dir, "power"), "0")
		if err := os.Remove(dir); err != nil {
			t.Errorf("null_blk cleanup: %v", err)
		}
	})
	for _, kv := range [][2]string{
		{"size", fmt.Sprint(size >> 20)}, // MiB
		{"blocksize", "4096"},
		{"queue_mode", "2"}, // blk-mq
		{"hw_queue_depth", fmt.Sprint(depth)},
		{"irqmode", "2"}, // a timer per request
		{"completion_nsec", fmt.Sprint(latency.Nanoseconds())},
		{"memory_backed", "0"},
		{"power", "1"},
	} {
		if err := sysattr.Write(filepath.Join(dir, kv[0]), kv[1]); err != nil {
			t.Fatalf("null_blk: %v", err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "index"))
	if err != nil {
		t.Fatalf("null_blk: %v", err)
	}
	// Its disk is named after its configfs directory from 5.19 on, after
	// its index before.
	names := []string{filepath.Base(dir), "nullb" + strings.TrimSpace(string(b))}
	dev := ""
	if !waitFor(10*time.Second, func() bool {
		for _, n := range names {
			if _, err := os.Stat(filepath.Join("/sys/block", n)); err == nil {
				dev = n
				return true
			}
		}
		return false
	}) {
		t.Fatalf("null_blk: no disk %v appeared", names)
	}
	if !waitFor(10*time.Second, func() bool { _, err := os.Stat("/dev/" + dev); return err == nil }) {
		t.Fatalf("null_blk: /dev/%s did not appear", dev)
	}
	t.Logf("scenario: null_blk /dev/%s, %d MiB, every request %v, %d requests deep", dev, size>>20, latency, depth)
	return dev
}
