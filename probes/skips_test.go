package probes

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// skipObjects is laid out as bpf2go lays out a probe's objects: programs in
// an embedded struct of an unexported type, next to other fields.
type skipObjects struct {
	skipPrograms
	Losses *ebpf.Map
}

type skipPrograms struct {
	Printer *ebpf.Program
	Quiet   *ebpf.Program
	Unused  *ebpf.Program // not loaded: left out
}

// TestDeliverSkips makes the kernel skip runs of a real program and checks
// that they reach the sink as a loss naming the program. The program, on
// raw_tp task_rename and bpf_trace_printk, calls bpf_trace_printk: its own
// tracepoint fires inside its run, and the kernel skips that nested run
// (recursion_misses). A second program that never recurses reports nothing.
func TestDeliverSkips(t *testing.T) {
	blkNeedRoot(t)
	// Before 6.2 bpf_trace_printk held a global lock around its tracepoint,
	// and raw_tp runs had no recursion guard before 5.18/6.0: the nested run
	// would spin on that lock forever. recursion_misses itself is 5.12+. On
	// those kernels only the quiet program runs: nothing may be reported.
	major, minor := kernelRelease(t)
	recurse := major > 6 || (major == 6 && minor >= 2)
	if !recurse {
		t.Logf("kernel %d.%d: the recursion part is left out (it would deadlock before 6.2 on bpf_trace_printk's lock); "+
			"only the program that never recurses runs", major, minor)
	}
	var objs skipObjects
	var err error
	if recurse {
		objs.Printer, err = ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:    "skip_printer",
			Type:    ebpf.RawTracepoint,
			License: "GPL",
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R1, 0x0a78), // "x\n"
				asm.StoreMem(asm.RFP, -8, asm.R1, asm.DWord),
				asm.Mov.Reg(asm.R1, asm.RFP),
				asm.Add.Imm(asm.R1, -8),
				asm.Mov.Imm(asm.R2, 3),
				asm.FnTracePrintk.Call(),
				asm.Mov.Imm(asm.R0, 0),
				asm.Return(),
			},
		})
		if err != nil {
			t.Fatalf("loading the printing program: %v", err)
		}
		defer objs.Printer.Close()
	}
	objs.Quiet, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "skip_quiet",
		Type:         ebpf.RawTracepoint,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		t.Fatalf("loading the quiet program: %v", err)
	}
	defer objs.Quiet.Close()

	want := []*ebpf.Program{objs.Quiet}
	if recurse {
		want = []*ebpf.Program{objs.Printer, objs.Quiet}
	}
	if got := programsOf(&objs); !slices.Equal(got, want) {
		t.Fatalf("programsOf found %v, want the loaded programs in field order %v", got, want)
	}
	for _, a := range []struct {
		tp   string
		prog *ebpf.Program
	}{{"task_rename", objs.Printer}, {"bpf_trace_printk", objs.Printer}, {"task_rename", objs.Quiet}} {
		if a.prog == nil {
			continue
		}
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: a.tp, Program: a.prog})
		if err != nil {
			t.Fatalf("attaching raw_tp %s: %v", a.tp, err)
		}
		defer l.Close()
	}

	// Rename this thread a few times (task_rename), then restore its name.
	const renames = 20
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	comm := fmt.Sprintf("/proc/self/task/%d/comm", unix.Gettid())
	old, err := os.ReadFile(comm)
	if err != nil {
		t.Fatal(err)
	}
	for i := range renames {
		if err := os.WriteFile(comm, fmt.Appendf(nil, "ws-skip-%d", i), 0); err != nil {
			t.Fatalf("renaming the thread: %v", err)
		}
	}
	if err := os.WriteFile(comm, old, 0); err != nil {
		t.Fatalf("restoring the thread's name: %v", err)
	}

	var sink blkSink
	deliverSkips(&sink, "test", programsOf(&objs), nil)
	if !recurse {
		if len(sink.losses) != 0 {
			t.Fatalf("losses %+v from a program that never recursed", sink.losses)
		}
		return
	}
	if len(sink.losses) != 1 {
		t.Fatalf("losses %+v, want one, the printing program's", sink.losses)
	}
	l := sink.losses[0]
	t.Logf("%s", l.What)
	t.Logf("skipped runs: %d for %d renames", l.Count, renames)
	if l.Probe != "test" || !strings.Contains(l.What, "skip_printer") || l.Count < renames {
		t.Errorf("loss %+v, want probe test, program skip_printer, count >= %d", l, renames)
	}
}

// kernelRelease returns the running kernel's major and minor version.
func kernelRelease(t *testing.T) (major, minor int) {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	rel := unix.ByteSliceToString(u.Release[:])
	if _, err := fmt.Sscanf(rel, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", rel, err)
	}
	return major, minor
}
