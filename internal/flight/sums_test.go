package flight

import (
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
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
