package probes

import (
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/stage"
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

// stagesOf classifies, with the built-in stage table, the walked sleeps of
// this process's pwrite64 calls on device name. It also returns, by stage,
// the time of the stacks that hold one of the frames sign: a stage that is
// not want there is a stack of the cause classified wrong.
func stagesOf(sink *blkSink, name string, sign []string) (all, signed map[string]time.Duration, total time.Duration) {
	all, signed = map[string]time.Duration{}, map[string]time.Duration{}
	pid := uint32(os.Getpid())
	for _, b := range sinkEvents[event.BlockedStack](sink) {
		if b.Pid != pid || b.Dev.Name != name || b.Call != "pwrite64" || len(b.KernelStack) == 0 {
			continue
		}
		var names []string
		for _, f := range b.KernelStack {
			names = append(names, f.Symbol)
		}
		st := stage.Default().Classify(names, b.Call).Stage
		all[st] += b.Total
		total += b.Total
		if slices.ContainsFunc(names, func(n string) bool { return slices.Contains(sign, n) }) {
			signed[st] += b.Total
		}
	}
	return all, signed, total
}

// The stages of live stacks, on this kernel, for the causes a loop device
// can reproduce: plain O_DIRECT writes wait for the device; writes during
// freezes wait in queue_freeze; many writers on a queue of 2 requests wait
// for tags. Each cause's stage is there, every stack that holds the cause's
// frame has that stage, and no stage nothing causes shows.
func TestSyscallStagesLive(t *testing.T) {
	blkNeedRoot(t)
	old := syscallSelf
	syscallSelf = 0
	t.Cleanup(func() { syscallSelf = old })
	const size = 64 << 20
	for _, tc := range []struct {
		name  string
		load  func(t *testing.T, loop blkLoop)
		want  string   // the cause's stage
		sign  []string // the cause's frames
		share float64  // of the walked sleeps in want, at least
		not   []string
	}{
		{"device", func(t *testing.T, loop blkLoop) {
			_, done, _ := directWriter(t, loop.path, size, 2000, nil)
			<-done
		}, stage.Device, []string{"submit_bio_wait"}, 0.9, []string{stage.QueueFreeze, stage.TagWait, stage.Other}},
		{"queue_freeze", func(t *testing.T, loop blkLoop) {
			stop := make(chan struct{})
			_, wdone, _ := directWriter(t, loop.path, size, 0, stop)
			_, fdone := flipScheduler(t, loop.name, 20, 25*time.Millisecond)
			<-fdone
			close(stop)
			<-wdone
		}, stage.QueueFreeze, queueEnterFrames, 0.1, []string{stage.TagWait}},
		{"tag_wait", func(t *testing.T, loop blkLoop) {
			q := "/sys/block/" + loop.name + "/queue/"
			if b, err := os.ReadFile(q + "scheduler"); err == nil && strings.Contains(string(b), "mq-deadline") {
				os.WriteFile(q+"scheduler", []byte("mq-deadline"), 0)
			}
			if err := os.WriteFile(q+"nr_requests", []byte("2"), 0); err != nil {
				t.Fatalf("nr_requests: %v", err)
			}
			stop := make(chan struct{})
			var dones []<-chan struct{}
			for range 16 {
				_, d, _ := directWriter(t, loop.path, size, 0, stop)
				dones = append(dones, d)
			}
			// a loop device serves in microseconds: few tag waits are long
			// enough for a stack walk, so give them time to add up
			time.Sleep(4 * time.Second)
			close(stop)
			for _, d := range dones {
				<-d
			}
		}, stage.TagWait, []string{"blk_mq_get_tag"}, 0, []string{stage.QueueFreeze}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			loop := newBlkLoop(t, size)
			sink, r := startSyscallOn(t, (syscallProbe{}).Decl().Mechs()[0], time.Second)
			tc.load(t, loop)
			if err := r.Stop(); err != nil {
				t.Fatal(err)
			}
			all, signed, total := stagesOf(sink, loop.name, tc.sign)
			t.Logf("asleep %v (stacks walked): %v; in stacks with %v: %v", total, all, tc.sign, signed)
			if all[tc.want] == 0 || float64(all[tc.want]) < tc.share*float64(total) {
				t.Errorf("%v of %v in %s: want some, and at least %.0f%%", all[tc.want], total, tc.want, tc.share*100)
			}
			for st, d := range signed {
				if st != tc.want {
					t.Errorf("%v of stacks with %v classified %s, not %s", d, tc.sign, st, tc.want)
				}
			}
			for _, s := range tc.not {
				if all[s] > total/100 {
					t.Errorf("%v in %s, which nothing here causes", all[s], s)
				}
			}
		})
	}
}

