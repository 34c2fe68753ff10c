package probes

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/event"
)

// offcpuLoopDevice attaches a loop device over a temporary file.
func offcpuLoopDevice(t *testing.T, size int64) string {
	t.Helper()
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	f, err := os.Create(filepath.Join(t.TempDir(), "backing"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", f.Name()).CombinedOutput()
	if err != nil {
		t.Skipf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

// offcpuHasFrame reports whether a stack has a frame of one of the symbols.
func offcpuHasFrame(st []event.Frame, syms ...string) bool {
	for _, f := range st {
		for _, s := range syms {
			if f.Symbol == s {
				return true
			}
		}
	}
	return false
}

func offcpuStackString(st []event.Frame) string {
	var b strings.Builder
	for _, f := range st {
		fmt.Fprintf(&b, "\n    %s [%s]", f, f.Module)
	}
	return b.String()
}

// TestOffCPUQueueFreeze reproduces the seed's chain on a loop device: a
// writer doing O_DIRECT writes blocks in queue enter while a shell switches
// the device's I/O scheduler in a loop, which freezes the queue.
func TestOffCPUQueueFreeze(t *testing.T) {
	schedRequireRoot(t)
	dev := offcpuLoopDevice(t, 64<<20)
	name := filepath.Base(dev)
	schedPath := filepath.Join("/sys/block", name, "queue/scheduler")
	if b, err := os.ReadFile(schedPath); err != nil || !strings.Contains(string(b), "mq-deadline") {
		t.Skipf("no mq-deadline for %s: %q %v", name, b, err)
	}

	sink := &schedProcSink{}
	run, st := offcpuProbe{}.Start(Config{MinLatency: 100 * time.Microsecond, ProcFS: "/proc", SysFS: "/sys"}, sink)
	if run == nil {
		t.Fatalf("start: %+v", st)
	}
	if st.Mechanism != event.MechTPBTF || st.Reason != "" {
		t.Errorf("status %+v", st)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			if err := run.Stop(); err != nil {
				t.Errorf("stop: %v", err)
			}
		}
	}
	defer stop()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The sysfs writer: a shell (echo is a builtin, so the shell itself
	// writes and blocks in the freeze).
	script := fmt.Sprintf("while :; do echo mq-deadline > %[1]s; echo none > %[1]s; done", schedPath)
	sh := exec.CommandContext(ctx, "/bin/sh", "-c", script)
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer sh.Wait()

	// The writer: O_DIRECT 4 KiB writes from this process.
	var wg sync.WaitGroup
	var writeErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		writeErr = offcpuDirectWriter(ctx, dev, 64<<20)
	}()
	defer wg.Wait()

	me := uint32(os.Getpid())
	shPid := uint32(sh.Process.Pid)
	queueEnter := func(e event.Event) bool {
		o, ok := e.(event.OffCPU)
		return ok && o.Task.Tgid == me && offcpuHasFrame(o.KernelStack, "__bio_queue_enter", "blk_queue_enter")
	}
	freezeWait := func(e event.Event) bool {
		o, ok := e.(event.OffCPU)
		return ok && o.Task.Tgid == shPid && offcpuHasFrame(o.KernelStack, "blk_mq_freeze_queue_wait") &&
			offcpuHasFrame(o.KernelStack, "elv_iosched_store", "queue_attr_store")
	}
	_, ok1 := sink.waitFor(20*time.Second, queueEnter)
	_, ok2 := sink.waitFor(10*time.Second, freezeWait)
	cancel()
	wg.Wait()
	stop()
	if writeErr != nil {
		t.Fatalf("writer: %v", writeErr)
	}
	exec.Command("/bin/sh", "-c", "echo none > "+schedPath).Run()

	if !ok1 || !ok2 {
		n := 0
		for _, e := range sink.events {
			if o, ok := e.(event.OffCPU); ok && (o.Task.Tgid == me || o.Task.Tgid == shPid) && n < 5 {
				n++
				t.Logf("%s (%d/%d) %v waker %s:%s", o.Task.Comm, o.Task.Pid, o.Task.Tgid, o.Duration, o.Waker.Comm, offcpuStackString(o.KernelStack))
			}
		}
		t.Fatalf("queue-enter wait of the writer seen: %v; freeze wait of the shell seen: %v (of %d events)", ok1, ok2, len(sink.events))
	}

	e, _ := sink.find(queueEnter)
	qe := e.(event.OffCPU)
	t.Logf("writer %s blocked %v in queue enter, woken by %+v:%s\n  user:%s", qe.Task.Comm, qe.Duration, qe.Waker,
		offcpuStackString(qe.KernelStack), offcpuStackString(qe.UserStack))
	if qe.Task.Pid == 0 || qe.Duration < 100*time.Microsecond || qe.Start <= 0 {
		t.Errorf("span %+v", qe)
	}
	if qe.KernelStack[0].Module != "kernel" || !strings.Contains(qe.KernelStack[0].Symbol, "schedule") {
		t.Errorf("innermost kernel frame %+v, want the scheduler", qe.KernelStack[0])
	}
	// The writer is this Go test binary: its user frames resolve through
	// the pclntab (go test strips .symtab).
	exe, _ := os.Executable()
	if len(qe.UserStack) == 0 || qe.UserStack[0].Module != exe || !strings.Contains(qe.UserStack[0].Symbol, "syscall") {
		t.Errorf("writer user stack, want syscall frames in %s:%s", exe, offcpuStackString(qe.UserStack))
	}

	e, _ = sink.find(freezeWait)
	fw := e.(event.OffCPU)
	t.Logf("shell %s blocked %v in the freeze, woken by %+v:%s\n  user:%s", fw.Task.Comm, fw.Duration, fw.Waker,
		offcpuStackString(fw.KernelStack), offcpuStackString(fw.UserStack))
	// dash is stripped; the innermost user frame is libc's write.
	if len(fw.UserStack) == 0 || !strings.Contains(fw.UserStack[0].Module, "libc") ||
		!strings.Contains(fw.UserStack[0].Symbol, "write") {
		t.Errorf("shell user stack, want libc write first:%s", offcpuStackString(fw.UserStack))
	}
	for _, l := range sink.losses {
		t.Logf("loss: %+v", l)
	}
	// Who ends each wait (for the report): the drain's last completion wakes
	// everything on mq_freeze_wq, the unfreeze wakes the enter waiters again.
	for _, c := range []struct {
		name  string
		match func(event.Event) bool
	}{{"queue enter", queueEnter}, {"freeze wait", freezeWait}} {
		wakers := map[string]int{}
		for _, e := range sink.events {
			if c.match(e) {
				wakers[e.(event.OffCPU).Waker.Comm]++
			}
		}
		t.Logf("%s woken by: %v", c.name, wakers)
	}
}

// offcpuDirectWriter writes 4 KiB blocks with O_DIRECT over the first size
// bytes of dev until ctx is done.
func offcpuDirectWriter(ctx context.Context, dev string, size int64) error {
	fd, err := unix.Open(dev, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("opening %s: %w", dev, err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	for off := int64(0); ctx.Err() == nil; off = (off + 4096) % size {
		if _, err := unix.Pwrite(fd, buf, off); err != nil {
			return fmt.Errorf("writing %s: %w", dev, err)
		}
	}
	return nil
}

// TestOffCPUStateFromTask runs the probe as on kernels before 5.18, whose
// sched_switch has no prev_state: the state is read from the task with
// CO-RE. An O_DIRECT writer waiting for its bio shows up in D state.
func TestOffCPUStateFromTask(t *testing.T) {
	schedRequireRoot(t)
	for _, tt := range []struct {
		name string
		args int
	}{{"prev_state argument", 4}, {"state from task", 3}} {
		t.Run(tt.name, func(t *testing.T) {
			orig := offcpuSwitchArgs
			offcpuSwitchArgs = func(*btf.Spec) (int, error) { return tt.args, nil }
			defer func() { offcpuSwitchArgs = orig }()

			dev := offcpuLoopDevice(t, 16<<20)
			sink := &schedProcSink{}
			run, st := offcpuProbe{}.Start(Config{MinLatency: time.Nanosecond, ProcFS: "/proc"}, sink)
			if run == nil {
				t.Fatalf("start: %+v", st)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error)
			go func() { done <- offcpuDirectWriter(ctx, dev, 16<<20) }()
			me := uint32(os.Getpid())
			_, ok := sink.waitFor(10*time.Second, func(e event.Event) bool {
				o, ok := e.(event.OffCPU)
				return ok && o.Task.Tgid == me && offcpuHasFrame(o.KernelStack, "submit_bio_wait")
			})
			cancel()
			if err := <-done; err != nil {
				t.Error(err)
			}
			if err := run.Stop(); err != nil {
				t.Error(err)
			}
			if !ok {
				t.Fatalf("no D-state wait in submit_bio_wait among %d events", len(sink.events))
			}
		})
	}
}

// BenchmarkContextSwitch measures a context switch (a pipe ping-pong
// between two threads: two switches per iteration) with and without the
// offcpu probe attached.
func BenchmarkContextSwitch(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	for _, attached := range []bool{false, true} {
		b.Run(fmt.Sprintf("offcpu=%v", attached), func(b *testing.B) {
			var prog *ebpf.Program
			if attached {
				// Count the program's own run time (kernel.bpf_stats_enabled).
				if stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
					defer stats.Close()
				}
				run, st := offcpuProbe{}.Start(Config{MinLatency: time.Millisecond, ProcFS: "/proc"}, &schedProcSink{})
				if run == nil {
					b.Fatalf("start: %+v", st)
				}
				defer run.Stop()
				prog = run.(*offcpuRunning).objs.OffcpuSwitch
				defer func() {
					if st, err := prog.Stats(); err == nil && st.RunCount > 0 {
						b.ReportMetric(float64(st.Runtime.Nanoseconds())/float64(st.RunCount), "ns/sched_switch")
					}
				}()
			}
			var p1, p2 [2]int
			if err := unix.Pipe(p1[:]); err != nil {
				b.Fatal(err)
			}
			if err := unix.Pipe(p2[:]); err != nil {
				b.Fatal(err)
			}
			defer func() {
				for _, fd := range []int{p1[0], p1[1], p2[0], p2[1]} {
					unix.Close(fd)
				}
			}()
			go func() {
				runtime.LockOSThread()
				buf := []byte{0}
				for {
					if n, _ := unix.Read(p1[0], buf); n != 1 || buf[0] == 1 {
						return
					}
					unix.Write(p2[1], buf)
				}
			}()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			buf := []byte{0}
			b.ResetTimer()
			for b.Loop() {
				unix.Write(p1[1], []byte{0})
				unix.Read(p2[0], buf)
			}
			unix.Write(p1[1], []byte{1})
		})
	}
}

func TestTrimStacks(t *testing.T) {
	k := func(syms ...string) []event.Frame {
		var fr []event.Frame
		for _, s := range syms {
			fr = append(fr, event.Frame{Symbol: s, Module: "kernel"})
		}
		return fr
	}
	tests := []struct {
		name     string
		in, want []event.Frame
	}{
		{"program then dispatch", k("_einittext", "bpf_trace_run4", "__schedule", "schedule"), k("__schedule", "schedule")},
		{"named program", k("bpf_prog_1234_offcpu_switch", "__bpf_trace_sched_switch", "__traceiter_sched_switch", "__schedule"), k("__schedule")},
		{"no machinery", k("__schedule", "schedule"), k("__schedule", "schedule")},
		{"only machinery is kept", k("bpf_trace_run4"), k("bpf_trace_run4")},
		{"empty", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := trimTracingFrames(tt.in); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	user := []event.Frame{{Symbol: "__write", Module: "/lib/libc.so.6"}, {Module: "[anon]"}, {Addr: 0xa656e69}, {Symbol: "main", Module: "/bin/x"}}
	if got := trimUserGarbage(user); !reflect.DeepEqual(got, user[:2]) {
		t.Errorf("trimUserGarbage = %v", got)
	}
}
