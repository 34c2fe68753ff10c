package flight

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

func histOf(ns ...uint64) hist.Sparse {
	var h hist.Histogram
	for _, v := range ns {
		h.Add(v)
	}
	return hist.Compact(&h)
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
		Unfinished: []event.UnfinishedCall{{Time: 20, Start: 5, Task: event.Task{Pid: 2, Tgid: 1}, Call: "pread64", Dev: loop,
			InCall: 15, Asleep: 12}},
	}
	var tl timeline.Timeline
	AddSums(&tl, pack(now).unpack(), State{At: 10})
	for _, s := range timeline.Streams() {
		if s.State() && s.Len(&tl) == 0 {
			t.Errorf("stream of sums %s (probe %s) is not carried by flight.State", s.Record(), s.Probe())
		}
	}
}

// Counted along a chain of states, the sums of a process whose entries
// were removed after a checkpoint (it exited) count up to that checkpoint
// and never negative; an entry back smaller after its removal (a late
// completion) counts from zero, as does one back larger when the state
// says the process's sums were removed (its pid reused); and two states
// chain as AddSums does.
func TestAddSumsChain(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	stack := []event.Frame{{Addr: 0x10, Symbol: "blk_queue_enter"}}
	io := func(tgid uint32, ios uint64) event.IOUsage {
		return event.IOUsage{Task: event.Task{Tgid: tgid}, Dev: loop, Op: "write", IOs: ios, Bytes: ios * 4096}
	}
	mem := func(pid uint32, n uint64, max time.Duration) event.MemStall {
		return event.MemStall{Pid: pid, Call: "write", Dev: loop, Kind: event.MemDirectReclaim, Count: n, Total: time.Duration(n) * max, Max: max}
	}
	states := []State{
		{At: 10,
			Stats: []event.SyscallStats{
				{Pid: 1, Comm: "dd", Call: "write", Dev: loop, Latency: histOf(1000), Sleep: time.Millisecond},
				{Pid: 2, Comm: "fio", Call: "pwrite64", Dev: loop, Latency: histOf(1000, 1000)},
			},
			Blocked:   []event.BlockedStack{{Pid: 1, Call: "write", Dev: loop, Total: time.Millisecond, Count: 1, KernelStack: stack}},
			MemStalls: []event.MemStall{mem(1, 1, time.Millisecond)},
			IOUsage:   []event.IOUsage{io(1, 10), io(2, 5)},
		},
		{At: 20, // pid 1 exited after 2 more writes: read, then removed
			Stats: []event.SyscallStats{
				{Pid: 1, Comm: "dd", Call: "write", Dev: loop, Latency: histOf(1000, 2000, 2000), Sleep: 3 * time.Millisecond},
				{Pid: 2, Comm: "fio", Call: "pwrite64", Dev: loop, Latency: histOf(1000, 1000, 1000)},
			},
			Blocked:   []event.BlockedStack{{Pid: 1, Call: "write", Dev: loop, Total: 3 * time.Millisecond, Count: 3, KernelStack: stack}},
			MemStalls: []event.MemStall{mem(1, 3, 2*time.Millisecond)},
			IOUsage:   []event.IOUsage{io(1, 30), io(2, 6)},
			Pruned:    []uint32{1},
		},
		{At: 30, // pid 1 gone; a late completion of its counted anew
			Stats: []event.SyscallStats{
				{Pid: 2, Comm: "fio", Call: "pwrite64", Dev: loop, Latency: histOf(1000, 1000, 1000, 1000)},
				{Pid: 3, Comm: "dd", Call: "write", Dev: loop, Latency: histOf(500)},                     // started at the end
				{Pid: 1, Comm: "tar", Call: "write", Dev: loop, Latency: histOf(1000, 2000, 2000, 2000)}, // pid 1 reused...
			},
			IOUsage: []event.IOUsage{io(1, 2), io(2, 7), io(3, 1)},
		},
	}
	var tl timeline.Timeline
	AddSumsChain(&tl, states)
	gotStats := map[uint32]uint64{}
	for _, s := range tl.SyscallStats {
		gotStats[s.Pid] += s.Latency.Count
		if s.Time != 30 && s.Pid != 1 {
			t.Errorf("stats of pid %d read at %d, want 30", s.Pid, s.Time)
		}
	}
	if want := map[uint32]uint64{1: 2 + 4, 2: 2, 3: 1}; !maps.Equal(gotStats, want) {
		t.Errorf("calls per pid %v, want %v", gotStats, want)
	}
	for _, s := range tl.SyscallStats {
		if s.Pid == 1 && (s.Sleep != 2*time.Millisecond || s.Latency.SumNs != 4000+7000 || s.Comm != "tar") {
			t.Errorf("pid 1's calls: %+v, want 6 calls of 11 µs sleeping 2ms, named as last read", s)
		}
	}
	if len(tl.BlockedStacks) != 1 || tl.BlockedStacks[0].Count != 2 || tl.BlockedStacks[0].Total != 2*time.Millisecond {
		t.Errorf("blocked %+v, want pid 1's 2 sleeps of 2ms in all", tl.BlockedStacks)
	}
	if len(tl.MemStalls) != 1 || tl.MemStalls[0].Count != 2 || tl.MemStalls[0].Max != 2*time.Millisecond {
		t.Errorf("memory stalls %+v, want pid 1's 2, the longest 2ms", tl.MemStalls)
	}
	gotIO := map[uint32]uint64{}
	for _, u := range tl.IOUsage {
		gotIO[u.Task.Tgid] += u.IOs
	}
	// pid 1: 20 before its removal, 2 late ones after.
	if want := map[uint32]uint64{1: 22, 2: 2, 3: 1}; !maps.Equal(gotIO, want) {
		t.Errorf("bios per tgid %v, want %v", gotIO, want)
	}
	// The two ends alone would have lost the first pid 1's calls: the
	// chain is what a window must count along.
	stats, _ := SumsDelta(states[2], states[0])
	for _, s := range stats {
		if s.Pid == 1 && s.Latency.Count >= 6 {
			t.Errorf("the ends' difference counts pid 1 whole: %+v", s)
		}
	}
	// Two states: exactly AddSums.
	var two, direct timeline.Timeline
	AddSumsChain(&two, states[:2])
	AddSums(&direct, states[1], states[0])
	if len(two.SyscallStats) != len(direct.SyscallStats) || len(two.IOUsage) != len(direct.IOUsage) ||
		len(two.BlockedStacks) != len(direct.BlockedStacks) || len(two.MemStalls) != len(direct.MemStalls) {
		t.Errorf("a chain of two states counted %+v, AddSums %+v", two, direct)
	}
}