// A writer that shares its CPUs with busy loops waits in the run queue
// after its wake-ups, and the probe says so: runqueue, not the sleep's
// stage (the research found such waits counted as device).
func TestSyscallRunqueue(t *testing.T) {
	blkNeedRoot(t)
	old := syscallSelf
	syscallSelf = 0
	t.Cleanup(func() { syscallSelf = old })
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	sink, r := startSyscallOn(t, (syscallProbe{}).Decl().Mechs()[0], time.Second)
	var stop atomic.Bool
	var hogs sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		hogs.Add(1)
		go func() {
			defer hogs.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			for !stop.Load() { // busy: it wants the CPU all the time
			}
		}()
	}
	_, done, _ := directWriter(t, loop.path, size, 1000, nil)
	<-done
	stop.Store(true)
	hogs.Wait()
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(os.Getpid())
	var st *event.SyscallStats
	for _, s := range sinkEvents[event.SyscallStats](sink) {
		if s.Pid == pid && s.Dev.Name == loop.name && s.Call == "pwrite64" {
			st = &s
		}
	}
	if st == nil {
		t.Fatal("no pwrite64 stats of the writer")
	}
	t.Logf("1000 writes: asleep %v, in the run queue %v", st.Sleep, st.Runqueue)
	if st.Runqueue <= 0 || st.Runqueue < st.Sleep/10 {
		t.Errorf("in the run queue %v against %v asleep, with %d busy loops on %d CPUs: want at least a tenth", st.Runqueue, st.Sleep, 2*runtime.NumCPU(), runtime.NumCPU())
	}
}

// fio's io_uring engine: its io_uring_enter calls are on the loop device,
// named by the files of the ring's requests.
func TestSyscallIOUring(t *testing.T) {
	blkNeedRoot(t)
	bin, err := exec.LookPath("fio")
	if err != nil {
		scenario.Skip(t, "fio not installed: %v", err)
	}
	const size = 64 << 20
	loop := newBlkLoop(t, size)
	sink, r := startSyscallOn(t, (syscallProbe{}).Decl().Mechs()[0], time.Second)
	cmd := exec.Command(bin, "--name=ring", "--filename="+loop.path, "--rw=randwrite", "--bs=4k", "--direct=1",
		"--ioengine=io_uring", "--iodepth=4", "--thread", "--time_based", "--runtime=1s", "--output-format=terse")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "io_uring") && strings.Contains(string(out), "not supported") {
			scenario.Skip(t, "io_uring not available here: %s", out)
		}
		t.Fatalf("fio: %v\n%s", err, out)
	}
	if err := r.Stop(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	var calls uint64
	var sleep time.Duration
	for _, s := range sinkEvents[event.SyscallStats](sink) {
		if s.Pid == pid && s.Call == "io_uring_enter" {
			if s.Dev.Name != loop.name {
				t.Errorf("io_uring_enter counted on %q, want %s", s.Dev.Name, loop.name)
			}
			calls += s.Latency.Count
			sleep += s.Sleep
		}
	}
	t.Logf("fio (pid %d): %d io_uring_enter calls on %s, asleep %v", pid, calls, loop.name, sleep)
	if calls == 0 {
		t.Fatalf("no io_uring_enter of fio (pid %d) on %s", pid, loop.name)
	}
}

// aioIocb is struct iocb of include/uapi/linux/aio_abi.h (little endian).
type aioIocb struct {
	Data     uint64
	Key      uint32
	RwFlags  uint32
	Opcode   uint16
	Reqprio  int16
	Fildes   uint32
	Buf      uint64
	Nbytes   uint64
	Offset   int64
	Reserved uint64
	Flags    uint32
	Resfd    uint32
}

// aioIoEvent is struct io_event.
type aioIoEvent struct {
	Data, Obj uint64
	Res, Res2 int64
}

// aioSetup makes an aio context, destroyed at t's cleanup.
func aioSetup(t testing.TB) uint64 {
	t.Helper()
	var ctx uint64
	if _, _, e := unix.Syscall(unix.SYS_IO_SETUP, 64, uintptr(unsafe.Pointer(&ctx)), 0); e != 0 {
		t.Fatalf("io_setup: %v", e)
	}
	t.Cleanup(func() { unix.Syscall(unix.SYS_IO_DESTROY, uintptr(ctx), 0, 0) })
	return ctx
}

