package probes

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
)

func TestUnseenCompletions(t *testing.T) {
	const loop0, vda, sda = 7 << 20, 254 << 20, 8 << 20 // major<<20|minor, minor 0
	// vda had 4 requests in flight when first read: issued before the
	// probe started, their completions end no span.
	// loop1 appeared mid-run: first sighted at 1000 completions, when the
	// programs had seen 400 on it.
	const loop1 = 7<<20 | 1
	before := map[uint32]diskCount{loop0: dc("loop0", 100, 0), vda: dc("vda", 1000, 4), sda: dc("sda", 50, 0),
		loop1: {name: "loop1", ios: 1000, seen: 400, late: true}}
	for _, tt := range []struct {
		name string
		now  map[uint32]diskCount
		seen map[uint32]uint64
		want map[string]uint64 // disk -> unseen
	}{
		{"all seen", map[uint32]diskCount{loop0: dc("loop0", 150, 3), vda: dc("vda", 1010, 0)}, map[uint32]uint64{loop0: 50, vda: 10}, nil},
		{"in flight at the start not seen", map[uint32]diskCount{vda: dc("vda", 1010, 0)}, map[uint32]uint64{vda: 6}, nil},
		// Completions after the kernel's count was read are seen too.
		{"more seen than counted", map[uint32]diskCount{loop0: dc("loop0", 150, 0)}, map[uint32]uint64{loop0: 53}, nil},
		{"short on two disks", map[uint32]diskCount{loop0: dc("loop0", 150, 0), vda: dc("vda", 1010, 0)}, map[uint32]uint64{loop0: 47, vda: 2}, map[string]uint64{"loop0": 3, "vda": 4}},
		{"a disk none seen", map[uint32]diskCount{sda: dc("sda", 60, 0)}, nil, map[string]uint64{"sda": 10}},
		// Removed and made again (counts from 0), or another disk now
		// at that number: unknown, no shortfall.
		{"counts gone down", map[uint32]diskCount{vda: dc("vda", 5, 0)}, nil, nil},
		{"another disk", map[uint32]diskCount{loop0: dc("loop1", 500, 0)}, nil, nil},
		// A disk that appeared after the last sighting has no baseline.
		{"new disk", map[uint32]diskCount{9 << 20: dc("md0", 500, 0)}, nil, nil},
		// A disk sighted mid-run counts from its sighting.
		{"mid-run disk all seen", map[uint32]diskCount{loop1: dc("loop1", 1500, 0)}, map[uint32]uint64{loop1: 900}, nil},
		{"mid-run disk short", map[uint32]diskCount{loop1: dc("loop1", 1500, 0)}, map[uint32]uint64{loop1: 890}, map[string]uint64{"loop1 (late)": 10}},
		// Fewer seen than at the sighting: the maps were not these.
		{"mid-run disk seen gone down", map[uint32]diskCount{loop1: dc("loop1", 1500, 0)}, map[uint32]uint64{loop1: 300}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]uint64{}
			for _, l := range unseenCompletions(event.ProbeService, before, tt.now, tt.seen) {
				if l.Probe != event.ProbeService {
					t.Errorf("loss of probe %q", l.Probe)
				}
				for _, d := range []string{"loop0", "vda", "sda", "loop1"} {
					if l.What == unseenCompletionsWhat(d, false) {
						got[d] = l.Count
					}
					if l.What == unseenCompletionsWhat(d, true) {
						got[d+" (late)"] = l.Count
					}
				}
				if !strings.HasPrefix(l.What, unseenCompletionsPrefix) {
					t.Errorf("loss %q lacks the prefix %q", l.What, unseenCompletionsPrefix)
				}
			}
			if len(got) == 0 {
				got = nil
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("unseen = %v, want %v", got, tt.want)
			}
		})
	}
}

