package facts

import (
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// The process timeline with a failing loop0 (two medium errors, an error
// that only answers, one timeout that overlaps fio's slow write) and fio's
// writes reclaiming memory.
func TestFaultsAndMemStalls(t *testing.T) {
	tl := processTimeline()
	at := event.Mono(10 * time.Second)
	for _, f := range []event.DeviceFault{
		{Time: event.Mono(1 * time.Second), Dev: loop0, Kind: event.FaultError, Op: "read", Status: "medium error", Errno: -61},
		{Time: event.Mono(1*time.Second + 5), Dev: loop0, Kind: event.FaultError, Op: "read", Status: "medium error", Errno: -61},
		{Time: event.Mono(1*time.Second + 9), Dev: loop0, Kind: event.FaultError, Op: "write", Status: "try again", Errno: -11},
		{Time: event.Mono(2*time.Second + 90*time.Millisecond), Dev: loop0, Kind: event.FaultTimeout, Op: "write",
			InFlight: 80 * time.Millisecond, Timeout: 30 * time.Second},
	} {
		tl.Add(f)
	}
	tl.Add(event.Requeues{Time: at, Dev: loop0, Count: 3, TimedOut: 1})
	tl.Add(event.MemStall{Time: at, Pid: 100, Comm: "fio", Call: "pwrite64", Dev: loop0, Kind: event.MemCgroupReclaim,
		Total: 40 * time.Millisecond, Count: 7, Max: 20 * time.Millisecond})
	tl.Add(event.MemStall{Time: at, Pid: 100, Comm: "fio", Call: "pread64", Dev: vda, Kind: event.MemCompaction,
		Total: 2 * time.Millisecond, Count: 1, Max: 2 * time.Millisecond})
	tl.Add(event.MemStall{Time: at, Pid: 999, Comm: "gone", Call: "read", Dev: vda, Kind: event.MemDirectReclaim,
		Total: time.Second, Count: 1, Max: time.Second})
	tl.Sort()
	run := Build(tl, Options{})

	d := run.Find("loop0")
	if d.Errors.Count() != 2 || !slices.Equal(d.ErrorKinds(), []string{"2 medium error"}) {
		t.Errorf("errors %+v (%v), want the two medium errors only", d.Errors, d.ErrorKinds())
	}
	if d.Timeouts.Count() != 1 || d.Timeouts[0].Duration() != 80*time.Millisecond || d.Timeouts[0].Kind != KindTimeout {
		t.Errorf("timeouts %+v, want one of 80ms", d.Timeouts)
	}
	if d.Requeues != 3 || d.IOTimeout != 30*time.Second {
		t.Errorf("requeues %d, io timeout %v", d.Requeues, d.IOTimeout)
	}
	victims := d.FaultVictims(run.Window)
	if len(victims) != 1 || victims[0].Pid != 100 {
		t.Errorf("victims %+v, want fio", victims)
	}
	if v := run.Find("vda").FaultVictims(run.Window); len(v) != 0 {
		t.Errorf("vda has no failure but victims %+v", v)
	}

	var fio *Process
	for _, p := range run.Processes {
		if p.Pid == 100 {
			fio = p
		}
		if p.Pid == 999 {
			t.Errorf("a process with no calls summed was made of its memory stall: %+v", p)
		}
	}
	if fio.Reclaim != 40*time.Millisecond || fio.Compaction != 2*time.Millisecond || fio.MemStallTime() != 42*time.Millisecond {
		t.Errorf("fio reclaim %v compaction %v", fio.Reclaim, fio.Compaction)
	}
	if !slices.Equal(fio.MemStallKinds(), []string{"memcg_reclaim", "compaction"}) || !slices.Equal(fio.MemStallCalls(), []string{"pwrite64", "pread64"}) {
		t.Errorf("kinds %v calls %v", fio.MemStallKinds(), fio.MemStallCalls())
	}
	on := fio.On("loop0")
	if on.Reclaim != 40*time.Millisecond || on.Compaction != 0 || on.MemStallOf("memcg_reclaim") != 40*time.Millisecond {
		t.Errorf("fio on loop0: reclaim %v compaction %v", on.Reclaim, on.Compaction)
	}
	if share := on.MemStallShare(); share <= 0 || share > 1 {
		t.Errorf("share %v", share)
	}
	if tk := fio.Task("victim"); tk.Pid != 100 || tk.Tgid != 100 || tk.Comm != "fio" || tk.Role != "victim" {
		t.Errorf("task %+v", tk)
	}
}
