package scenario

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/blockqueue"
	"github.com/whyslow/whyslow/internal/command"
)

// Queue is the state of a block device's request-queue attributes.
type Queue = blockqueue.Queue

// ReadQueue reads /sys/block/<dev>/queue/{scheduler,nr_requests}.
func ReadQueue(dev string) (Queue, error) { return blockqueue.Read(dev) }

// SetQueue writes the scheduler and then nr_requests of dev (switching the
// scheduler resets nr_requests, so the order matters).
func SetQueue(dev, sched string, nrRequests int) error { return blockqueue.Set(dev, sched, nrRequests) }

// loopName matches what LoopDevice returns.
var loopName = regexp.MustCompile(`^loop[0-9]+$`)

// backingPrefix starts the name of every backing file, followed by the pid
// of the test process, so leftovers of a killed test can be recognised.
const backingPrefix = "whyslow-scenario-"

// LoopDevice attaches a loop device over a new sparse temp file of size
// bytes and returns its name, e.g. "loop3". It fails the test unless the
// device offers the mq-deadline scheduler. On cleanup it restores the
// scheduler and nr_requests found at attach time and detaches the device.
func LoopDevice(t testing.TB, size int64) string {
	t.Helper()
	return loopDevice(t, size, t.TempDir(), false)
}

// DiskLoop attaches a loop device with direct I/O (losetup --direct-io=on)
// over a new file of size bytes on a disk-backed filesystem, and returns
// its name: I/O to it is I/O to that disk, with the disk's latency and
// queue, and none of it stays in the page cache. The file is filled (not
// sparse), so that reads reach the disk. It skips the test, saying why,
// when the temp directory is not on a disk (tmpfs). Cleanup as LoopDevice.
func DiskLoop(t testing.TB, size int64) string {
	t.Helper()
	return loopDevice(t, size, t.TempDir(), true)
}

// MemLoopDevice is LoopDevice over a file in memory (tmpfs, /dev/shm):
// a fast device, whose writes and flushes take microseconds, as the seed's
// NVMe journal did, so that what slows its writers down is what a scenario
// does to it, not the disk under a file.
func MemLoopDevice(t testing.TB, size int64) string {
	t.Helper()
	RequireRoot(t)
	dir, err := os.MkdirTemp("/dev/shm", backingPrefix+"dir-")
	if err != nil {
		t.Fatalf("loop device in memory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return loopDevice(t, size, dir, false)
}

// loopDevice attaches a loop device over a file in dir; disk: the file is
// filled and on a disk, and the device does direct I/O.
func loopDevice(t testing.TB, size int64, dir string, disk bool) string {
	t.Helper()
	RequireRoot(t)
	hold(t)
	if _, err := lookPath("mount", "losetup"); err != nil {
		t.Fatalf("loop device: %v", err)
	}

	if disk {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			t.Fatalf("loop device: %v", err)
		}
		if st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC {
			Skip(t, "loop device: %s is in memory (tmpfs): a disk-backed loop device needs its file on a disk", dir)
		}
	}
	backing := filepath.Join(dir, fmt.Sprintf("%s%d.img", backingPrefix, os.Getpid()))
	f, err := os.Create(backing)
	if err != nil {
		t.Fatalf("loop device: %v", err)
	}
	if disk {
		err = fill(f, size)
	} else {
		err = f.Truncate(size)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatalf("loop device: %v", err)
	}
	args := []string{"--find", "--show", backing}
	if disk {
		args = append([]string{"--direct-io=on"}, args...)
	}
	out, err := command.Run(30*time.Second, "losetup", args...)
	if err != nil {
		t.Fatalf("loop device: %v", err)
	}
	dev := filepath.Base(strings.TrimSpace(out))
	if !loopName.MatchString(dev) {
		t.Fatalf("loop device: losetup printed %q, want /dev/loopN", strings.TrimSpace(out))
	}
	t.Cleanup(func() {
		if _, err := command.Run(30*time.Second, "losetup", "--detach", "/dev/"+dev); err != nil {
			t.Errorf("loop device cleanup: %v", err)
		}
	})
	if disk {
		b, err := os.ReadFile(filepath.Join("/sys/block", dev, "loop", "dio"))
		if err != nil || strings.TrimSpace(string(b)) != "1" {
			t.Fatalf("loop device %s: direct I/O is not on (loop/dio %q, %v)", dev, strings.TrimSpace(string(b)), err)
		}
	}

	orig, err := ReadQueue(dev)
	if err != nil {
		t.Fatalf("loop device %s: %v", dev, err)
	}
	t.Cleanup(func() {
		if err := SetQueue(dev, orig.Scheduler, orig.NrRequests); err != nil {
			t.Errorf("loop device cleanup: restoring %s queue (scheduler %s, nr_requests %d): %v",
				dev, orig.Scheduler, orig.NrRequests, err)
		}
	})
	t.Logf("scenario: attached /dev/%s (%d MiB over %s, direct I/O %v, scheduler %s, nr_requests %d)",
		dev, size>>20, backing, disk, orig.Scheduler, orig.NrRequests)
	return dev
}

// fill writes size bytes of a non-zero pattern to f and syncs it.
func fill(f *os.File, size int64) error {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return err
		}
	}
	return f.Sync()
}

// detachStaleLoops detaches loop devices whose backing file this package
// made in a test process that no longer exists (killed by a test timeout
// before its cleanup ran).
func detachStaleLoops(t testing.TB) {
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range files {
		b, err := os.ReadFile(bf)
		if err != nil {
			continue
		}
		name := filepath.Base(strings.TrimSuffix(strings.TrimSpace(string(b)), " (deleted)"))
		if !strings.HasPrefix(name, backingPrefix) {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(name, backingPrefix), ".img"))
		if err != nil || alive(pid) {
			continue
		}
		dev := filepath.Base(filepath.Dir(filepath.Dir(bf)))
		// Its original queue settings are lost with the process; put back
		// the loop driver's defaults.
		depth := 128
		if b, err := os.ReadFile("/sys/module/loop/parameters/hw_queue_depth"); err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
				depth = n
			}
		}
		if err := SetQueue(dev, "none", depth); err != nil {
			t.Logf("scenario: resetting queue of stale /dev/%s: %v", dev, err)
		}
		if _, err := command.Run(30*time.Second, "losetup", "--detach", "/dev/"+dev); err == nil {
			t.Logf("scenario: detached /dev/%s left over by dead test process %d", dev, pid)
		}
	}
}

// FreezingWrite names the queue attribute of dev that the scenarios change
// to freeze its queue, two values to alternate (every write a change: most
// kernels before 6.17 do not freeze for the current value), and the kernel
// function that stores it: the scheduler (mq-deadline, none;
// elv_iosched_store) where dev offers mq-deadline, else nr_requests (32,
// 64; queue_requests_store), as on 5.10's loop devices, which have no
// scheduler but none.
func FreezingWrite(dev string) (attr string, values [2]string, store string) {
	if q, err := ReadQueue(dev); err == nil && q.Offers(RuleScheduler) {
		return "queue/scheduler", [2]string{RuleScheduler, "none"}, "elv_iosched_store"
	}
	return "queue/nr_requests", [2]string{"32", "64"}, "queue_requests_store"
}