// The generic difference of a stream's sums: a key gone from now counts
// nothing (vanish), one smaller in now counts from zero (reset), one whose
// process's sums were removed after before counts from zero even when
// larger (its pid reused), a new one counts whole, and one that gained
// nothing is left out.
func TestDiffSums(t *testing.T) {
	type sum struct {
		pid uint32
		key string
		n   uint64
	}
	sub := func(s, p *sum) (sum, bool) {
		d := *s
		if p != nil && p.n <= s.n {
			d.n = s.n - p.n
		}
		return d, d.n > 0
	}
	for _, tt := range []struct {
		name        string
		before, now []sum
		pruned      []uint32
		want        []sum
	}{
		{"grew", []sum{{1, "a", 3}}, []sum{{1, "a", 5}}, nil, []sum{{1, "a", 2}}},
		{"nothing gained", []sum{{1, "a", 3}}, []sum{{1, "a", 3}}, nil, nil},
		{"new key", []sum{{1, "a", 3}}, []sum{{1, "a", 3}, {1, "b", 4}}, nil, []sum{{1, "b", 4}}},
		{"vanish", []sum{{1, "a", 3}, {2, "a", 9}}, []sum{{1, "a", 4}}, nil, []sum{{1, "a", 1}}},
		{"reset", []sum{{1, "a", 7}}, []sum{{1, "a", 2}}, nil, []sum{{1, "a", 2}}},
		{"reuse", []sum{{1, "a", 3}, {2, "a", 1}}, []sum{{1, "a", 5}, {2, "a", 4}}, []uint32{1}, []sum{{1, "a", 5}, {2, "a", 3}}},
		{"pruned, gone", []sum{{1, "a", 3}}, nil, []uint32{1}, nil},
		{"nothing before", nil, []sum{{1, "a", 3}}, nil, []sum{{1, "a", 3}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pruned := prunedSet(tt.pruned)
			got := diffSums(tt.now, tt.before, func(s *sum) [2]any { return [2]any{s.pid, s.key} },
				func(s *sum) bool { return pruned[s.pid] }, sub)
			if !slices.Equal(got, tt.want) {
				t.Errorf("diff = %v, want %v", got, tt.want)
			}
		})
	}
}

