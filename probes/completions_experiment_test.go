package probes

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// tpCounter counts a tracepoint's hits on every CPU with perf counting
// events (no BPF, no record: perf's own probe on the tracepoint, a sibling
// of the BPF programs' in the same probe array), optionally filtered.
type tpCounter struct{ fds []int }

func newTPCounter(t testing.TB, tp, filter string) *tpCounter {
	t.Helper()
	b, err := os.ReadFile("/sys/kernel/tracing/events/" + tp + "/id")
	if err != nil {
		t.Fatal(err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	c := &tpCounter{}
	t.Cleanup(c.close)
	for cpu := 0; cpu < runtime.NumCPU(); cpu++ {
		attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_TRACEPOINT, Config: id, Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{})), Bits: unix.PerfBitDisabled}
		fd, err := unix.PerfEventOpen(&attr, -1, cpu, -1, unix.PERF_FLAG_FD_CLOEXEC)
		if err != nil {
			t.Fatalf("perf_event_open %s cpu %d: %v", tp, cpu, err)
		}
		c.fds = append(c.fds, fd)
		if filter != "" {
			p, _ := unix.BytePtrFromString(filter)
			if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.PERF_EVENT_IOC_SET_FILTER, uintptr(unsafe.Pointer(p))); e != 0 {
				t.Fatalf("filter %q on %s: %v", filter, tp, e)
			}
		}
		if err := unix.IoctlSetInt(fd, unix.PERF_EVENT_IOC_ENABLE, 0); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (c *tpCounter) read(t testing.TB) uint64 {
	var n uint64
	for _, fd := range c.fds {
		var b [8]byte
		if _, err := unix.Read(fd, b[:]); err != nil {
			t.Fatal(err)
		}
		n += *(*uint64)(unsafe.Pointer(&b[0]))
	}
	return n
}

func (c *tpCounter) close() {
	for _, fd := range c.fds {
		unix.Close(fd)
	}
	c.fds = nil
}

// diskStat reads /sys/block/<name>/stat's fields.
func diskStatFields(t testing.TB, name string) []uint64 {
	t.Helper()
	b, err := os.ReadFile("/sys/block/" + name + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.ParseUint(f, 10, 64)
		out = append(out, n)
	}
	return out
}

