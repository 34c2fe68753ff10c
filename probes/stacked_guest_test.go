package probes

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

// A stacked device made during a run (bcache over two loop devices, in the
// qemu matrix's kernels): the per-bio programs are off at the start, come
// on when the device appears, a writer's submissions nested in its calls
// on bcache are timed on the backing device, and the programs go off again
// once the device is gone. The bcache driver is loaded before the run in
// the guests, which alone keeps the programs on (stackingDriver): the
// test looks for bio-based disks only, as a run on a host where the driver
// is loaded during the run does.
func TestSubmitFnStackedDeviceAppears(t *testing.T) {
	blkNeedRoot(t)
	if _, err := os.Stat("/sys/fs/bcache/register"); err != nil {
		scenario.Skip(t, "needs bcache (the bcache module; the qemu matrix's kernels have it): %v", err)
	}
	if why := bioBasedDisk("/sys"); why != "" {
		scenario.Skip(t, "a stacked device can exist already (%s): the per-bio programs are on from the start", why)
	}
	old := submitFnStacked
	submitFnStacked = bioBasedDisk
	t.Cleanup(func() { submitFnStacked = old })
	for _, mech := range []event.Mechanism{event.MechFentry, event.MechKprobe} {
		t.Run(string(mech), func(t *testing.T) {
			// bcache wants a cache of more buckets than 256 MiB holds.
			const size, writes = 256 << 20, 200
			backing, cache := newBlkLoop(t, size), newBlkLoop(t, 1<<30)
			sink, r := startDirectOn(t, submitFnProbe{}, mech, 0)
			ns, ok := r.(*nestedSwitch)
			if !ok {
				t.Fatalf("the run is a %T, want its per-bio programs switched (nestedSwitch)", r)
			}
			if note := ns.statusNote(); ns.bioAttached() || !strings.Contains(note, "not attached") {
				t.Fatalf("per-bio programs attached at the start with no stacked device (status %q)", note)
			}
			// A bio split on a plain device is a nested call on the
			// outer call's own device: it neither attaches the programs
			// nor loses anything (its time is in the outer call).
			splitWrites(t, backing, 8)
			if err := r.(Checkpointer).Checkpoint(sink); err != nil {
				t.Fatal(err)
			}
			if ns.bioAttached() || len(sink.losses) > 0 {
				t.Fatalf("after split bios on %s: per-bio programs attached %v, losses %+v; want neither", backing.name, ns.bioAttached(), sink.losses)
			}
			var bc string
			var tid int
			t.Run("bcache", func(t *testing.T) {
				bc = scenario.Bcache(t, backing.name, cache.name, "writethrough")
				if !waitUntil(3*nestedCheckEvery, ns.bioAttached) {
					t.Fatalf("per-bio programs not attached %s after %s appeared", 3*nestedCheckEvery, bc)
				}
				var done <-chan struct{}
				tid, done, _ = directWriter(t, "/dev/"+bc, size/2, writes, nil)
				<-done
			})
			// bcache's cleanup stopped the device: the programs go off
			// (after nestedGrace, when a nested call came before a check
			// found the device).
			if wait := nestedGrace + 3*nestedCheckEvery; !waitUntil(wait, func() bool { return !ns.bioAttached() }) {
				t.Errorf("per-bio programs still attached %s after the last stacked device went", wait)
			}
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if t.Failed() {
				return
			}
			on := map[string]int{}
			for _, c := range directEvents[event.SubmitCall](sink) {
				if c.Task.Pid == uint32(tid) {
					on[c.Dev.Name]++
				}
			}
			t.Logf("the writer's calls by device: %v; losses: %+v", on, sink.losses)
			if on[bc] < writes || on[backing.name] < writes {
				t.Errorf("the writer's calls: %d on %s, %d on its backing device %s; want >= %d on each (nested submissions timed on their own device)",
					on[bc], bc, on[backing.name], backing.name, writes)
			}
			ns.mu.Lock()
			attaches := ns.attaches
			ns.mu.Unlock()
			if attaches != 1 {
				t.Errorf("per-bio programs attached %d times during the run, want 1", attaches)
			}
		})
	}
}

// splitWrites makes n 256 KiB O_DIRECT writes to loop, whose largest
// request it sets to 16 KiB for the time being, from one thread; it checks
// that the device completed at least 16 writes for each (they were split)
// and then waits a check of the nested switch.
func splitWrites(t *testing.T, loop blkLoop, n int) {
	t.Helper()
	msk := "/sys/block/" + loop.name + "/queue/max_sectors_kb"
	old, err := os.ReadFile(msk)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(msk, []byte("16"), 0); err != nil {
		t.Fatal(err)
	}
	defer os.WriteFile(msk, old, 0)
	before := diskWrites(t, loop.name)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	d, err := openDirect(loop.path, unix.O_WRONLY, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range n {
		if _, err := unix.Pwrite(d.fd, d.buf, int64(i)*int64(len(d.buf))); err != nil {
			t.Fatalf("writing %s: %v", loop.path, err)
		}
	}
	if got := diskWrites(t, loop.name) - before; got < uint64(16*n) {
		t.Fatalf("%s completed %d writes for %d of 256 KiB with 16 KiB requests: not split", loop.name, got, n)
	}
	time.Sleep(nestedCheckEvery + 100*time.Millisecond)
}

// diskWrites is the writes completed by a disk (its stat's fifth field).
func diskWrites(t *testing.T, disk string) uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/block/" + disk + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b))
	if len(f) < 5 {
		t.Fatalf("/sys/block/%s/stat: %q", disk, b)
	}
	v, err := strconv.ParseUint(f[4], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// waitUntil polls cond every 10 ms for at most d.
func waitUntil(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}
