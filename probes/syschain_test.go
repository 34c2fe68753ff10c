package probes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// With the syscall probe on tp_btf, the sysfs probe's open handling and
// the exec probe's failed-exec handling run tail-called behind its
// programs on sys_enter and sys_exit (behind the off-CPU probe's on
// sys_exit): no syscall tracepoint of theirs is attached, so the kernel
// runs no second handler on every system call. Writes of a queue
// attribute and failed execs are still seen, while chained, and after any
// of the four probes stops first (the others go back to their
// tracepoints or close the chain over the gap).
func TestHookChainSyscalls(t *testing.T) {
	blkNeedRoot(t)
	for _, stopFirst := range []string{"syscall", "sysfs", "exec", "offcpu"} {
		t.Run(stopFirst+" stops first", func(t *testing.T) {
			loop := newBlkLoop(t, 16<<20)
			fsink := new(blkSink)
			esink := &schedProcSink{}
			osink := &schedProcSink{}
			// sysfs and exec start first, on their tracepoints, and move
			// into the chain as the syscall probe starts; off-CPU after.
			frun, st := startSysfs(Config{SysFS: "/sys", ProcFS: "/proc"}, fsink, true)
			if frun == nil {
				t.Fatalf("starting sysfs: %+v", st)
			}
			defer frun.Stop()
			erun, st := execProbe{}.Start(Config{ProcFS: "/proc", SysFS: "/sys", FailedExecs: true}, esink)
			if erun == nil {
				t.Fatalf("starting exec: %+v", st)
			}
			defer erun.Stop()
			_, srun := startSyscallOn(t, event.MechTPBTF, time.Hour)
			orun, st := offcpuProbe{}.Start(Config{MinLatency: time.Hour, ProcFS: "/proc"}, osink)
			if orun == nil {
				t.Fatalf("starting offcpu: %+v", st)
			}
			defer orun.Stop()
			runs := map[string]Running{"syscall": srun, "sysfs": frun, "exec": erun, "offcpu": orun}

			check := func(when string, running map[string]bool) {
				t.Helper()
				enter, exit := chainSysEnter.order(), chainSysExit.order()
				t.Logf("%s: sys_enter %s, sys_exit %s", when, enter, exit)
				var want []string
				if running["syscall"] {
					// No tracepoint: one program on each hook.
					if strings.Count(enter, "|") != 1 || strings.Count(exit, "|") != 1 || strings.Contains(enter+exit, "~") {
						t.Errorf("%s: not one chain per hook: sys_enter %s, sys_exit %s", when, enter, exit)
					}
				} else {
					if running["sysfs"] {
						want = append(want, "sys_enter_openat")
					}
					if running["exec"] {
						want = append(want, "sys_enter_execve")
						if !running["offcpu"] {
							want = append(want, "sys_exit_execve")
						}
					}
				}
				if got := syscallTracepointsOf(t); strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("%s: syscall tracepoints with a program of this process %v, want %v", when, got, want)
				}
				if running["sysfs"] {
					writeScheduler(t, when, loop.name, fsink)
				}
				if running["exec"] {
					failExec(t, when, esink)
				}
			}
			all := map[string]bool{"syscall": true, "sysfs": true, "exec": true, "offcpu": true}
			check("all four running", all)
			if err := runs[stopFirst].Stop(); err != nil {
				t.Fatalf("stopping %s: %v", stopFirst, err)
			}
			delete(all, stopFirst)
			check(stopFirst+" stopped", all)
			// Then the others, the syscall probe (if still running) next.
			for _, n := range []string{"syscall", "exec", "offcpu", "sysfs"} {
				if !all[n] {
					continue
				}
				if err := runs[n].Stop(); err != nil {
					t.Fatalf("stopping %s: %v", n, err)
				}
				delete(all, n)
				if len(all) > 0 {
					check(n+" stopped too", all)
				}
			}
			if e, x := chainSysEnter.order(), chainSysExit.order(); e != "" || x != "" {
				t.Errorf("chains not empty after all stopped: sys_enter %q, sys_exit %q", e, x)
			}
			if got := syscallTracepointsOf(t); len(got) > 0 {
				t.Errorf("syscall tracepoints left attached: %v", got)
			}
		})
	}
}

