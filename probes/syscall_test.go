package probes

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

// startSyscallOn starts the syscall probe on mech, with this test process's
// own calls traced.
func startSyscallOn(t *testing.T, mech event.Mechanism, minLatency time.Duration) (*blkSink, Running) {
	t.Helper()
	old := syscallSelf
	syscallSelf = 0
	t.Cleanup(func() { syscallSelf = old })
	sink := new(blkSink)
	cfg := Config{MinLatency: minLatency, SysFS: "/sys", ProcFS: "/proc",
		Mechanism: MechanismChoice{Per: map[string]event.Mechanism{event.ProbeSyscall: mech}}}
	r, st := syscallProbe{}.Start(cfg, sink)
	if st.Status != event.StatusOK || r == nil {
		t.Fatalf("starting syscall on %s: %+v", mech, st)
	}
	t.Logf("status: %+v", st)
	t.Cleanup(func() { r.Stop() })
	return sink, r
}

func sinkEvents[E event.Event](s *blkSink) []E {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []E
	for _, e := range s.events {
		if v, ok := e.(E); ok {
			out = append(out, v)
		}
	}
	return out
}

// Every O_DIRECT pwrite64 to a loop device is counted on that device for
// this process, slept in a stack of the direct write, and calls on a pipe,
// /dev/null and a tmpfs file are not traced at all.
func TestSyscallCountsWrites(t *testing.T) {
	blkNeedRoot(t)
	for _, mech := range (syscallProbe{}).Decl().Mechs() {
		t.Run(string(mech), func(t *testing.T) {
			const size = 64 << 20
			loop := newBlkLoop(t, size)
			sink, r := startSyscallOn(t, mech, 0)

			const writes = 300
			tid, done, _ := directWriter(t, loop.path, size, writes, nil)
			<-done
			noise(t)
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			pid := uint32(os.Getpid())
			var stats *event.SyscallStats
			for _, s := range sinkEvents[event.SyscallStats](sink) {
				if s.Pid != pid {
					continue
				}
				if s.Dev.Name == "" || (s.Dev.Name != loop.name && s.Call != "read" && s.Call != "write") {
					t.Logf("also: %s on %s: %d calls", s.Call, s.Dev, s.Latency.Count)
				}
				if s.Dev.Name == loop.name && s.Call == "pwrite64" {
					stats = &s
				}
				if s.Dev.Name == "" {
					t.Errorf("%s counted on a device with no name: %+v", s.Call, s.Dev)
				}
			}
			if stats == nil {
				t.Fatalf("no pwrite64 stats for pid %d on %s: %+v", pid, loop.name, sinkEvents[event.SyscallStats](sink))
			}
			if stats.Latency.Count != writes {
				t.Errorf("pwrite64 count %d on %s, want %d", stats.Latency.Count, loop.name, writes)
			}
			if stats.Dev.Major != loop.major || stats.Dev.Minor != loop.minor {
				t.Errorf("device %s, want %d:%d", stats.Dev.ID(), loop.major, loop.minor)
			}
			var slow int
			for _, c := range sinkEvents[event.Syscall](sink) {
				if c.Task.Pid == uint32(tid) && c.Call == "pwrite64" && c.Dev.Name == loop.name {
					slow++
					if c.Ret != 4096 {
						t.Errorf("pwrite64 returned %d, want 4096", c.Ret)
					}
				}
			}
			if slow != writes {
				t.Errorf("%d pwrite64 calls streamed with --min-latency 0, want %d", slow, writes)
			}
			var blocked time.Duration
			var direct bool
			for _, b := range sinkEvents[event.BlockedStack](sink) {
				if b.Pid != pid || b.Dev.Name != loop.name || b.Call != "pwrite64" {
					continue
				}
				blocked += b.Total
				for _, f := range b.KernelStack {
					if strings.Contains(f.Symbol, "blkdev_direct_IO") || f.Symbol == "submit_bio_wait" {
						direct = true
					}
				}
			}
			if blocked == 0 || blocked != stats.Sleep {
				t.Errorf("blocked stacks sum to %v, the calls slept %v: want them equal and > 0", blocked, stats.Sleep)
			}
			if !direct {
				t.Errorf("no blocked stack of the writes shows the direct write path")
			}
			for _, l := range sink.losses {
				t.Logf("loss: %+v", l)
			}
		})
	}
}