// aioSubmitRead submits one asynchronous read of len(buf) bytes at offset
// 0 of fd into buf (an io_submit of one iocb), as libaio does.
func aioSubmitRead(t testing.TB, ctx uint64, fd int, buf []byte) {
	cb := aioIocb{Opcode: 0 /* IOCB_CMD_PREAD */, Fildes: uint32(fd), Buf: uint64(uintptr(unsafe.Pointer(&buf[0]))), Nbytes: uint64(len(buf))}
	cbs := [1]*aioIocb{&cb}
	if n, _, e := unix.Syscall(unix.SYS_IO_SUBMIT, uintptr(ctx), 1, uintptr(unsafe.Pointer(&cbs[0]))); e != 0 || n != 1 {
		t.Fatalf("io_submit: %d, %v", n, e)
	}
	runtime.KeepAlive(cbs)
}

// aioWait waits for one completion of ctx (an io_getevents, made again
// when a signal interrupts it), and returns how many io_getevents it made.
func aioWait(t testing.TB, ctx uint64) (calls uint64) {
	var ev [1]aioIoEvent
	for {
		calls++
		n, _, e := unix.Syscall6(unix.SYS_IO_GETEVENTS, uintptr(ctx), 1, 1, uintptr(unsafe.Pointer(&ev[0])), 0, 0)
		if e == unix.EINTR {
			continue // the Go runtime's preemption signal
		}
		if e != 0 || n != 1 {
			t.Fatalf("io_getevents: %d, %v", n, e)
		}
		break
	}
	if ev[0].Res < 0 {
		t.Fatalf("aio read failed: %d", ev[0].Res)
	}
	return calls
}

// Asynchronous I/O (libaio): an io_submit counts on the device of its
// first iocb's file, an io_getevents on the device of its context's last
// io_submit, whichever thread made it: reads of one context on one loop
// device, then on another, then submitted on the first by one thread and
// waited for by another.
func TestSyscallAIO(t *testing.T) {
	blkNeedRoot(t)
	for _, mech := range (syscallProbe{}).Decl().Mechs() {
		t.Run(string(mech), func(t *testing.T) {
			loopA, loopB := newBlkLoop(t, 16<<20), newBlkLoop(t, 16<<20)
			open := func(path string) *directFile {
				d, err := openDirect(path, unix.O_RDONLY, 4096)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(d.Close)
				return d
			}
			dirA, dirB := open(loopA.path), open(loopB.path)
			fdA, fdB, buf := dirA.fd, dirB.fd, dirA.buf
			ctx := aioSetup(t)
			sink, r := startSyscallOn(t, mech, time.Hour)

			const n, k = 200, 50
			onThread := func(f func()) {
				done := make(chan struct{})
				go func() {
					defer close(done)
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
					f()
				}()
				<-done
			}
			var waitsA, waitsB uint64 // io_getevents made, with those a signal interrupted
			onThread(func() {
				for range n {
					aioSubmitRead(t, ctx, fdA, buf)
					waitsA += aioWait(t, ctx)
				}
				for range n {
					aioSubmitRead(t, ctx, fdB, buf)
					waitsB += aioWait(t, ctx)
				}
				for range k {
					aioSubmitRead(t, ctx, fdA, buf)
				}
			})
			onThread(func() {
				for range k {
					waitsA += aioWait(t, ctx)
				}
			})
			if err := r.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			got := map[string]uint64{}
			pid := uint32(os.Getpid())
			for _, s := range sinkEvents[event.SyscallStats](sink) {
				if s.Pid == pid && (s.Dev.Name == loopA.name || s.Dev.Name == loopB.name) {
					got[s.Call+" "+s.Dev.Name] += s.Latency.Count
				}
			}
			want := map[string]uint64{
				"io_submit " + loopA.name: n + k, "io_getevents " + loopA.name: waitsA,
				"io_submit " + loopB.name: n, "io_getevents " + loopB.name: waitsB,
			}
			for c, w := range want {
				if got[c] != w {
					t.Errorf("%s: %d calls, want %d", c, got[c], w)
				}
			}
			if len(got) != len(want) {
				t.Errorf("calls on the loop devices: %v, want %v", got, want)
			}
		})
	}
}