// writeScheduler writes a loop device's scheduler from a shell and waits
// for the sysfs probe to report it.
func writeScheduler(t *testing.T, when, dev string, sink *blkSink) {
	t.Helper()
	sched := "/sys/block/" + dev + "/queue/scheduler"
	sh := exec.Command("sh", "-c", "echo none > "+sched)
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	pid := uint32(sh.Process.Pid)
	if !blkWaitUntil(5*time.Second, func() bool {
		for _, w := range sink.sysfsWrites() {
			if w.Task.Tgid == pid && w.Device == dev && w.Attr == "queue/scheduler" {
				return true
			}
		}
		return false
	}) {
		t.Errorf("%s: the sysfs probe did not see sh %d write %s", when, pid, sched)
	}
}

var failedExecs int

// failExec runs a missing program from a shell and waits for the exec
// probe to report the failed exec with ENOENT.
func failExec(t *testing.T, when string, sink *schedProcSink) {
	t.Helper()
	failedExecs++
	missing := filepath.Join("/nonexistent", "whyslow-missing-"+strconv.Itoa(failedExecs))
	sh := exec.Command("/bin/sh", "-c", missing+" 2>/dev/null; true")
	if out, err := sh.CombinedOutput(); err != nil {
		t.Fatalf("sh: %v: %s", err, out)
	}
	if _, ok := sink.waitFor(5*time.Second, func(e event.Event) bool {
		x, ok := e.(event.Exec)
		return ok && x.Filename == missing && x.Ret == -int32(unix.ENOENT)
	}); !ok {
		t.Errorf("%s: the exec probe did not see the failed exec of %s", when, missing)
	}
}

