package live

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
)

var (
	freezeStack = kframes("__schedule", "schedule", "blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store")
	enterStack  = kframes("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio")
	ioStack     = kframes("__schedule", "io_schedule", "folio_wait_bit_common")
	udev        = event.Task{Pid: 10, Tgid: 10, Comm: "(udev-worker)"}
	writer      = event.Task{Pid: 21, Tgid: 20, Comm: "fio"}
	loop1       = event.Device{Major: 7, Minor: 1, Name: "loop1"}
	inferred    = []event.ProbeStatus{{Name: event.ProbeFreeze, Mechanism: event.MechTPBTF, Status: event.StatusOK}}
)

func freezeWait(task event.Task, startMs, durMs float64) event.OffCPU {
	return event.OffCPU{Start: at(startMs / 1000), Duration: ms(durMs), Task: task, KernelStack: freezeStack}
}

func TestFreezesAttributesFromSysfsWrite(t *testing.T) {
	f := NewFreezes(t0, nil, time.Millisecond)
	f.SetProbes(inferred)
	f.Add(event.SysfsWrite{Time: at(0.100), Task: udev, Device: "loop0", Attr: "queue/scheduler", Path: "/sys/devices/virtual/block/loop0/queue/scheduler"})
	f.Add(freezeWait(udev, 110, 20))
	f.Add(event.Exec{Time: at(0.1)}) // ignored

	if got := f.Ready(at(0.135), false); len(got) != 0 {
		t.Fatalf("a freeze that ended 5ms ago is not settled yet, got %+v", got)
	}
	got := f.Ready(at(0.130).Add(DefaultSettle), false)
	if len(got) != 1 {
		t.Fatalf("want the settled freeze, got %+v", got)
	}
	s := got[0]
	if s.Device != "loop0" || s.Attr != "queue/scheduler" || s.Pid != udev.Pid || s.Kind != facts.KindFreezeWait ||
		s.Start != ms(110) || s.Duration() != ms(20) || s.Source != facts.SourceOffCPU || len(s.KernelStack) != len(freezeStack) {
		t.Errorf("span %+v", s)
	}
	if again := f.Ready(at(0.5), false); len(again) != 0 {
		t.Errorf("a freeze is returned once, got it again: %+v", again)
	}
	if again := f.Ready(at(0.6), true); len(again) != 0 {
		t.Errorf("final returns only what was not returned, got %+v", again)
	}
}

// Without a sysfs write, the device comes from the queue-enter waits the
// freezer woke, whose own device comes from the writer's slow submission.
func TestFreezesAttributesFromWokenWaiters(t *testing.T) {
	f := NewFreezes(t0, inferred, time.Millisecond)
	f.Add(freezeWait(udev, 1000, 15))
	f.Add(event.OffCPU{Start: at(1.002), Duration: ms(13.5), Task: writer, Waker: udev, KernelStack: enterStack})
	f.Add(event.SlowSubmit{Start: at(1.0015), Latency: ms(14.2), Task: writer, Dev: loop1, Op: "W"})
	f.Add(event.OffCPU{Start: at(1.0), Duration: ms(50), Task: writer, KernelStack: ioStack}) // io-wait: not kept

	got := f.Ready(at(2), false)
	if len(got) != 1 || got[0].Device != "loop1" || got[0].Attr != "" {
		t.Fatalf("want one freeze of loop1, got %+v", got)
	}
}

func TestFreezesUnattributedAndOrder(t *testing.T) {
	f := NewFreezes(t0, inferred, time.Millisecond)
	other := event.Task{Pid: 30, Tgid: 30, Comm: "tuned"}
	f.Add(freezeWait(other, 500, 5)) // arrives second, starts later
	f.Add(freezeWait(udev, 100, 700))
	got := f.Ready(at(5), false)
	if len(got) != 2 {
		t.Fatalf("want both freezes, got %+v", got)
	}
	if got[0].Pid != udev.Pid || got[1].Pid != other.Pid {
		t.Errorf("freezes not in start order: %+v", got)
	}
	for _, s := range got {
		if s.Device != "" {
			t.Errorf("no event names a device, got %q", s.Device)
		}
	}
}

func TestFreezesFinalFlushesUnsettled(t *testing.T) {
	f := NewFreezes(t0, inferred, time.Millisecond)
	f.Add(freezeWait(udev, 100, 20))
	if got := f.Ready(at(0.121), false); len(got) != 0 {
		t.Fatalf("not settled: %+v", got)
	}
	if got := f.Ready(at(0.121), true); len(got) != 1 {
		t.Fatalf("final must return the unsettled freeze, got %+v", got)
	}
}

// When the freeze probe ran directly, its spans (freeze to unfreeze) are
// the freezes, and the inferred waits are not shown besides them.
func TestFreezesDirect(t *testing.T) {
	f := NewFreezes(t0, nil, time.Millisecond)
	f.SetProbes([]event.ProbeStatus{{Name: event.ProbeFreeze, Mechanism: event.MechKprobe, Status: event.StatusOK}})
	f.Add(event.SysfsWrite{Time: at(0.099), Task: udev, Device: "loop0", Attr: "queue/nr_requests"})
	f.Add(event.Freeze{Start: at(0.1), Duration: ms(30), Task: udev, Dev: event.Device{Major: 7, Minor: 0, Name: "loop0"},
		Func: "blk_freeze_queue_start", Mechanism: event.MechKprobe, KernelStack: kframes("blk_freeze_queue_start", "queue_requests_store")})
	f.Add(freezeWait(udev, 101, 20))
	got := f.Ready(at(1), false)
	if len(got) != 1 {
		t.Fatalf("want the direct freeze only, got %+v", got)
	}
	s := got[0]
	if s.Kind != facts.KindFreeze || s.Device != "loop0" || s.Attr != "queue/nr_requests" || s.Duration() != ms(30) ||
		s.Source != facts.SourceDirect(event.MechKprobe, "blk_freeze_queue_start") {
		t.Errorf("span %+v", s)
	}
}

func TestFreezesForgetsOldEvents(t *testing.T) {
	f := NewFreezes(t0, inferred, time.Millisecond)
	f.Add(freezeWait(udev, 100, 20))
	if got := f.Ready(at(1), false); len(got) != 1 {
		t.Fatalf("got %+v", got)
	}
	f.Ready(at(10), false)
	f.mu.Lock()
	n, keys := len(f.tl.OffCPU), len(f.emitted)
	f.mu.Unlock()
	if n != 0 || keys != 0 {
		t.Errorf("after Keep, %d events and %d returned keys are still held", n, keys)
	}
}

func TestFreezesBounded(t *testing.T) {
	f := NewFreezes(t0, inferred, time.Millisecond)
	f.MaxEvents = 3
	for i := 0; i < 5; i++ {
		f.Add(freezeWait(udev, float64(100*i), 2))
	}
	if d := f.Dropped(); d != 2 {
		t.Errorf("dropped %d, want 2", d)
	}
	if got := f.Ready(at(5), true); len(got) != 3 {
		t.Errorf("want the 3 kept freezes, got %d", len(got))
	}
}
