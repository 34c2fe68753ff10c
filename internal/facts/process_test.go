package facts

import (
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/timeline"
)

func latencies(ns ...uint64) hist.Sparse {
	var h hist.Histogram
	for _, v := range ns {
		h.Add(v)
	}
	return hist.Compact(&h)
}

var (
	vda    = event.Device{Major: 254, Minor: 0, Name: "vda"}
	freeze = frames("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio", "submit_bio_wait")
	ioWait = frames("__schedule", "schedule", "io_schedule_timeout", "submit_bio_wait", "__blkdev_direct_IO_simple")
	fsync  = frames("__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "folio_wait_writeback", "__filemap_fdatawait_range")
)

func processTimeline() *timeline.Timeline {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(10 * time.Second)}
	at := event.Mono(10 * time.Second)
	ms := uint64(time.Millisecond)
	tl.Add(event.Process{Time: 1, Pid: 100, Comm: "fio", Cgroup: "/db.slice", Blkio: "/db"})
	// fio: 4 pwrite64 on loop0 (1, 2, 3, 94 ms), 2 fdatasync on loop0, 1 pread64 on vda.
	tl.Add(event.SyscallStats{Time: at, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: loop0,
		Latency: latencies(1*ms, 2*ms, 3*ms, 94*ms), Sleep: 90 * time.Millisecond, Runqueue: 6 * time.Millisecond})
	tl.Add(event.SyscallStats{Time: at, Pid: 100, Comm: "fio", Call: "fdatasync", Dev: loop0,
		Latency: latencies(5*ms, 5*ms), Sleep: 8 * time.Millisecond})
	tl.Add(event.SyscallStats{Time: at, Pid: 100, Comm: "fio", Call: "pread64", Dev: vda,
		Latency: latencies(1 * ms), Sleep: time.Millisecond})
	// pwrite64: 60 ms in queue enter, 20 in I/O waits, 10 not walked, so
	// shared 3:1.
	tl.Add(event.BlockedStack{Time: at, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: loop0, Total: 60 * time.Millisecond, Count: 2, KernelStack: freeze})
	tl.Add(event.BlockedStack{Time: at, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: loop0, Total: 20 * time.Millisecond, Count: 3, KernelStack: ioWait})
	tl.Add(event.BlockedStack{Time: at, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: loop0, Total: 10 * time.Millisecond, Count: 9, Unwalked: true})
	// fdatasync: its writeback wait is its own I/O; 2 ms lost.
	tl.Add(event.BlockedStack{Time: at, Pid: 100, Comm: "fio", Call: "fdatasync", Dev: loop0, Total: 6 * time.Millisecond, Count: 2, KernelStack: fsync})
	tl.Add(event.BlockedStack{Time: at, Pid: 100, Comm: "fio", Call: "fdatasync", Dev: loop0, Total: 2 * time.Millisecond, Count: 1})
	// pread64 on vda: a stack no rule knows.
	tl.Add(event.BlockedStack{Time: at, Pid: 100, Comm: "fio", Call: "pread64", Dev: vda, Total: time.Millisecond, Count: 1,
		KernelStack: frames("__schedule", "schedule", "msleep", "mydrv_wait", "mydrv_read")})
	// A fast writer on vda that never slept.
	tl.Add(event.SyscallStats{Time: at, Pid: 200, Comm: "logger", Call: "write", Dev: vda, Latency: latencies(10_000, 20_000)})
	tl.Add(event.Syscall{Start: event.Mono(2 * time.Second), Duration: 94 * time.Millisecond, Task: event.Task{Pid: 101, Tgid: 100, Comm: "fio"},
		Call: "pwrite64", Dev: loop0, Sleep: 90 * time.Millisecond, Ret: 4096})
	tl.Add(event.Syscall{Start: event.Mono(3 * time.Second), Duration: 5 * time.Millisecond, Task: event.Task{Pid: 101, Tgid: 100, Comm: "fio"},
		Call: "fdatasync", Dev: loop0})
	// The devices, as the block probes see them.
	tl.Device(loop0)
	tl.Device(vda)
	tl.Sort()
	return tl
}