// syscallTracepointsOf lists the syscalls: tracepoints (sys_enter_openat,
// ...) that a BPF program of this process is attached to through a perf
// event: the kernel's BPF_TASK_FD_QUERY on each perf event fd (as bpftool
// perf list does), sorted by the order they appear in fds.
func syscallTracepointsOf(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	seen := map[string]bool{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)); err != nil || l != "anon_inode:[perf_event]" {
			continue
		}
		var buf [128]byte
		attr := struct {
			pid, fd, flags, bufLen uint32
			buf                    uint64
			progID, fdType         uint32
			probeOffset, probeAddr uint64
		}{pid: uint32(os.Getpid()), fd: uint32(fd), bufLen: uint32(len(buf)), buf: uint64(uintptr(unsafe.Pointer(&buf[0])))}
		const bpfTaskFDQuery, fdTypeTracepoint = 20, 1
		_, _, errno := unix.Syscall(unix.SYS_BPF, bpfTaskFDQuery, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
		if errno != 0 || attr.fdType != fdTypeTracepoint {
			continue
		}
		name := unix.ByteSliceToString(buf[:])
		if strings.HasPrefix(name, "sys_enter_") || strings.HasPrefix(name, "sys_exit_") {
			if !seen[name] && (name == "sys_enter_openat" || name == "sys_enter_execve" || name == "sys_exit_execve" || !strings.Contains(name, "open") && !strings.Contains(name, "exec")) {
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	sortByWant(out)
	return out
}

// sortByWant orders the names as check lists them.
func sortByWant(s []string) {
	rank := map[string]int{"sys_enter_openat": 0, "sys_enter_execve": 1, "sys_exit_execve": 2}
	for i := 1; i < len(s); i++ {
		for j := i; j > 0; j-- {
			ri, ok1 := rank[s[j]]
			rj, ok2 := rank[s[j-1]]
			if !ok1 {
				ri = 99
			}
			if !ok2 {
				rj = 99
			}
			if ri >= rj {
				break
			}
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Started at once in a Group, as whyslow starts them, the sysfs, exec
// and off-CPU probes' programs wait for the syscall probe's
// (chainwait.go) and go straight into its slots on sys_enter, sys_exit,
// sched_switch and sched_waking: no syscall tracepoint or link of theirs
// is attached only to be detached moments later (each such detach made
// the start wait for the kernel: some 250 ms in all on 6.18). With the
// syscall probe on its tracepoint rung, which leads no sys_enter/sys_exit
// chain, they take their own ways once it has started. Either way writes
// of a queue attribute and failed execs are seen.
func TestHookChainGroupStart(t *testing.T) {
	blkNeedRoot(t)
	for _, mech := range []event.Mechanism{event.MechTPBTF, event.MechTracepoint} {
		t.Run("syscall on "+string(mech), func(t *testing.T) {
			loop := newBlkLoop(t, 16<<20)
			fsink, esink := new(blkSink), &schedProcSink{}
			before := chainDetours()
			cfg := Config{MinLatency: time.Hour, SysFS: "/sys", ProcFS: "/proc", FailedExecs: true,
				Mechanism: MechanismChoice{Per: map[string]event.Mechanism{event.ProbeSyscall: mech}}}
			g := Start(cfg, teeSink{fsink, esink}, syscallProbe{}, sysfsProbe{}, execProbe{}, offcpuProbe{})
			stopped := false
			defer func() {
				if !stopped {
					g.Stop()
				}
			}()
			for _, st := range g.Statuses() {
				if st.Status != event.StatusOK {
					t.Fatalf("%s did not start: %+v", st.Name, st)
				}
				if st.Name == event.ProbeSyscall && st.Mechanism != mech {
					t.Fatalf("syscall probe on %s, want %s", st.Mechanism, mech)
				}
			}
			if got := chainDetours(); got != before {
				t.Errorf("own ways left for a slot during the start: %d, want none", got-before)
			}
			enter, exit := chainSysEnter.order(), chainSysExit.order()
			t.Logf("sys_enter %s, sys_exit %s", enter, exit)
			var want []string
			if mech == event.MechTPBTF {
				if strings.Count(enter, "|") != 1 || strings.Count(exit, "|") != 1 || strings.Contains(enter+exit, "~") {
					t.Errorf("not one chain per hook: sys_enter %s, sys_exit %s", enter, exit)
				}
			} else {
				// The exec probe's exit program behind the off-CPU
				// probe's, the entries on their tracepoints.
				want = []string{"sys_enter_openat", "sys_enter_execve"}
				if strings.Count(exit, "|") != 1 || strings.Contains(exit, "~") {
					t.Errorf("sys_exit %s: want the off-CPU probe's program attached, the exec probe's in its slot", exit)
				}
			}
			// (The syscall probe's own on its tracepoint rung aside.)
			var got []string
			for _, tp := range syscallTracepointsOf(t) {
				if strings.Contains(tp, "open") || strings.Contains(tp, "exec") {
					got = append(got, tp)
				}
			}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("the sysfs and exec probes' syscall tracepoints %v, want %v", got, want)
			}
			writeScheduler(t, "started in a group", loop.name, fsink)
			failExec(t, "started in a group", esink)
			stopped = true
			if err := g.Stop(); err != nil {
				t.Fatal(err)
			}
			if e, x := chainSysEnter.order(), chainSysExit.order(); e != "" || x != "" {
				t.Errorf("chains not empty after the stop: sys_enter %q, sys_exit %q", e, x)
			}
			if got := syscallTracepointsOf(t); len(got) > 0 {
				t.Errorf("syscall tracepoints left attached: %v", got)
			}
		})
	}
}

// chainDetours are the own ways left for a slot so far on the chains
// of the syscall probe's hooks.
func chainDetours() int {
	n := 0
	for _, c := range []*rqChain{chainSysEnter, chainSysExit} {
		c.mu.Lock()
		n += c.detours
		c.mu.Unlock()
	}
	for _, c := range []*hookChain{chainSchedSwitch, chainSchedWaking} {
		c.mu.Lock()
		n += c.detours
		c.mu.Unlock()
	}
	return n
}

// teeSink delivers to two sinks.
type teeSink struct{ a, b Sink }

func (s teeSink) Event(e event.Event) { s.a.Event(e); s.b.Event(e) }
func (s teeSink) Loss(l event.Loss)   { s.a.Loss(l); s.b.Loss(l) }
func (s teeSink) Histogram(kind timeline.HistKind, dev event.Device, h *hist.Histogram) {
	s.a.Histogram(kind, dev, h)
	s.b.Histogram(kind, dev, h)
}