// noise makes calls that must not be traced: a pipe, /dev/null, a tmpfs
// file.
func noise(t *testing.T) {
	t.Helper()
	var p [2]int
	if err := unix.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 512)
	for range 100 {
		unix.Write(p[1], buf)
		unix.Read(p[0], buf)
	}
	unix.Close(p[0])
	unix.Close(p[1])
	null, err := os.OpenFile("/dev/null", os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 100 {
		null.Write(buf)
	}
	null.Close()
	dir := "/dev/shm"
	if _, err := os.Stat(dir); err != nil {
		return
	}
	f, err := os.CreateTemp(dir, "whyslow-test-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	for range 100 {
		f.Write(buf)
	}
	f.Sync()
	f.Close()
	_ = filepath.Base
	_ = slices.Contains[[]string]
}

// queueEnterFrames are where a submitter waits for a frozen queue.
var queueEnterFrames = []string{"__bio_queue_enter", "bio_queue_enter", "blk_queue_enter"}

// A writer whose queue is frozen again and again sleeps in queue enter,
// and the stacks of its sleeps say so, whole (from __schedule to the
// system call), with every other probe running on its best mechanism:
// fentry/fexit in the kernel matrix, where the trampolines of whyslow's own
// programs on __submit_bio and __bio_queue_enter are in those stacks. (On
// 6.12 a trampoline made after kallsyms was read resolved to a bpf_prog_*
// symbol, and the trimming of the tracing frames cut every frame up to it:
// both the syscall probe's and the offcpu probe's stacks began at
// __submit_bio+5 or __bio_queue_enter+9, and the stage was lost.)
func TestSyscallStacksUnderDirectProbes(t *testing.T) {
	blkNeedRoot(t)
	old := syscallSelf
	syscallSelf = 0
	t.Cleanup(func() { syscallSelf = old })
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	sink := new(blkSink)
	g := Start(Config{MinLatency: time.Millisecond, SysFS: "/sys", ProcFS: "/proc"}, sink, All()...)
	t.Cleanup(func() { g.Stop() })
	for _, st := range g.Statuses() {
		t.Logf("probe %s: %s %s %s", st.Name, st.Mechanism, st.Status, st.Reason)
	}
	stop := make(chan struct{})
	tid, wdone, writes := directWriter(t, loop.path, size, 0, stop)
	_, fdone := flipScheduler(t, loop.name, 30, 25*time.Millisecond)
	<-fdone
	close(stop)
	<-wdone
	if err := g.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	inEnter := func(fr []event.Frame) bool {
		return slices.ContainsFunc(fr, func(f event.Frame) bool { return slices.Contains(queueEnterFrames, f.Symbol) })
	}
	whole := func(fr []event.Frame) bool {
		return len(fr) > 0 && (fr[0].Symbol == "__schedule" || fr[0].Symbol == "schedule") &&
			slices.ContainsFunc(fr, func(f event.Frame) bool { return strings.Contains(f.Symbol, "sys_pwrite64") })
	}
	pid := uint32(os.Getpid())
	var all, enter time.Duration
	for _, b := range sinkEvents[event.BlockedStack](sink) {
		if b.Pid != pid || b.Dev.Name != loop.name || b.Call != "pwrite64" || b.Unwalked {
			continue
		}
		all += b.Total
		if inEnter(b.KernelStack) {
			enter += b.Total
			if !whole(b.KernelStack) {
				t.Errorf("syscall probe: a stack in queue enter is not whole: %s", strings.Join(event.FormatStack(b.KernelStack), " <- "))
			}
		}
	}
	t.Logf("%d writes; asleep %v (stacks walked), of which %v in queue enter", writes.Load(), all, enter)
	if enter == 0 || enter < all/4 {
		t.Errorf("the writer slept %v, %v of it in a stack with queue enter: want most of it", all, enter)
	}
	var spans, wholeSpans int
	for _, o := range sinkEvents[event.OffCPU](sink) {
		if o.Task.Pid != uint32(tid) || !inEnter(o.KernelStack) {
			continue
		}
		spans++
		if whole(o.KernelStack) {
			wholeSpans++
		} else {
			t.Errorf("offcpu probe: a span in queue enter has no whole stack: %s", strings.Join(event.FormatStack(o.KernelStack), " <- "))
		}
	}
	if spans == 0 {
		t.Errorf("offcpu probe: no span of the writer (tid %d) in queue enter", tid)
	}
}
