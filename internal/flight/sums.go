package flight

import (
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
)

// SumsDelta is what the syscall probe summed between two states (its
// sums are whole since it started: timeline.Sums streams): each
// process's calls and blocked stacks of now less those of before, read at
// now. A sum that went down (the process's entry was evicted from the
// kernel's map and counted anew) counts from zero: its value in now. Sums
// that gained nothing are left out.
func SumsDelta(now, before State) ([]event.SyscallStats, []event.BlockedStack) {
	pruned := prunedSet(before.Pruned)
	stats := diffSums(now.Stats, before.Stats, statsKeyOf, func(s *event.SyscallStats) bool { return pruned[s.Pid] },
		func(s, p *event.SyscallStats) (event.SyscallStats, bool) {
			d := *s
			d.Time = now.At
			if p != nil && p.Sleep <= s.Sleep && p.Runqueue <= s.Runqueue {
				hs, hp := s.Latency.Full(), p.Latency.Full()
				dh := deltaHist(&hs, &hp)
				d.Latency = hist.Compact(&dh)
				if d.Latency.Count == s.Latency.Count-p.Latency.Count {
					d.Sleep, d.Runqueue = s.Sleep-p.Sleep, s.Runqueue-p.Runqueue
				}
				// Of the calls since before, those from an arming.
				if p.FromArming <= s.FromArming {
					d.FromArming = s.FromArming - p.FromArming
				}
				d.FromArming = min(d.FromArming, d.Latency.Count)
			}
			return d, d.Latency.Count > 0 || d.Sleep > 0 || d.Runqueue > 0
		})
	blocked := diffSums(now.Blocked, before.Blocked, blockedKeyOf, func(b *event.BlockedStack) bool { return pruned[b.Pid] },
		func(b, p *event.BlockedStack) (event.BlockedStack, bool) {
			d := *b
			d.Time = now.At
			if p != nil && p.Total <= b.Total && p.Count <= b.Count {
				d.Total, d.Count = b.Total-p.Total, b.Count-p.Count
			}
			return d, d.Count > 0 || d.Total > 0
		})
	return stats, blocked
}

// diffSums is the generic difference of two states' sums of one stream:
// for each sum of now, sub(it, the sum of the same key in before) (nil
// when before has none, or when pruned says its process's sums were
// removed after before: counted anew, from zero), kept when sub says it
// gained something, in now's order. sub counts a sum that went down from
// zero too (the kernel's entry was evicted, or removed and counted anew).
func diffSums[E any, K comparable](now, before []E, keyOf func(*E) K, pruned func(*E) bool, sub func(now, before *E) (E, bool)) []E {
	prev := make(map[K]*E, len(before))
	for i := range before {
		if b := &before[i]; !pruned(b) {
			prev[keyOf(b)] = b
		}
	}
	var out []E
	for i := range now {
		n := &now[i]
		if d, gained := sub(n, prev[keyOf(n)]); gained {
			out = append(out, d)
		}
	}
	return out
}

// AddSums sets the sums of tl, every timeline.Sums stream, to what the
// probes summed between two states (SumsDelta, and the same for the
// memory stalls, the requeues and the processes' I/O).
func AddSums(tl *timeline.Timeline, now, before State) {
	tl.SyscallStats, tl.BlockedStacks = SumsDelta(now, before)
	tl.MemStalls = memStallsDelta(now, before)
	tl.Requeues = requeuesDelta(now, before)
	tl.IOUsage = ioUsageDelta(now, before)
	tl.UnfinishedCalls = unfinishedIn(now, before)
}

// unfinishedIn are the calls still in the kernel at now, as the window
// from before to now saw them: a call that began before it counts from
// before's time (its sleeps before then were in the sums before; its time
// in the run queue before its latest sleep is not split, and left out).
func unfinishedIn(now, before State) []event.UnfinishedCall {
	out := slices.Clone(now.Unfinished)
	for i := range out {
		u := &out[i]
		if u.Start >= before.At || before.At >= now.At {
			continue
		}
		u.Start = before.At
		u.InCall = now.At.Sub(before.At)
		u.Asleep = min(u.Asleep, u.InCall)
		u.Sleep, u.Runqueue = 0, 0
	}
	return out
}