// The I/O of a process whose every IOUsage the submit probe removed after
// a state (PrunedIO) counts anew in the next, even when larger (its pid
// reused); the syscall probe's removals (Pruned) leave it alone.
func TestIOUsagePrunedIO(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	io := func(tgid uint32, ios uint64) event.IOUsage {
		return event.IOUsage{Task: event.Task{Tgid: tgid}, Dev: loop, Op: "write", IOs: ios, Bytes: ios * 4096}
	}
	for _, tt := range []struct {
		name             string
		pruned, prunedIO []uint32
		want             uint64
	}{
		{"kept", nil, nil, 2},
		{"syscall sums removed", []uint32{1}, nil, 2},
		{"I/O removed, pid reused", nil, []uint32{1}, 5},
	} {
		var tl timeline.Timeline
		AddSums(&tl, State{At: 20, IOUsage: []event.IOUsage{io(1, 5)}},
			State{At: 10, IOUsage: []event.IOUsage{io(1, 3)}, Pruned: tt.pruned, PrunedIO: tt.prunedIO})
		if len(tl.IOUsage) != 1 || tl.IOUsage[0].IOs != tt.want {
			t.Errorf("%s: I/O %+v, want %d bios", tt.name, tl.IOUsage, tt.want)
		}
	}
}

// The calls timed from an arming (SyscallStats.FromArming) go with the
// calls of a delta and of a merge: a window counts those of its own.
func TestSumsFromArming(t *testing.T) {
	loop := event.Device{Major: 7, Minor: 0, Name: "loop0"}
	for _, tc := range []struct {
		name             string
		before, now      uint64 // FromArming
		beforeN, nowN    int    // calls
		wantDelta        uint64
		wantMergedOfBoth uint64
	}{
		{name: "one seeded call since", before: 0, now: 1, beforeN: 1, nowN: 3, wantDelta: 1, wantMergedOfBoth: 1},
		{name: "the seeded call before", before: 1, now: 1, beforeN: 1, nowN: 2, wantDelta: 0, wantMergedOfBoth: 2},
		{name: "none", beforeN: 1, nowN: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lat := func(n int) hist.Sparse {
				var ns []uint64
				for range n {
					ns = append(ns, 1000)
				}
				return histOf(ns...)
			}
			before := State{At: 10, Stats: []event.SyscallStats{{Pid: 1, Call: "read", Dev: loop, Latency: lat(tc.beforeN), FromArming: tc.before}}}
			now := State{At: 20, Stats: []event.SyscallStats{{Pid: 1, Call: "read", Dev: loop, Latency: lat(tc.nowN), FromArming: tc.now}}}
			stats, _ := SumsDelta(now, before)
			if len(stats) != 1 || stats[0].FromArming != tc.wantDelta {
				t.Errorf("delta %+v: want %d from the arming", stats, tc.wantDelta)
			}
			a := before.Stats[0]
			addStatsCounts(&a, &now.Stats[0])
			if a.FromArming != tc.wantMergedOfBoth {
				t.Errorf("merged: %d from the arming, want %d", a.FromArming, tc.wantMergedOfBoth)
			}
		})
	}
}