func TestProcesses(t *testing.T) {
	run := Build(processTimeline(), Options{})
	if len(run.Processes) != 2 {
		t.Fatalf("%d processes, want 2: %+v", len(run.Processes), run.Processes)
	}
	p := run.Processes[0]
	if p.Pid != 100 || p.Comm != "fio" || p.Cgroup != "/db.slice" || p.Blkio != "/db" {
		t.Errorf("first process %+v, want fio (pid 100) in /db.slice", p)
	}
	if want := []string{"loop0", "vda"}; strings.Join(p.Devices, ",") != strings.Join(want, ",") {
		t.Errorf("devices %v, want %v", p.Devices, want)
	}
	if p.Total != 111*time.Millisecond {
		t.Errorf("total %v, want 111ms", p.Total)
	}
	// Blocked: pwrite64 90 asleep + 6 run queue, fdatasync 8, pread64 1.
	if p.Blocked != 105*time.Millisecond {
		t.Errorf("blocked %v, want 105ms", p.Blocked)
	}
	want := map[string]time.Duration{
		stage.QueueFreeze: 60*time.Millisecond + 7500*time.Microsecond,
		stage.Device:      20*time.Millisecond + 2500*time.Microsecond + 6*time.Millisecond,
		stage.Runqueue:    6 * time.Millisecond,
		stage.Other:       3 * time.Millisecond,
	}
	var shares float64
	for _, s := range p.Stages {
		if s.Total != want[s.Stage] {
			t.Errorf("stage %s: %v, want %v", s.Stage, s.Total, want[s.Stage])
		}
		shares += s.Share
	}
	if len(p.Stages) != len(want) || !near(shares, 1) {
		t.Errorf("stages %+v: want %d adding up to 1", p.Stages, len(want))
	}
	if p.TopStage() != stage.QueueFreeze || !near(p.Share(stage.QueueFreeze), float64(67500)/float64(105000)) {
		t.Errorf("top stage %s share %f", p.TopStage(), p.Share(stage.QueueFreeze))
	}
	if p.Stages[len(p.Stages)-1].Stage != stage.Other || p.Stages[len(p.Stages)-1].Frames != "stacks lost" {
		t.Errorf("other: %+v, want the lost stack's 2ms to be the largest part", p.Stages[len(p.Stages)-1])
	}
	w := p.Call("pwrite64")
	if w.Latency.Count != 4 || w.Latency.MaxUs != 94000 || w.Total != 100*time.Millisecond || w.Blocked != 96*time.Millisecond {
		t.Errorf("pwrite64: %+v", w)
	}
	if p.Calls[0].Syscall != "pwrite64" || p.Call("nosuch").Latency.Count != 0 {
		t.Errorf("calls %v", p.Calls)
	}
	if len(p.Slow) != 2 || p.Slow[0].Kind != KindSyscall || p.Slow[0].Attr != "pwrite64" || p.Slow[0].Device != "loop0" ||
		p.Slow[0].Duration() != 94*time.Millisecond || p.Slow[0].Pid != 101 {
		t.Errorf("slow calls %+v", p.Slow)
	}

	// On one device.
	v := p.On("vda")
	if v.Total != time.Millisecond || v.TopStage() != stage.Other || !strings.HasPrefix(v.Stages[0].Frames, "msleep <- mydrv_wait") {
		t.Errorf("on vda: %+v", v)
	}
	if l := p.On("loop0"); l.Share(stage.QueueFreeze) <= 0.6 || len(l.Slow) != 2 {
		t.Errorf("on loop0: %+v", l)
	}
	if n := p.On("sdz"); n.Total != 0 || n.Pid != 100 || n.TopStage() != "" {
		t.Errorf("on a device it never used: %+v", n)
	}
	var nilp *Process
	if nilp.On("x").Total != 0 || nilp.Share("device") != 0 || nilp.Call("read").Latency.Count != 0 || nilp.BlockedShare() != 0 {
		t.Error("methods of a nil process")
	}
	if d := run.Find("vda"); d == nil || len(d.Processes) != 2 || d.Processes[0].Comm != "fio" || d.Processes[1].Comm != "logger" {
		t.Errorf("vda's processes: %+v", d)
	}
	if d := run.Find("loop0"); d == nil || len(d.Processes) != 1 || d.Processes[0].Devices[0] != "loop0" || d.Processes[0].Total != 110*time.Millisecond {
		t.Errorf("loop0's processes: %+v", d.Processes)
	}
	lg := run.Processes[1]
	if lg.Comm != "logger" || lg.Blocked != 0 || len(lg.Stages) != 0 || lg.BlockedShare() != 0 {
		t.Errorf("a writer that never slept: %+v", lg)
	}

	// The --device filter.
	only := ProcessesOn(run.Processes, map[string]bool{"vda": true})
	if len(only) != 2 || only[0].Comm != "fio" || only[0].Total != time.Millisecond || only[1].Comm != "logger" {
		t.Errorf("on vda only: %+v", only)
	}
	both := ProcessesOn(run.Processes, map[string]bool{"vda": true, "loop0": true})
	if both[0] != p {
		t.Errorf("on all its devices: the process itself")
	}
}

// A process on several of its devices (the --device filter naming two of
// three) merges their latency distributions and stages.
func TestProcessesMerged(t *testing.T) {
	tl := processTimeline()
	sdb := event.Device{Major: 8, Minor: 16, Name: "sdb"}
	tl.Add(event.SyscallStats{Time: tl.End, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: sdb,
		Latency: latencies(4_000_000), Sleep: 3 * time.Millisecond})
	tl.Add(event.BlockedStack{Time: tl.End, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: sdb, Total: 3 * time.Millisecond, Count: 1, KernelStack: ioWait})
	tl.Device(sdb)
	run := Build(tl, Options{})
	m := ProcessesOn(run.Processes, map[string]bool{"loop0": true, "sdb": true})
	p := m[0]
	if p.Pid != 100 || len(p.Devices) != 2 || p.Total != 114*time.Millisecond {
		t.Fatalf("merged: %+v", p)
	}
	w := p.Call("pwrite64")
	if w.Latency.Count != 5 || w.Latency.MaxUs != 94000 || w.Total != 104*time.Millisecond {
		t.Errorf("merged pwrite64: %+v", w)
	}
	if p.Stage(stage.Device) != 20*time.Millisecond+2500*time.Microsecond+6*time.Millisecond+3*time.Millisecond {
		t.Errorf("merged device stage %v", p.Stage(stage.Device))
	}
	if p.On("sdb").Total != 4*time.Millisecond || p.On("vda").Total != 0 {
		t.Error("the merged process's own devices")
	}
}

// A table given in the options classifies the stacks.
func TestProcessesUserTable(t *testing.T) {
	tab, err := stage.Parse("mine.yaml", []byte("version: 1\nrules:\n  - stage: lock\n    frames: [mydrv_wait]\n"))
	if err != nil {
		t.Fatal(err)
	}
	run := Build(processTimeline(), Options{Stages: tab})
	if got := run.Processes[0].On("vda").TopStage(); got != stage.Lock {
		t.Errorf("with the user's table: %s, want lock", got)
	}
}