// AddSumsChain sets the sums of tl to what the probes summed along chain,
// states in the order they were taken: the sum of each consecutive pair's
// difference (AddSums for two states). A probe that removes the sums of
// an exited process once a checkpoint has read them (probes.Pruner) leaves
// them out of the states after it: counted this way they count up to the
// last state that held them, where the difference of the chain's two ends
// alone would lose them. A key missing from a state counts nothing
// between it and the one before; a key back smaller (counted anew after
// its removal) counts from zero.
func AddSumsChain(tl *timeline.Timeline, chain []State) {
	if len(chain) < 2 {
		return
	}
	AddSums(tl, chain[1], chain[0])
	for i := 2; i < len(chain); i++ {
		var d timeline.Timeline
		AddSums(&d, chain[i], chain[i-1])
		mergeAllSums(tl, &d)
	}
	tl.UnfinishedCalls = unfinishedIn(chain[len(chain)-1], chain[0])
}

// mergeAllSums adds the sums of d (every timeline.Sums stream) to those of
// tl, by key; a sum merged takes the time and name of d's.
func mergeAllSums(tl, d *timeline.Timeline) {
	tl.SyscallStats = mergeSums(tl.SyscallStats, d.SyscallStats, statsKeyOf, func(a, b *event.SyscallStats) {
		a.Time, a.Comm = b.Time, b.Comm
		addStatsCounts(a, b)
	})
	tl.BlockedStacks = mergeSums(tl.BlockedStacks, d.BlockedStacks, blockedKeyOf, func(a, b *event.BlockedStack) {
		a.Time, a.Comm = b.Time, b.Comm
		addBlockedCounts(a, b)
	})
	tl.MemStalls = mergeSums(tl.MemStalls, d.MemStalls, memStallKeyOf, func(a, b *event.MemStall) {
		a.Time, a.Comm = b.Time, b.Comm
		addMemStallCounts(a, b)
	})
	tl.Requeues = mergeSums(tl.Requeues, d.Requeues, requeuesKeyOf,
		func(a, b *event.Requeues) {
			a.Time = b.Time
			a.Count += b.Count
			a.TimedOut += b.TimedOut
		})
	tl.IOUsage = mergeSums(tl.IOUsage, d.IOUsage, ioUsageKeyOf, func(a, b *event.IOUsage) {
		a.Time = b.Time
		addIOUsageCounts(a, b)
	})
}

// The counts of two sums of one key added, by stream (their time and name
// are the caller's to choose).

func addStatsCounts(a, b *event.SyscallStats) {
	a.Latency.Merge(&b.Latency)
	a.Sleep += b.Sleep
	a.Runqueue += b.Runqueue
	a.FromArming += b.FromArming
}

func addBlockedCounts(a, b *event.BlockedStack) {
	a.Total += b.Total
	a.Count += b.Count
}

func addMemStallCounts(a, b *event.MemStall) {
	a.Total += b.Total
	a.Count += b.Count
	a.Max = max(a.Max, b.Max)
}

func addIOUsageCounts(a, b *event.IOUsage) {
	a.IOs += b.IOs
	a.Requests += b.Requests
	a.Bytes += b.Bytes
	a.InFlight += b.InFlight
}

// mergeSums adds the sums of more to those of sums by key (add), in the
// order they first came.
func mergeSums[E any, K comparable](sums, more []E, keyOf func(*E) K, add func(a, b *E)) []E {
	if len(more) == 0 {
		return sums
	}
	at := make(map[K]int, len(sums))
	for i := range sums {
		at[keyOf(&sums[i])] = i
	}
	for i := range more {
		m := &more[i]
		if j, ok := at[keyOf(m)]; ok {
			add(&sums[j], m)
			continue
		}
		at[keyOf(m)] = len(sums)
		sums = append(sums, *m)
	}
	return sums
}

// ioUsageDelta is each process's I/O of now less that of before, per
// cgroup, device, kind and synchronicity; counts that went down (the
// kernel's entry was evicted and counted anew) count from zero, as do
// those of a process whose I/O was removed after before (PrunedIO).
func ioUsageDelta(now, before State) []event.IOUsage {
	pruned := prunedSet(before.PrunedIO)
	return diffSums(now.IOUsage, before.IOUsage, ioUsageKeyOf, func(u *event.IOUsage) bool { return pruned[u.Task.Tgid] },
		func(u, p *event.IOUsage) (event.IOUsage, bool) {
			d := *u
			d.Time = now.At
			if p != nil && p.IOs <= u.IOs && p.Requests <= u.Requests && p.Bytes <= u.Bytes && p.InFlight <= u.InFlight {
				d.IOs, d.Requests, d.Bytes, d.InFlight = u.IOs-p.IOs, u.Requests-p.Requests, u.Bytes-p.Bytes, u.InFlight-p.InFlight
			}
			return d, d.IOs > 0 || d.Bytes > 0
		})
}