// readDiskCounts reads the request-based disks only (those with mq/), each
// with what the programs saw on it; a disk whose seen count cannot be read
// is left out.
func TestReadDiskCounts(t *testing.T) {
	sys := t.TempDir()
	disk := func(name, dev, stat string, mq bool) {
		dir := filepath.Join(sys, "block", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if mq {
			os.Mkdir(filepath.Join(dir, "mq"), 0o755)
		}
		os.WriteFile(filepath.Join(dir, "dev"), []byte(dev+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
	}
	disk("loop0", "7:0", "1 0 8 0 2 0 16 0 5 0 0 0 0 0 0 3 0", true)
	disk("zram0", "252:0", "9 0 8 0 9 0 16 0 0 0 0 0 0 0 0 0 0", false) // bio-based
	disk("vda", "254:0", "junk", true)
	disk("loop1", "7:1", "1 0 8 0 2 0 16 0 5 0 0 0 0 0 0 3 0", true)
	seen := func(dev uint32) (uint64, bool) { return 4, dev != 7<<20|1 }
	got, err := readDiskCounts(sys, seen)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]diskCount{7 << 20: {name: "loop0", ios: 6, inflight: 5, seen: 4}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("readDiskCounts = %+v, want %+v", got, want)
	}
	if _, err := readDiskCounts(filepath.Join(sys, "none"), seen); err == nil {
		t.Error("readDiskCounts of a missing sysfs: no error")
	}
}

// The service probe reports, per disk, the completions the kernel counted
// that its program did not see: none for writes each followed by a cache
// flush, which the block layer completes without issuing (seen, without
// a span), and every write once its program is off block_rq_complete (as
// when the kernel runs no program for a completion).
func TestServiceCountsUnseenCompletions(t *testing.T) {
	blkNeedRoot(t)
	loop := newBlkLoop(t, 64<<20)
	unseen := func(ls []event.Loss) (n uint64) {
		for _, l := range ls {
			if l.Probe == event.ProbeService && l.What == unseenCompletionsWhat(loop.name, false) {
				n += l.Count
			}
		}
		return n
	}
	before := diskStatFields(t, loop.name)
	sink := new(blkSink)
	r, st := serviceProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting service: %+v", st)
	}
	t.Cleanup(func() { r.Stop() })
	const writes = 200
	d, err := openDirect(loop.path, unix.O_WRONLY, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for i := range writes {
		if _, err := unix.Pwrite(d.fd, d.buf, int64(i)*4096); err != nil {
			t.Fatal(err)
		}
		if err := unix.Fsync(d.fd); err != nil {
			t.Fatal(err)
		}
	}
	cp := new(blkSink)
	if err := r.(Checkpointer).Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	after := diskStatFields(t, loop.name)
	t.Logf("%s: %d writes, %d flushes completed (the kernel's count); %d unseen at the checkpoint", loop.name, after[4]-before[4], after[15]-before[15], unseen(cp.losses))
	if after[15]-before[15] < writes/2 {
		t.Errorf("%d flushes completed on %s for %d fsyncs: the flushes this test is about did not happen", after[15]-before[15], loop.name, writes)
	}
	// The kernel skips a program for some 5 completions in 100 000.
	if n := unseen(cp.losses); n > 2 {
		t.Errorf("checkpoint: %d completions on %s reported unseen with the program on, want none (losses: %+v)", n, loop.name, cp.losses)
	}
	if err := chainRqComplete.leave(r.(*serviceRunning).complete); err != nil {
		t.Fatal(err)
	}
	chainWrites(t, loop.path, 0, writes)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	n := unseen(sink.losses)
	t.Logf("%s: %d completions unseen at the stop", loop.name, n)
	if n < writes || n > writes+10 {
		t.Errorf("%d completions on %s reported unseen after %d writes with the program off the hook, want %d (losses: %+v)", n, loop.name, writes, writes, sink.losses)
	}
}

func dc(name string, ios, inflight uint64) diskCount {
	return diskCount{name: name, ios: ios, inflight: inflight}
}

// A diskWatch takes the disks of its start at zero seen, and a
// request-based disk that appears later at what the programs had seen on
// it then; bio-based disks never.
func TestDiskWatchSightsNewDisks(t *testing.T) {
	sys := t.TempDir()
	disk := func(name, dev, stat string, mq bool) {
		dir := filepath.Join(sys, "block", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if mq {
			os.Mkdir(filepath.Join(dir, "mq"), 0o755)
		}
		os.WriteFile(filepath.Join(dir, "dev"), []byte(dev+"\n"), 0o644)
		os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644)
	}
	disk("vda", "254:0", "1 0 8 0 2 0 16 0 5 0 0 0 0 0 0 3 0", true)
	seen := map[uint32]uint64{7<<20 | 3: 42}
	w := watchDisks(sys, func(dev uint32) (uint64, bool) { return seen[dev], true })
	if w == nil {
		t.Fatal("watchDisks: nil")
	}
	defer w.close()
	disk("loop3", "7:3", "10 0 8 0 20 0 16 0 2 0 0 0 0 0 0 0 0", true)
	disk("zram0", "252:0", "9 0 8 0 9 0 16 0 0 0 0 0 0 0 0 0 0", false)
	w.sight()
	got := w.baselines()
	want := map[uint32]diskCount{254 << 20: dc("vda", 6, 5), 7<<20 | 3: {name: "loop3", ios: 30, inflight: 2, seen: 42, late: true}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("baselines = %+v, want %+v", got, want)
	}
	// Sighted once: a later stat is not a new baseline.
	disk("loop3", "7:3", "100 0 8 0 20 0 16 0 2 0 0 0 0 0 0 0 0", true)
	w.sight()
	if got := w.baselines()[7<<20|3]; got.ios != 30 {
		t.Errorf("loop3's baseline moved to %d completions at a second sighting", got.ios)
	}
	if watchDisks(filepath.Join(sys, "none"), nil) != nil {
		t.Error("watchDisks of a missing sysfs: not nil")
	}
}

// newAddedLoop makes a loop device that did not exist before
// (LOOP_CTL_ADD at a number no disk has), over a file of size, as a disk
// plugged in mid-run would be; it is removed at the end of the test.
func newAddedLoop(t *testing.T, size int64) blkLoop {
	t.Helper()
	backing, err := os.Create(filepath.Join(t.TempDir(), "backing.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer backing.Close()
	if err := backing.Truncate(size); err != nil {
		t.Fatal(err)
	}
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("opening /dev/loop-control: %v", err)
	}
	for n := 200; n < 260; n++ {
		if _, err := os.Stat(fmt.Sprintf("/sys/block/loop%d", n)); err == nil {
			continue
		}
		got, err := ioctlArg(ctl, unix.LOOP_CTL_ADD, n)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			unix.Close(ctl)
			t.Fatalf("LOOP_CTL_ADD %d: %v", n, err)
		}
		l := blkLoop{name: fmt.Sprintf("loop%d", got), path: fmt.Sprintf("/dev/loop%d", got)}
		var fd int
		for try := 0; ; try++ { // devtmpfs makes the node
			if fd, err = unix.Open(l.path, unix.O_RDWR|unix.O_CLOEXEC, 0); err == nil || try == 100 {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err != nil {
			ioctlArg(ctl, unix.LOOP_CTL_REMOVE, got)
			unix.Close(ctl)
			t.Fatalf("opening %s: %v", l.path, err)
		}
		cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
		copy(cfg.Info.File_name[:], backing.Name())
		if err := unix.IoctlLoopConfigure(fd, &cfg); err != nil {
			unix.Close(fd)
			ioctlArg(ctl, unix.LOOP_CTL_REMOVE, got)
			unix.Close(ctl)
			t.Fatalf("LOOP_CONFIGURE %s: %v", l.path, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		l.major, l.minor = unix.Major(st.Rdev), unix.Minor(st.Rdev)
		t.Cleanup(func() {
			if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil {
				t.Errorf("detaching %s: %v", l.path, err)
			}
			unix.Close(fd)
			for try := 0; try < 50; try++ { // busy until the detach is done
				if _, err := ioctlArg(ctl, unix.LOOP_CTL_REMOVE, got); !errors.Is(err, unix.EBUSY) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			unix.Close(ctl)
		})
		return l
	}
	unix.Close(ctl)
	t.Fatal("no free loop number from 200 to 259")
	return blkLoop{}
}

func ioctlArg(fd int, req uint, arg int) (int, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if errno != 0 {
		return int(r), errno
	}
	return int(r), nil
}

// A disk that appears after the service probe started is compared from
// its first sighting: the completions before it are not held against it,
// none is reported unseen while the program runs, and every write is
// once the program is off block_rq_complete; its line says that its
// count starts mid-run.
func TestServiceCountsUnseenCompletionsOfNewDisk(t *testing.T) {
	blkNeedRoot(t)
	scenario.Hold(t)
	sink := new(blkSink)
	r, st := serviceProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting service: %+v", st)
	}
	t.Cleanup(func() { r.Stop() })
	sr := r.(*serviceRunning)
	loop := newAddedLoop(t, 64<<20)
	dev := uint32(loop.major)<<20 | uint32(loop.minor)
	late := func(ls []event.Loss) (n uint64) {
		for _, l := range ls {
			if l.Probe == event.ProbeService && l.What == unseenCompletionsWhat(loop.name, true) {
				n += l.Count
			}
		}
		return n
	}
	// Before its first sighting (the probe's own, within a second, or
	// this one): seen, and not held against it.
	const before, writes = 30, 200
	chainWrites(t, loop.path, 0, before)
	sr.disks.sight()
	b, ok := sr.disks.baselines()[dev]
	if !ok || !b.late {
		t.Fatalf("%s (%d:%d) not sighted mid-run: %+v", loop.name, loop.major, loop.minor, sr.disks.baselines())
	}
	t.Logf("%s sighted at %d completions, %d seen", loop.name, b.ios, b.seen)
	chainWrites(t, loop.path, 0, writes)
	cp := new(blkSink)
	if err := r.(Checkpointer).Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	// The kernel skips a program for some 5 completions in 100 000.
	if n := late(cp.losses); n > 2 {
		t.Errorf("checkpoint: %d completions on %s reported unseen with the program on, want none (losses: %+v)", n, loop.name, cp.losses)
	}
	if err := chainRqComplete.leave(sr.complete); err != nil {
		t.Fatal(err)
	}
	chainWrites(t, loop.path, 0, writes)
	if err := r.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	n := late(sink.losses)
	t.Logf("%s: %d completions unseen since its sighting", loop.name, n)
	if n < writes || n > writes+10 {
		t.Errorf("%d completions on %s reported unseen since its sighting, after %d writes with the program off the hook, want %d (losses: %+v)", n, loop.name, writes, writes, sink.losses)
	}
}

// Stopped while a load runs on its disk, the service probe counts as
// missed no more completions than the disk's own count says no program
// saw: none of the requests completed while it stops (after its
// completion program left, issued again before its issue program did)
// is counted as a missed completion, and none of its stop's completions
// hides one from the disk's count.
func TestServiceStopUnderLoad(t *testing.T) {
	blkNeedRoot(t)
	loop := newBlkLoop(t, 64<<20)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ios atomic.Uint64
	for w := range 8 {
		d, err := openDirect(loop.path, unix.O_WRONLY, 4096)
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer d.Close()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := unix.Pwrite(d.fd, d.buf, int64((w*2048+i%2048)*4096)); err == nil {
					ios.Add(1)
				}
			}
		}()
	}
	defer func() { close(stop); wg.Wait() }()
	// Four runs of the probe, each stopped while the writes go on: the
	// window its stop leaves open is a few milliseconds on a busy machine.
	var missed, unseen, elsewhere, skipped uint64
	for range 4 {
		sink := new(blkSink)
		r, st := serviceProbe{}.Start(Config{SysFS: "/sys", ProcFS: "/proc"}, sink)
		if st.Status != event.StatusOK || r == nil {
			t.Fatalf("starting service: %+v", st)
		}
		time.Sleep(500 * time.Millisecond)
		// The missed count is of every disk, the unseen lines forgive each
		// disk the requests it had in flight when first read: on the
		// machine's other disks (vda, busy with the builds of a CI run
		// beside this test) a missed completion can hide in that
		// allowance, which this test's writes do not control.
		if w := r.(*serviceRunning).disks; w != nil {
			for _, b := range w.baselines() {
				if b.name != loop.name {
					elsewhere += b.inflight
				}
			}
		}
		if err := r.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		for _, l := range sink.losses {
			switch {
			case l.Probe == event.ProbeService && l.What == event.ServiceMissedWhat:
				missed += l.Count
			case l.Probe == event.ProbeService && strings.HasPrefix(l.What, unseenCompletionsPrefix):
				unseen += l.Count
			case l.Probe == event.ProbeService && strings.HasPrefix(l.What, "runs of ") && strings.Contains(l.What, "_complete skipped"):
				// the completion program's runs the kernel skipped
				// (recursion_misses): each leaves its request's slot
				// held, a missed completion at its next issue
				skipped += l.Count
			}
		}
	}
	t.Logf("%d writes on %s; service: %d missed, %d unseen on the disks, %d in flight on other disks at the starts, %d runs of the completion program skipped by the kernel", ios.Load(), loop.name, missed, unseen, elsewhere, skipped)
	// The kernel skips the programs for some 5 completions in 100 000;
	// each disk's allowance (its requests in flight at each start) may
	// forgive a few of those.
	if missed > unseen+elsewhere+20 {
		t.Errorf("service counted %d missed completions, the disks %d unseen (%d in flight on other disks at the starts): its stops counted their own", missed, unseen, elsewhere)
	}
}
