package facts

import (
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/stage"
)

// A later record of a process names it: it exec'd, or a wrapper moved it
// into a cgroup after its first storage call.
func TestProcessLastRecordNames(t *testing.T) {
	tl := processTimeline()
	tl.Add(event.Process{Time: event.Mono(time.Second), Pid: 100, Comm: "archiver", Cgroup: "/", Blkio: "/archive"})
	tl.Sort()
	run := Build(tl, Options{})
	p := run.Processes[0]
	if p.Comm != "archiver" || p.Blkio != "/archive" || p.Cgroup != "/" {
		t.Errorf("process named %q cgroup %q blkio %q, want its last record's", p.Comm, p.Cgroup, p.Blkio)
	}
	if ts := run.Processes.Tasks(); ts[0].Cgroup != "/archive" {
		t.Errorf("task cgroup %q, want the blkio one where v1 holds the block I/O controller", ts[0].Cgroup)
	}
}

func TestProcessesMethods(t *testing.T) {
	run := Build(processTimeline(), Options{})
	ps := run.Processes
	if ps.Count() != 2 || !slices.Equal(ps.Comms(), []string{"fio", "logger"}) {
		t.Fatalf("processes %v", ps.Comms())
	}
	fio := Processes{ps[0]}
	tests := []struct {
		name string
		got  []string
		want []string
	}{
		// fio's slow calls: a 94 ms pwrite64 and a 5 ms fdatasync.
		{"slower: both kinds' tails", ps.Slower(90, 1).Comms(), []string{"fio"}},
		{"slower: not enough time", ps.Slower(100, 1).Comms(), nil},
		{"waited in queue_freeze", ps.Waited(60, stage.QueueFreeze).Comms(), []string{"fio"}},
		{"waited: stages together", ps.Waited(90, stage.QueueFreeze, stage.Device).Comms(), []string{"fio"}},
		{"waited: too little", ps.Waited(100, stage.QueueFreeze, stage.Device).Comms(), nil},
		{"except fio", ps.Except(Tasks{{Pid: 100, Tgid: 100}}).Comms(), []string{"logger"}},
		{"unexplained: nothing explained", ps.Unexplained(Explained{}).Comms(), []string{"fio", "logger"}},
		{"unexplained: fio named", ps.Unexplained(Explained{Tasks: Tasks{{Pid: 101, Tgid: 100}}}).Comms(), []string{"logger"}},
		{"unexplained: loop0 explained", ps.Unexplained(Explained{Devices: []string{"loop0"}}).Comms(), []string{"fio", "logger"}},
		{"unexplained: every device explained", ps.Unexplained(Explained{Devices: []string{"loop0", "vda"}}).Comms(), nil},
	}
	for _, tt := range tests {
		if !slices.Equal(tt.got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, tt.got, tt.want)
		}
	}
	slow := ps.Slower(90, 1)
	if slow.SlowMs() != 99 || slow.Slow().Count() != 2 {
		t.Errorf("slow calls %v ms, %d, want 99 ms in 2", slow.SlowMs(), slow.Slow().Count())
	}
	// A kind whose p99 is under the tail does not count: fdatasync's
	// calls are 5 ms.
	if got := ps.Slower(1, 10).Slow(); got.Count() != 1 || got[0].Attr != "pwrite64" {
		t.Errorf("calls of at least 10 ms: %v", got)
	}
	// fio as seen off loop0: its pread64 on vda only.
	off := ps.Unexplained(Explained{Devices: []string{"loop0"}})
	if q := off[0]; q.Pid != 100 || !slices.Equal(q.Devices, []string{"vda"}) || q.Total != time.Millisecond || len(q.Slow) != 0 {
		t.Errorf("fio off loop0: %+v", q)
	}
	if got := fio.StageMs(stage.QueueFreeze, stage.Device); got != 60+7.5+20+2.5+6 {
		t.Errorf("StageMs = %v", got)
	}
	st := fio.Stages()
	if len(st) == 0 || st[0].Stage != stage.QueueFreeze {
		t.Fatalf("stages %+v, want queue_freeze first", st)
	}
	var share float64
	for _, s := range st {
		share += s.Share
		if s.Stage == stage.Other && s.Frames == "" {
			t.Errorf("other has no frames: %+v", s)
		}
	}
	if share < 0.999 || share > 1.001 {
		t.Errorf("shares add up to %v", share)
	}
}

// The stacks of stage other, summed over processes and devices, the most
// time first.
func TestProcessesOtherStacks(t *testing.T) {
	tl := processTimeline()
	acme := frames("__schedule", "schedule", "schedule_timeout", "acme_poll", "acme_read")
	mydrv := frames("__schedule", "schedule", "msleep", "mydrv_wait", "mydrv_read")
	tl.Add(event.SyscallStats{Time: tl.End, Pid: 200, Comm: "logger", Call: "pread64", Dev: loop0,
		Latency: latencies(9_000_000), Sleep: 9 * time.Millisecond})
	tl.Add(event.BlockedStack{Time: tl.End, Pid: 200, Comm: "logger", Call: "pread64", Dev: loop0, Total: 5 * time.Millisecond, Count: 1, KernelStack: acme})
	tl.Add(event.BlockedStack{Time: tl.End, Pid: 200, Comm: "logger", Call: "pread64", Dev: loop0, Total: 4 * time.Millisecond, Count: 1, KernelStack: mydrv})
	tl.Sort()
	run := Build(tl, Options{})
	got := run.Processes.OtherStacks(2)
	want := []StackTime{ // ties by frames
		{Frames: "acme_poll <- acme_read", Total: 5 * time.Millisecond},
		{Frames: "msleep <- mydrv_wait <- mydrv_read", Total: 5 * time.Millisecond}, // fio's 1 ms on vda, logger's 4 on loop0
	}
	if !slices.Equal(got, want) {
		t.Errorf("OtherStacks(2) = %+v, want %+v", got, want)
	}
	if st := run.Processes.Stages(); st[len(st)-1].Stage == stage.Other && st[len(st)-1].Frames != want[0].Frames {
		t.Errorf("other's frames %q, want its largest stack's", st[len(st)-1].Frames)
	}
	// One device: logger's stacks on loop0, and fio's fdatasync sleeps
	// whose stack was lost.
	on := Processes(ProcessesOn(run.Processes, map[string]bool{"loop0": true})).OtherStacks(3)
	if len(on) != 3 || on[0].Frames != "acme_poll <- acme_read" || on[1].Total != 4*time.Millisecond || on[2].Frames != "stacks lost" {
		t.Errorf("on loop0: %+v", on)
	}
}