// memStallsDelta is the memory stalls of now less those of before, per
// process, call, device and kind. The longest stall in between is now's
// when it grew, else at most the time gained.
func memStallsDelta(now, before State) []event.MemStall {
	pruned := prunedSet(before.Pruned)
	return diffSums(now.MemStalls, before.MemStalls, memStallKeyOf, func(m *event.MemStall) bool { return pruned[m.Pid] },
		func(m, p *event.MemStall) (event.MemStall, bool) {
			d := *m
			d.Time = now.At
			if p != nil && p.Total <= m.Total && p.Count <= m.Count {
				d.Total, d.Count = m.Total-p.Total, m.Count-p.Count
				if m.Max <= p.Max {
					d.Max = min(m.Max, d.Total)
				}
			}
			return d, d.Count > 0 || d.Total > 0
		})
}

// requeuesDelta is the requeues of now less those of before, per device.
func requeuesDelta(now, before State) []event.Requeues {
	return diffSums(now.Requeues, before.Requeues, requeuesKeyOf, func(*event.Requeues) bool { return false },
		func(q, p *event.Requeues) (event.Requeues, bool) {
			d := *q
			d.Time = now.At
			if p != nil && p.Count <= q.Count && p.TimedOut <= q.TimedOut {
				d.Count, d.TimedOut = q.Count-p.Count, q.TimedOut-p.TimedOut
			}
			return d, d.Count > 0 || d.TimedOut > 0
		})
}

func requeuesKeyOf(q *event.Requeues) [2]uint32 { return [2]uint32{q.Dev.Major, q.Dev.Minor} }

// prunedSet is a set of the processes whose sums were removed after a
// state (State.Pruned, State.PrunedIO).
func prunedSet(pids []uint32) map[uint32]bool {
	if len(pids) == 0 {
		return nil
	}
	set := make(map[uint32]bool, len(pids))
	for _, p := range pids {
		set[p] = true
	}
	return set
}

type ioUsageKey struct {
	tgid         uint32
	cgroup       uint64
	major, minor uint32
	op           string
	sync         bool
}

func ioUsageKeyOf(u *event.IOUsage) ioUsageKey {
	return ioUsageKey{u.Task.Tgid, u.CgroupID, u.Dev.Major, u.Dev.Minor, u.Op, u.Sync}
}

type memStallKey struct {
	pid          uint32
	call, kind   string
	major, minor uint32
}

func memStallKeyOf(m *event.MemStall) memStallKey {
	return memStallKey{m.Pid, m.Call, m.Kind, m.Dev.Major, m.Dev.Minor}
}

type statsKey struct {
	pid          uint32
	call         string
	major, minor uint32
}

func statsKeyOf(s *event.SyscallStats) statsKey {
	return statsKey{s.Pid, s.Call, s.Dev.Major, s.Dev.Minor}
}

type blockedKey struct {
	pid          uint32
	call         string
	major, minor uint32
	unwalked     bool
	stack        string // the frames' addresses
}

func blockedKeyOf(b *event.BlockedStack) blockedKey {
	var sb strings.Builder
	for _, f := range b.KernelStack {
		sb.WriteString(strconv.FormatUint(f.Addr, 16))
		sb.WriteByte(',')
	}
	return blockedKey{b.Pid, b.Call, b.Dev.Major, b.Dev.Minor, b.Unwalked, sb.String()}
}

// sumsBytes estimates the memory of a state's sums (kernel stacks are
// shared with the probe's cache: their headers only).
func sumsBytes(stats []event.SyscallStats, blocked []event.BlockedStack) int64 {
	var n int64
	for _, s := range stats {
		n += int64(unsafe.Sizeof(s)) + int64(unsafe.Sizeof(hist.SlotCount{}))*int64(len(s.Latency.Slots)) + int64(len(s.Comm)+len(s.Dev.Name))
	}
	n += int64(len(blocked)) * 128
	return n
}

// cloneSums copies the slices of sums (the events are values; their
// stacks are shared, never written).
func cloneSums(stats []event.SyscallStats, blocked []event.BlockedStack) ([]event.SyscallStats, []event.BlockedStack) {
	return slices.Clone(stats), slices.Clone(blocked)
}
