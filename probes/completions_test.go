package probes

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

func TestParseDiskStat(t *testing.T) {
	for _, tt := range []struct {
		name, line    string
		ios, inflight uint64
		err           bool
	}{
		// 6.x: 17 fields; reads 10, writes 20, discards 3, flushes 4;
		// 7 in flight.
		{"17 fields", "10 1 80 5 20 2 160 9 7 12 14 3 0 24 1 4 2\n", 37, 7, false},
		// 5.5-: 15 fields, no flushes.
		{"15 fields", "10 1 80 5 20 2 160 9 0 12 14 3 0 24 1", 33, 0, false},
		// before 4.18: 11 fields, no discards.
		{"11 fields", "    10 1 80 5 20 2 160 9 2 12 14", 30, 2, false},
		{"too few", "10 1 80 5", 0, 0, true},
		{"not a number", "10 1 80 5 x 2 160 9 0 12 14", 0, 0, true},
		{"in flight not a number", "10 1 80 5 20 2 160 9 - 12 14", 0, 0, true},
		{"empty", "", 0, 0, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ios, inflight, err := parseDiskStat(tt.line)
			if (err != nil) != tt.err || ios != tt.ios || inflight != tt.inflight {
				t.Errorf("parseDiskStat(%q) = %d, %d, %v; want %d, %d, error %v", tt.line, ios, inflight, err, tt.ios, tt.inflight, tt.err)
			}
		})
	}
}

func TestUnseenCompletions(t *testing.T) {
	const loop0, vda, sda = 7 << 20, 254 << 20, 8 << 20 // major<<20|minor, minor 0
	// vda had 4 requests in flight when first read: issued before the
	// probe started, their completions end no span.
	before := map[uint32]diskCount{loop0: {"loop0", 100, 0}, vda: {"vda", 1000, 4}, sda: {"sda", 50, 0}}
	for _, tt := range []struct {
		name string
		now  map[uint32]diskCount
		seen map[uint32]uint64
		want map[string]uint64 // disk -> unseen
	}{
		{"all seen", map[uint32]diskCount{loop0: {"loop0", 150, 3}, vda: {"vda", 1010, 0}}, map[uint32]uint64{loop0: 50, vda: 10}, nil},
		{"in flight at the start not seen", map[uint32]diskCount{vda: {"vda", 1010, 0}}, map[uint32]uint64{vda: 6}, nil},
		// Completions after the kernel's count was read are seen too.
		{"more seen than counted", map[uint32]diskCount{loop0: {"loop0", 150, 0}}, map[uint32]uint64{loop0: 53}, nil},
		{"short on two disks", map[uint32]diskCount{loop0: {"loop0", 150, 0}, vda: {"vda", 1010, 0}}, map[uint32]uint64{loop0: 47, vda: 2}, map[string]uint64{"loop0": 3, "vda": 4}},
		{"a disk none seen", map[uint32]diskCount{sda: {"sda", 60, 0}}, nil, map[string]uint64{"sda": 10}},
		// Removed and made again (counts from 0), or another disk now
		// at that number: unknown, no shortfall.
		{"counts gone down", map[uint32]diskCount{vda: {"vda", 5, 0}}, nil, nil},
		{"another disk", map[uint32]diskCount{loop0: {"loop1", 500, 0}}, nil, nil},
		// A disk that appeared during the run has no start.
		{"new disk", map[uint32]diskCount{9 << 20: {"md0", 500, 0}}, nil, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]uint64{}
			for _, l := range unseenCompletions(event.ProbeService, before, tt.now, tt.seen) {
				if l.Probe != event.ProbeService {
					t.Errorf("loss of probe %q", l.Probe)
				}
				for _, d := range []string{"loop0", "vda", "sda"} {
					if l.What == unseenCompletionsWhat(d) {
						got[d] = l.Count
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

// readDiskCounts reads the request-based disks only (those with mq/).
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
	got, err := readDiskCounts(sys)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]diskCount{7 << 20: {"loop0", 6, 5}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("readDiskCounts = %+v, want %+v", got, want)
	}
	if _, err := readDiskCounts(filepath.Join(sys, "none")); err == nil {
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
			if l.Probe == event.ProbeService && l.What == unseenCompletionsWhat(loop.name) {
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
