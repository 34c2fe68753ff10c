package probes

import (
	"os"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
)

// The off-CPU probe's programs on sys_exit, sched_switch and sched_waking
// run through the syscall probe's program there while both run (one
// program per hook), on links of their own otherwise, and either probe
// may stop first: the off-CPU spans keep their user stacks (taken at
// sys_exit), their wakers (sched_waking) and their ends (sched_switch),
// and the syscall probe keeps counting every call, before, through and
// after each hand-off.
func TestHookChain(t *testing.T) {
	blkNeedRoot(t)
	const size = 16 << 20
	hooks := []*hookChain{chainSchedWaking, chainSysExit, chainSchedSwitch}
	for _, tt := range []struct {
		name string
		// syscall is the syscall probe's rung, "" for none.
		syscall event.Mechanism
		// syscallFirst starts the syscall probe before the off-CPU one;
		// offcpuStopsFirst stops the off-CPU probe first.
		syscallFirst, offcpuStopsFirst bool
		// chained are the hooks (of hooks) whose off-CPU program runs
		// through the syscall probe's while both run.
		chained []bool
	}{
		{name: "offcpu alone", chained: []bool{false, false, false}},
		{name: "syscall first, offcpu stops first", syscall: event.MechTPBTF, syscallFirst: true, offcpuStopsFirst: true,
			chained: []bool{true, true, true}},
		{name: "offcpu first, syscall stops first", syscall: event.MechTPBTF, chained: []bool{true, true, true}},
		{name: "syscall on tracepoints", syscall: event.MechTracepoint, syscallFirst: true,
			chained: []bool{true, false, true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			loop := newBlkLoop(t, size)
			osink := &schedProcSink{}
			var ssink *blkSink
			var srun Running
			startSyscall := func() {
				if tt.syscall != "" {
					ssink, srun = startSyscallOn(t, tt.syscall, time.Hour)
				}
			}
			if tt.syscallFirst {
				startSyscall()
			}
			orun, st := offcpuProbe{}.Start(Config{MinLatency: time.Nanosecond, ProcFS: "/proc"}, osink)
			if orun == nil {
				t.Fatalf("starting offcpu: %+v", st)
			}
			offStopped := false
			stopOff := func() {
				if !offStopped {
					offStopped = true
					if err := orun.Stop(); err != nil {
						t.Errorf("stopping offcpu: %v", err)
					}
				}
			}
			defer stopOff()
			if !tt.syscallFirst {
				startSyscall()
			}
			r := orun.(*offcpuRunning)
			checkChained := func(when string, want []bool) {
				t.Helper()
				for i, h := range r.follows {
					if h.c != hooks[i] {
						t.Fatalf("follow %d on %s, want %s", i, h.c.hook, hooks[i].hook)
					}
					if got := h.c.chained(h.f); got != want[i] {
						t.Errorf("%s: %s through the syscall probe's program: %v, want %v", when, h.c.hook, got, want[i])
					}
				}
			}
			checkChained("both running", tt.chained)

			me := uint32(os.Getpid())
			writes := 0
			// spanFrom makes the writer thread sleep in one O_DIRECT
			// write, then spin in user space (no system call, no sleep)
			// until a span of that sleep arrives, seen whole: its kernel
			// stack, its user stack and its waker. While the thread spins,
			// only sys_exit's program can have sent the span with the user
			// stack of its write (a preemption sees another innermost
			// frame: the span would come without one).
			//
			// A wake-up that comes before offcpu_switch has recorded the
			// sleep was not seen (the syscall probe's sc_switch running
			// first widens the race: 2 of 30 runs of main failed); it is
			// kept since wt-b25, but about 1 span in 100 000 still loses
			// its waker (counted, TestOffCPUWakerKept): up to 5 writes,
			// the first span seen whole passes.
			spanFrom := func(when string) {
				t.Helper()
				var ok bool
				for try := 0; try < 5 && !ok; try++ {
					osink.mu.Lock()
					from := len(osink.events)
					osink.mu.Unlock()
					tid, stop, done := spinAfterWrite(t, loop.path)
					ok = blkWaitUntil(2*time.Second, func() bool {
						osink.mu.Lock()
						defer osink.mu.Unlock()
						for _, e := range osink.events[from:] {
							o, isOff := e.(event.OffCPU)
							if isOff && o.Task.Pid == uint32(tid) && len(o.UserStack) > 0 && o.Waker.Comm != "" &&
								offcpuHasFrame(o.KernelStack, "submit_bio_wait", "__blkdev_direct_IO_simple") {
								return true
							}
						}
						return false
					})
					stop.Store(true)
					<-done
					writes++
					if !ok {
						osink.mu.Lock()
						for _, e := range osink.events[from:] {
							if o, isOff := e.(event.OffCPU); isOff && o.Task.Pid == uint32(tid) {
								t.Logf("%s, write %d: span %v, waker %+v, %d user frames", when, try+1, o.Duration, o.Waker, len(o.UserStack))
							}
						}
						osink.mu.Unlock()
					}
				}
				if !ok {
					t.Errorf("%s: no span of the writer's writes with its user stack and its waker while it spun (5 writes)", when)
				}
			}
			spanFrom("both running")

			if tt.syscall != "" && tt.offcpuStopsFirst {
				stopOff()
				// The syscall probe counts on alone.
				stop := make(chan struct{})
				_, done, n := directWriter(t, loop.path, size, 200, stop)
				<-done
				writes += int(n.Load())
			}
			if tt.syscall != "" {
				if err := srun.Stop(); err != nil {
					t.Errorf("stopping syscall: %v", err)
				}
				var count uint64
				for _, s := range sinkEvents[event.SyscallStats](ssink) {
					if s.Pid == me && s.Dev.Name == loop.name && s.Call == "pwrite64" {
						count += s.Latency.Count
					}
				}
				if count != uint64(writes) {
					t.Errorf("syscall probe counted %d pwrite64 calls on %s, want %d", count, loop.name, writes)
				}
				for _, l := range ssink.losses {
					t.Logf("syscall loss: %+v", l)
				}
			}
			if !offStopped {
				// The syscall probe stopped first (or never ran): the
				// off-CPU programs are on links of their own now.
				checkChained("after the syscall probe stopped", []bool{false, false, false})
				spanFrom("after the syscall probe stopped")
				stopOff()
			}
			for _, h := range hooks {
				h.mu.Lock()
				if h.next != nil || h.follower != nil || len(h.own) != 0 {
					t.Errorf("%s's chain not empty after both stopped: leader %v, follower %v, %d on their own", h.hook, h.next != nil, h.follower != nil, len(h.own))
				}
				h.mu.Unlock()
			}
			for _, l := range osink.losses {
				t.Logf("offcpu loss: %+v", l)
			}
		})
	}
}

// spinAfterWrite runs a thread that makes one 4 KiB O_DIRECT write to path
// and then spins in user space until stop is set.
func spinAfterWrite(t *testing.T, path string) (tid int, stop *atomic.Bool, done <-chan struct{}) {
	t.Helper()
	stop = new(atomic.Bool)
	tidc := make(chan int, 1)
	d := make(chan struct{})
	go func() {
		defer close(d)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tidc <- unix.Gettid()
		f, err := openDirect(path, unix.O_WRONLY, 4096)
		if err != nil {
			t.Error(err)
			return
		}
		defer f.Close()
		if _, err := unix.Pwrite(f.fd, f.buf, 0); err != nil {
			t.Errorf("writing %s: %v", path, err)
			return
		}
		for !stop.Load() {
		}
	}()
	return <-tidc, stop, d
}
