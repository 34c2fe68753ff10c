package facts

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/timeline"
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

// callSpec is n storage calls of one kind on loop0 by archiver (pid 300),
// each as slow as its blocked time: lock, journal and runqueue ms in all.
type callSpec struct {
	call                string
	n                   int
	lock, journal, runq float64
}

// writerRun builds a run of archiver's calls.
func writerRun(calls ...callSpec) *Run {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(20 * time.Second)}
	at := event.Mono(20 * time.Second)
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	lock := frames("__schedule", "schedule", "rwsem_down_write_slowpath", "down_write", "ext4_buffered_write_iter")
	journal := frames("__schedule", "schedule", "jbd2_log_wait_commit", "ext4_sync_file", "do_fsync")
	tk := event.Task{Pid: 300, Tgid: 300, Comm: "archiver"}
	for i, c := range calls {
		each := ms((c.lock + c.journal + c.runq) / float64(c.n))
		var lat []uint64
		for range c.n {
			lat = append(lat, uint64(each))
		}
		tl.Add(event.SyscallStats{Time: at, Pid: 300, Comm: "archiver", Call: c.call, Dev: loop0, Latency: latencies(lat...),
			Sleep: ms(c.lock + c.journal), Runqueue: ms(c.runq)})
		for d, st := range map[float64][]event.Frame{c.lock: lock, c.journal: journal} {
			if d > 0 {
				tl.Add(event.BlockedStack{Time: at, Pid: 300, Comm: "archiver", Call: c.call, Dev: loop0, Total: ms(d), Count: 1, KernelStack: st})
			}
		}
		for k := range c.n {
			tl.Add(event.Syscall{Start: event.Mono(time.Duration(i*100+k+1) * 10 * time.Millisecond), Duration: each, Task: tk, Call: c.call, Dev: loop0})
		}
	}
	tl.Device(loop0)
	tl.Sort()
	return Build(tl, Options{})
}

// Findings explain stages: of a process a finding is about, only the
// blocked time in the stages no finding explains is left, and its slow
// calls count by that share; runqueue time goes with the other stages.
func TestProcessesUnexplainedStages(t *testing.T) {
	journalFinding := Cover{Rule: "journal-commit-wait", Devices: []string{"loop0"}, Tasks: Tasks{{Pid: 300, Tgid: 300}}, Stages: []string{stage.Journal}}
	byName := Cover{Rule: "journal-commit-wait", Tasks: Tasks{{Pid: 300, Tgid: 300}}, Stages: []string{stage.Journal}}
	tests := []struct {
		name   string
		run    *Run
		covers []Cover
		// what is left: of the slow calls (ms), the stages and what the
		// findings explain; nil stages: the process is left out.
		unexplainedMs float64
		stages        map[string]float64
		explained     map[string]float64
	}{
		{"nothing explains it", writerRun(callSpec{"pwrite64", 10, 2000, 0, 500}, callSpec{"fdatasync", 10, 0, 300, 0}), nil,
			2800, map[string]float64{"lock": 2000, "runqueue": 500, "journal": 300}, nil},
		{"a journal finding naming a writer that waited for a lock", writerRun(callSpec{"pwrite64", 10, 2000, 0, 500}, callSpec{"fdatasync", 10, 0, 300, 0}),
			[]Cover{journalFinding}, 2500, map[string]float64{"lock": 2000, "runqueue": 500}, map[string]float64{"journal": 300}},
		{"named only, not about the device", writerRun(callSpec{"pwrite64", 10, 2000, 0, 500}, callSpec{"fdatasync", 10, 0, 300, 0}),
			[]Cover{byName}, 2500, map[string]float64{"lock": 2000, "runqueue": 500}, map[string]float64{"journal": 300}},
		{"a journal finding naming a writer that waited for the journal", writerRun(callSpec{"pwrite64", 2, 20, 0, 0}, callSpec{"fdatasync", 100, 0, 3000, 0}),
			[]Cover{journalFinding}, 20, map[string]float64{"lock": 20}, map[string]float64{"journal": 3000}},
		{"runqueue goes with the call's other stages", writerRun(callSpec{"fsync", 10, 600, 200, 400}),
			[]Cover{journalFinding}, 1200 * 0.75, map[string]float64{"lock": 600, "runqueue": 300}, map[string]float64{"journal": 200}},
		{"a device finding whose stages cover the process's", writerRun(callSpec{"pwrite64", 10, 2000, 0, 500}),
			[]Cover{{Rule: "x", Devices: []string{"loop0"}, Stages: []string{stage.Lock}}}, 0, nil, nil},
		{"a device finding of another stage", writerRun(callSpec{"pwrite64", 10, 2000, 0, 0}),
			[]Cover{{Rule: "slow-device", Devices: []string{"loop0"}, Stages: []string{stage.Device, stage.TagWait}}}, 2000, map[string]float64{"lock": 2000}, nil},
		{"a finding of every stage", writerRun(callSpec{"pwrite64", 10, 2000, 0, 0}),
			[]Cover{{Rule: "mine", Tasks: Tasks{{Pid: 300}}}}, 0, nil, nil},
		{"a finding on another device", writerRun(callSpec{"pwrite64", 10, 2000, 0, 0}),
			[]Cover{{Rule: "x", Devices: []string{"vda"}, Stages: []string{stage.Lock}}}, 2000, map[string]float64{"lock": 2000}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := Explained{Covers: tt.covers}
			ps := tt.run.Processes.Unexplained(e)
			if tt.stages == nil {
				if len(ps) != 0 {
					t.Fatalf("left %v (%v), want nothing", ps.Comms(), ps.Stages())
				}
				return
			}
			if len(ps) != 1 || ps[0].Pid != 300 {
				t.Fatalf("left %v, want archiver", ps.Comms())
			}
			if got := ps.UnexplainedMs(); math.Abs(got-tt.unexplainedMs) > 0.01 {
				t.Errorf("UnexplainedMs %v, want %v", got, tt.unexplainedMs)
			}
			if got := ps.SlowMs(); math.Abs(got-msOf(tt.run.Processes[0].Slow.total())) > 0.01 {
				t.Errorf("SlowMs %v, want all the slow calls' time", got)
			}
			check := func(what string, got []StageTime, want map[string]float64) {
				t.Helper()
				m := map[string]float64{}
				for _, s := range got {
					m[s.Stage] = msOf(s.Total)
					if s.Share <= 0 || s.Share > 1 {
						t.Errorf("%s: %s share %v", what, s.Stage, s.Share)
					}
				}
				if len(m) != len(want) {
					t.Errorf("%s %v, want %v", what, m, want)
				}
				for st, ms := range want {
					if math.Abs(m[st]-ms) > 0.01 {
						t.Errorf("%s %v, want %v", what, m, want)
					}
				}
			}
			check("stages", ps.Stages(), tt.stages)
			check("explained", ps.ExplainedStages(), tt.explained)
			// The floor of unexplained-latency counts only what is left.
			floor := tt.unexplainedMs - 1
			if got := ps.Slower(floor, 1).Count(); got != 1 {
				t.Errorf("Slower(%v) kept %d, want 1", floor, got)
			}
			if got := ps.Slower(tt.unexplainedMs+1, 1).Count(); got != 0 {
				t.Errorf("Slower(%v) kept %d, want 0", tt.unexplainedMs+1, got)
			}
		})
	}
}
