package flight

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

func histOf(ns ...uint64) hist.Histogram {
	var h hist.Histogram
	for _, v := range ns {
		h.Add(v)
	}
	return h
}

// A window's sums are those of its end less those of its start, per
// process, call, device and stack; a sum that went down counts anew; sums
// that gained nothing are left out.
func TestSumsDelta(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	stack := []event.Frame{{Addr: 0x10, Symbol: "blk_queue_enter"}, {Addr: 0x20}}
	other := []event.Frame{{Addr: 0x30, Symbol: "io_schedule"}}
	before := State{At: 10,
		Stats: []event.SyscallStats{
			{Pid: 1, Call: "pwrite64", Dev: loop, Latency: histOf(1000, 2000), Sleep: 5 * time.Millisecond},
			{Pid: 2, Call: "fsync", Dev: loop, Latency: histOf(1000), Sleep: time.Second},
			{Pid: 3, Call: "read", Dev: loop, Latency: histOf(1000)},
		},
		Blocked: []event.BlockedStack{
			{Pid: 1, Call: "pwrite64", Dev: loop, Total: 5 * time.Millisecond, Count: 2, KernelStack: stack},
			{Pid: 1, Call: "pwrite64", Dev: loop, Total: time.Millisecond, Count: 1, KernelStack: other},
		},
	}
	now := State{At: 20,
		Stats: []event.SyscallStats{
			{Pid: 1, Call: "pwrite64", Dev: loop, Latency: histOf(1000, 2000, 4000), Sleep: 8 * time.Millisecond},
			{Pid: 2, Call: "fsync", Dev: loop, Latency: histOf(3000), Sleep: 2 * time.Millisecond}, // counted anew
			{Pid: 3, Call: "read", Dev: loop, Latency: histOf(1000)},                               // nothing new
			{Pid: 4, Call: "read", Dev: loop, Latency: histOf(500)},                                // new process
		},
		Blocked: []event.BlockedStack{
			{Pid: 1, Call: "pwrite64", Dev: loop, Total: 9 * time.Millisecond, Count: 3, KernelStack: stack},
			{Pid: 1, Call: "pwrite64", Dev: loop, Total: time.Millisecond, Count: 1, KernelStack: other},
		},
	}
	stats, blocked := SumsDelta(now, before)
	type got struct {
		pid   uint32
		count uint64
		sleep time.Duration
	}
	want := []got{{1, 1, 3 * time.Millisecond}, {2, 1, 2 * time.Millisecond}, {4, 1, 0}}
	if len(stats) != len(want) {
		t.Fatalf("%d stats, want %d: %+v", len(stats), len(want), stats)
	}
	for i, w := range want {
		s := stats[i]
		if (got{s.Pid, s.Latency.Count, s.Sleep}) != w || s.Time != now.At {
			t.Errorf("stats[%d] = pid %d count %d sleep %s at %d, want %+v at %d", i, s.Pid, s.Latency.Count, s.Sleep, s.Time, w, now.At)
		}
	}
	if len(blocked) != 1 || blocked[0].Total != 4*time.Millisecond || blocked[0].Count != 1 || blocked[0].KernelStack[0].Symbol != "blk_queue_enter" {
		t.Errorf("blocked = %+v, want the blk_queue_enter stack's 4ms over 1 sleep", blocked)
	}
	// Packed and unpacked, a state keeps its sums.
	if st := pack(now).unpack(); len(st.Stats) != 4 || len(st.Blocked) != 2 {
		t.Errorf("packed state lost sums: %d stats, %d blocked", len(st.Stats), len(st.Blocked))
	}
}

// The memory stalls and the requeues are by difference too: a window has
// what was summed in it, per process, call, device and kind (memory
// stalls) and per device (requeues).
func TestMemStallsAndRequeuesDelta(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	before := State{At: 10,
		MemStalls: []event.MemStall{
			{Pid: 1, Call: "pwrite64", Dev: loop, Kind: event.MemCgroupReclaim, Total: 40 * time.Millisecond, Count: 4, Max: 20 * time.Millisecond},
			{Pid: 2, Call: "pwrite64", Dev: loop, Kind: event.MemCgroupReclaim, Total: time.Millisecond, Count: 1, Max: time.Millisecond},
		},
		Requeues: []event.Requeues{{Dev: loop, Count: 5, TimedOut: 1}},
	}
	now := State{At: 20,
		MemStalls: []event.MemStall{
			{Pid: 1, Call: "pwrite64", Dev: loop, Kind: event.MemCgroupReclaim, Total: 46 * time.Millisecond, Count: 6, Max: 20 * time.Millisecond},
			{Pid: 2, Call: "pwrite64", Dev: loop, Kind: event.MemCgroupReclaim, Total: time.Millisecond, Count: 1, Max: time.Millisecond}, // nothing new
			{Pid: 3, Call: "fsync", Dev: loop, Kind: event.MemDirectReclaim, Total: 9 * time.Millisecond, Count: 1, Max: 9 * time.Millisecond},
		},
		Requeues: []event.Requeues{{Dev: loop, Count: 12, TimedOut: 1}},
	}
	var tl timeline.Timeline
	AddSums(&tl, now, before)
	if len(tl.MemStalls) != 2 {
		t.Fatalf("memory stalls %+v, want pid 1's and pid 3's", tl.MemStalls)
	}
	if m := tl.MemStalls[0]; m.Pid != 1 || m.Total != 6*time.Millisecond || m.Count != 2 || m.Max != 6*time.Millisecond || m.Time != 20 {
		t.Errorf("pid 1's memory stalls %+v, want 6ms over 2, the longest at most 6ms, at 20", m)
	}
	if m := tl.MemStalls[1]; m.Pid != 3 || m.Total != 9*time.Millisecond || m.Max != 9*time.Millisecond {
		t.Errorf("pid 3's memory stalls %+v, want its 9ms", m)
	}
	if len(tl.Requeues) != 1 || tl.Requeues[0].Count != 7 || tl.Requeues[0].TimedOut != 0 {
		t.Errorf("requeues %+v, want 7, none timed out", tl.Requeues)
	}
	if st := pack(now).unpack(); len(st.MemStalls) != 3 || len(st.Requeues) != 1 {
		t.Errorf("packed state lost sums: %d memory stalls, %d requeues", len(st.MemStalls), len(st.Requeues))
	}
}

// Every stream of sums (timeline.Sums) is carried by a State and given to
// a window by difference: a new one must be added here, or serve's windows
// would never have it.
func TestEverySumsStream(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	now := State{At: 20,
		Stats:     []event.SyscallStats{{Pid: 1, Call: "read", Dev: loop, Latency: histOf(1000)}},
		Blocked:   []event.BlockedStack{{Pid: 1, Call: "read", Dev: loop, Total: time.Millisecond, Count: 1}},
		MemStalls: []event.MemStall{{Pid: 1, Call: "read", Dev: loop, Kind: event.MemDirectReclaim, Total: time.Millisecond, Count: 1}},
		Requeues:  []event.Requeues{{Dev: loop, Count: 1}},
		IOUsage:   []event.IOUsage{{Task: event.Task{Pid: 1, Tgid: 1}, Dev: loop, Op: "write", IOs: 1, Bytes: 4096}},
	}
	var tl timeline.Timeline
	AddSums(&tl, pack(now).unpack(), State{At: 10})
	for _, s := range timeline.Streams() {
		if s.State() && s.Len(&tl) == 0 {
			t.Errorf("stream of sums %s (probe %s) is not carried by flight.State", s.Record(), s.Probe())
		}
	}
}
