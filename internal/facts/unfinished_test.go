package facts

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/timeline"
)

// A call still in the kernel at the end counts in its process: alone (a
// process hung for the whole run, with no call that returned), and with
// calls that returned and earlier sleeps of its own in the sums.
func TestUnfinishedCalls(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	hung := event.UnfinishedCall{Time: event.Mono(10 * time.Second), Start: event.Mono(2 * time.Second),
		Task: event.Task{Pid: 201, Tgid: 200, Comm: "dd"}, Call: "read", Dev: loop, InCall: 8 * time.Second,
		Sleep: time.Second, Asleep: 7 * time.Second, KernelStack: ioWait}
	for _, tc := range []struct {
		name                   string
		stats                  []event.SyscallStats
		blocked                []event.BlockedStack
		total, blockedT, stage time.Duration
		count                  uint64
	}{
		{name: "alone", total: 8 * time.Second, blockedT: 7 * time.Second, stage: 7 * time.Second},
		{name: "with returned calls and an earlier sleep",
			stats:   []event.SyscallStats{{Pid: 200, Comm: "dd", Call: "read", Dev: loop, Latency: latencies(uint64(2 * time.Millisecond))}},
			blocked: []event.BlockedStack{{Pid: 200, Comm: "dd", Call: "read", Dev: loop, Total: time.Second, Count: 1, KernelStack: ioWait}},
			total:   8*time.Second + 2*time.Millisecond, blockedT: 8 * time.Second, stage: 8 * time.Second, count: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := &timeline.Timeline{Start: 0, End: event.Mono(10 * time.Second)}
			tl.Add(event.Process{Pid: 200, Comm: "dd", Blkio: "/slow"})
			for _, s := range tc.stats {
				tl.Add(s)
			}
			for _, b := range tc.blocked {
				tl.Add(b)
			}
			tl.Add(hung)
			run := Build(tl, Options{})
			if len(run.Processes) != 1 {
				t.Fatalf("%d processes, want 1", len(run.Processes))
			}
			p := run.Processes[0]
			if p.Pid != 200 || p.Blkio != "/slow" || p.Total != tc.total || p.Blocked != tc.blockedT || p.Stage(stage.Device) != tc.stage {
				t.Errorf("process %d (%s) total %v blocked %v device %v, want %v %v %v", p.Pid, p.Blkio, p.Total, p.Blocked, p.Stage(stage.Device), tc.total, tc.blockedT, tc.stage)
			}
			c := p.Call("read")
			if c.Unfinished != 1 || c.Latency.Count != tc.count || c.Total != tc.total {
				t.Errorf("read: %d unfinished, %d returned, total %v", c.Unfinished, c.Latency.Count, c.Total)
			}
			if len(p.Unfinished) != 1 || p.Unfinished[0].Tid != 201 || p.Unfinished[0].InCall != 8*time.Second ||
				p.Unfinished[0].Stage != stage.Device || p.Unfinished[0].Device != "loop0" || p.Unfinished[0].Blocked != 8*time.Second {
				t.Errorf("unfinished %+v", p.Unfinished)
			}
			if q := p.On("loop0"); len(q.Unfinished) != 1 {
				t.Errorf("on loop0: unfinished %+v", q.Unfinished)
			}
			var sp *Span
			for i := range p.Slow {
				if p.Slow[i].Source == SourceUnfinished {
					sp = &p.Slow[i]
				}
			}
			if sp == nil || sp.Start != 2*time.Second || sp.End != 10*time.Second || sp.Attr != "read" {
				t.Errorf("slow calls %+v: want the unfinished read from 2s to 10s", p.Slow)
			}
			if got := Processes(run.Processes).Slower(100, 10); len(got) != 1 {
				t.Errorf("Slower: %d processes, want the hung reader", len(got))
			}
		})
	}
}

// Calls timed from an arming (armed mode) keep their mark: the
// histogram's count of them, and an unfinished call's lower bound.
func TestFromArmingKept(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	tl := &timeline.Timeline{Start: 0, End: event.Mono(10 * time.Second)}
	tl.Add(event.Process{Pid: 200, Comm: "dd"})
	tl.Add(event.SyscallStats{Pid: 200, Comm: "dd", Call: "read", Dev: loop, Latency: latencies(uint64(2*time.Millisecond), uint64(3*time.Second)), FromArming: 1})
	tl.Add(event.UnfinishedCall{Time: event.Mono(10 * time.Second), Start: event.Mono(4 * time.Second),
		Task: event.Task{Pid: 201, Tgid: 200, Comm: "dd"}, Call: "read", Dev: loop, InCall: 6 * time.Second,
		Asleep: 6 * time.Second, KernelStack: ioWait, Before: true})
	run := Build(tl, Options{})
	if len(run.Processes) != 1 {
		t.Fatalf("%d processes, want 1", len(run.Processes))
	}
	p := run.Processes[0]
	if c := p.Call("read"); c.FromArming != 1 || c.Latency.Count != 2 {
		t.Errorf("read: %d calls, %d from the arming, want 2 and 1", c.Latency.Count, c.FromArming)
	}
	if c := p.On("loop0").Call("read"); c.FromArming != 1 {
		t.Errorf("read on loop0: %d from the arming, want 1", c.FromArming)
	}
	if len(p.Unfinished) != 1 || !p.Unfinished[0].LowerBound {
		t.Errorf("unfinished %+v: want the read, a lower bound", p.Unfinished)
	}
}