// TestCompletionsExperiment (WHYSLOW_COMPLETIONS_EXPERIMENT=loop|vda; for
// vda, VDA_FILE names a large file on the root file system to read with
// O_DIRECT: /dev/vda cannot be opened here; DD=0 runs no dd processes
// beside fio; FIO_EXTRA adds fio options) is
// issue 16's experiment on missed completions: under fio, the kernel's
// run count of the chain head on block_rq_complete against perf's count
// of the tracepoint, the disk's own completed I/Os, and what the probes
// saw and counted missed.
func TestCompletionsExperiment(t *testing.T) {
	which := os.Getenv("WHYSLOW_COMPLETIONS_EXPERIMENT")
	if which == "" {
		t.Skip("WHYSLOW_COMPLETIONS_EXPERIMENT=loop|vda runs it")
	}
	blkNeedRoot(t)
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	var name, path string
	var major, minor uint32
	if which == "vda" {
		// /dev/vda cannot be opened here: direct reads of a file on
		// the root file system (vda), read-only.
		name, path, major, minor = "vda", os.Getenv("VDA_FILE"), 254, 0
	} else {
		l := newBlkLoop(t, 256<<20)
		name, path, major, minor = l.name, l.path, l.major, l.minor
		if s := os.Getenv("SCHED"); s != "" {
			os.WriteFile("/sys/block/"+name+"/queue/scheduler", []byte(s), 0)
		}
	}
	devt := major<<20 | minor
	filter := fmt.Sprintf("dev == %d", devt)
	cAll := newTPCounter(t, "block/block_rq_complete", "")
	cDev := newTPCounter(t, "block/block_rq_complete", filter)
	iDev := newTPCounter(t, "block/block_rq_issue", filter)
	dDev := newTPCounter(t, "block/block_io_done", filter)
	mDev := newTPCounter(t, "block/block_rq_merge", filter)
	// Two no-op programs of their own on the tracepoint, a tp_btf and a
	// raw_tp: their run counts against the chain head's.
	noop := func(typ ebpf.ProgramType, at ebpf.AttachType) *ebpf.Program {
		spec := &ebpf.ProgramSpec{Type: typ, AttachType: at, License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}}
		if typ == ebpf.Tracing {
			spec.AttachTo = "block_rq_complete"
		}
		p, err := ebpf.NewProgram(spec)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	btfNoop := noop(ebpf.Tracing, ebpf.AttachTraceRawTp)
	rawNoop := noop(ebpf.RawTracepoint, ebpf.AttachNone)
	l1, err := link.AttachTracing(link.TracingOptions{Program: btfNoop})
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	l2, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "block_rq_complete", Program: rawNoop})
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	runs := func(p *ebpf.Program) (uint64, uint64) {
		s, err := p.Stats()
		if err != nil {
			t.Fatal(err)
		}
		return s.RunCount, s.RecursionMisses
	}
	sink := new(blkSink)
	g := Start(Config{MinLatency: time.Hour, SysFS: "/sys", ProcFS: "/proc"}, sink, submitProbe{}, serviceProbe{}, devfaultProbe{})
	t.Cleanup(func() { g.Stop() })
	var sub *submitRunning
	var svc *serviceRunning
	g.mu.Lock()
	for _, s := range g.running {
		switch r := s.r.(type) {
		case *submitRunning:
			sub = r
		case *serviceRunning:
			svc = r
		}
	}
	g.mu.Unlock()
	t.Logf("chain: %s", chainRqComplete.order())
	head := sub.done.prog
	snap := func() (run, miss, all, dev, iss, done, merge uint64, st []uint64) {
		s, err := head.Stats()
		if err != nil {
			t.Fatal(err)
		}
		all = cAll.read(t)
		return s.RunCount, s.RecursionMisses, all, cDev.read(t), iDev.read(t), dDev.read(t), mDev.read(t), diskStatFields(t, name)
	}
	run0, miss0, all0, dev0, iss0, done0, merge0, st0 := snap()
	// The no-op programs' counts from here on, as the head's.
	b0, bm0 := runs(btfNoop)
	r0, rm0 := runs(rawNoop)
	allB0 := all0
	rw := "randrw"
	if which == "vda" {
		rw = "randread"
	}
	args := []string{"--name=x", "--filename=" + path, "--rw=" + rw, "--bs=4k", "--direct=1", "--ioengine=libaio", "--iodepth=32", "--numjobs=2", "--time_based", "--runtime=12", "--group_reporting", "--size=200M"}
	if which == "vda" {
		args = []string{"--name=x", "--filename=" + path, "--rw=randread", "--bs=4k", "--direct=1", "--ioengine=libaio", "--iodepth=16", "--numjobs=1", "--time_based", "--runtime=12", "--readonly"}
	}
	if extra := os.Getenv("FIO_EXTRA"); extra != "" {
		args = append(args, strings.Fields(extra)...)
	}
	fio := exec.Command("fio", args...)
	fioDone := make(chan error, 1)
	go func() { out, err := fio.CombinedOutput(); _ = out; fioDone <- err }()
	if which != "vda" && os.Getenv("DD") != "0" {
		var dd ddSpawner
		dd.run(t, path, 1500, 2, 1, 4000)
	}
	if err := <-fioDone; err != nil {
		t.Fatalf("fio: %v", err)
	}
	time.Sleep(500 * time.Millisecond)
	run1, miss1, all1, dev1, iss1, done1, merge1, st1 := snap()
	b1, bm1 := runs(btfNoop)
	r1, rm1 := runs(rawNoop)
	// Completions between the reads add a few on a busy machine.
	if d := max(b1-b0, r1-r0) - (run1 - run0); d > 0 && d < 10 {
		t.Logf("the no-op programs ran %d more than the head: completions between the reads", d)
		b1, r1 = b0+run1-run0, r0+run1-run0
	}
	t.Logf("no-op tp_btf runs %d misses %d, no-op raw_tp runs %d misses %d (same window as the head's)", b1-b0, bm1-bm0, r1-r0, rm1-rm0)
	// The decisive comparison: whyslow's chain head runs exactly where
	// two BPF programs of no consequence, attached on their own, run.
	if b1-b0 != r1-r0 || b1-b0 != run1-run0 {
		t.Errorf("run counts differ: no-op tp_btf %d, no-op raw_tp %d, whyslow's head %d", b1-b0, r1-r0, run1-run0)
	}
	t.Logf("perf block_rq_complete all devices over the same window: %d", all1-allB0)
	cp := new(blkSink)
	if err := g.Checkpoint(cp); err != nil {
		t.Fatal(err)
	}
	_ = svc
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
	// stat fields: 0 reads 4 writes 11 discards 15 flushes (completed)
	ios := func(st []uint64) uint64 { return st[0] + st[4] + st[11] + st[15] }
	t.Logf("%s: chain head run_cnt +%d recursion_misses +%d; perf block_rq_complete all devices +%d", name, run1-run0, miss1-miss0, all1-all0)
	t.Logf("%s: perf rq_complete +%d rq_issue +%d io_done +%d rq_merge +%d; stat ios +%d (r %d w %d d %d f %d) merges r %d w %d",
		name, dev1-dev0, iss1-iss0, done1-done0, merge1-merge0, ios(st1)-ios(st0), st1[0]-st0[0], st1[4]-st0[4], st1[11]-st0[11], st1[15]-st0[15], st1[1]-st0[1], st1[5]-st0[5])
	if h, ok := sink.hist(timeline.HistService, name); ok {
		t.Logf("%s: service histogram count %d (whole run)", name, h.h.Count)
	}
	var reqs, bios uint64
	for _, u := range sinkEvents[event.IOUsage](sink) {
		if u.Dev.Name == name {
			reqs += u.Requests
			bios += u.IOs
		}
	}
	t.Logf("%s: submit io usage bios %d requests %d (whole run)", name, bios, reqs)
	for _, u := range sinkEvents[event.IOUsage](sink) {
		if u.Dev.Name == name && u.Op != "read" && u.Op != "write" {
			t.Logf("%s: io usage %s %s ios %d requests %d", name, u.Task.Comm, u.Op, u.IOs, u.Requests)
		}
	}
	for _, l := range sink.losses {
		if l.Count > 0 {
			t.Logf("loss: %s: %d %s", l.Probe, l.Count, l.What)
		}
	}
}
