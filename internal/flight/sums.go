package flight

import (
	"slices"
	"strconv"
	"strings"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// SumsDelta is what the syscall probe summed between two states (its
// sums are whole since it started: timeline.Sums streams): each
// process's calls and blocked stacks of now less those of before, read at
// now. A sum that went down (the process's entry was evicted from the
// kernel's map and counted anew) counts from zero: its value in now. Sums
// that gained nothing are left out.
func SumsDelta(now, before State) ([]event.SyscallStats, []event.BlockedStack) {
	prevStats := make(map[statsKey]*event.SyscallStats, len(before.Stats))
	for i := range before.Stats {
		s := &before.Stats[i]
		prevStats[statsKeyOf(s)] = s
	}
	var stats []event.SyscallStats
	for _, s := range now.Stats {
		d := s
		d.Time = now.At
		if p := prevStats[statsKeyOf(&s)]; p != nil && p.Sleep <= s.Sleep && p.Runqueue <= s.Runqueue {
			d.Latency = deltaHist(&s.Latency, &p.Latency)
			if d.Latency.Count == s.Latency.Count-p.Latency.Count {
				d.Sleep, d.Runqueue = s.Sleep-p.Sleep, s.Runqueue-p.Runqueue
			}
		}
		if d.Latency.Count > 0 || d.Sleep > 0 || d.Runqueue > 0 {
			stats = append(stats, d)
		}
	}
	prevBlocked := make(map[blockedKey]*event.BlockedStack, len(before.Blocked))
	for i := range before.Blocked {
		b := &before.Blocked[i]
		prevBlocked[blockedKeyOf(b)] = b
	}
	var blocked []event.BlockedStack
	for _, b := range now.Blocked {
		d := b
		d.Time = now.At
		if p := prevBlocked[blockedKeyOf(&b)]; p != nil && p.Total <= b.Total && p.Count <= b.Count {
			d.Total, d.Count = b.Total-p.Total, b.Count-p.Count
		}
		if d.Count > 0 || d.Total > 0 {
			blocked = append(blocked, d)
		}
	}
	return stats, blocked
}

// AddSums sets the sums of tl, every timeline.Sums stream, to what the
// probes summed between two states (SumsDelta, and the same for the
// memory stalls, the requeues and the processes' I/O).
func AddSums(tl *timeline.Timeline, now, before State) {
	tl.SyscallStats, tl.BlockedStacks = SumsDelta(now, before)
	tl.MemStalls = memStallsDelta(now, before)
	tl.Requeues = requeuesDelta(now, before)
	tl.IOUsage = ioUsageDelta(now, before)
}

// ioUsageDelta is each process's I/O of now less that of before, per
// cgroup, device, kind and synchronicity; counts that went down (the
// kernel's entry was evicted and counted anew) count from zero.
func ioUsageDelta(now, before State) []event.IOUsage {
	type key struct {
		tgid         uint32
		cgroup       uint64
		major, minor uint32
		op           string
		sync         bool
	}
	keyOf := func(u *event.IOUsage) key {
		return key{u.Task.Tgid, u.CgroupID, u.Dev.Major, u.Dev.Minor, u.Op, u.Sync}
	}
	prev := make(map[key]*event.IOUsage, len(before.IOUsage))
	for i := range before.IOUsage {
		prev[keyOf(&before.IOUsage[i])] = &before.IOUsage[i]
	}
	var out []event.IOUsage
	for _, u := range now.IOUsage {
		d := u
		d.Time = now.At
		if p := prev[keyOf(&u)]; p != nil && p.IOs <= u.IOs && p.Requests <= u.Requests && p.Bytes <= u.Bytes && p.InFlight <= u.InFlight {
			d.IOs, d.Requests, d.Bytes, d.InFlight = u.IOs-p.IOs, u.Requests-p.Requests, u.Bytes-p.Bytes, u.InFlight-p.InFlight
		}
		if d.IOs > 0 || d.Bytes > 0 {
			out = append(out, d)
		}
	}
	return out
}

// memStallsDelta is the memory stalls of now less those of before, per
// process, call, device and kind. The longest stall in between is now's
// when it grew, else at most the time gained.
func memStallsDelta(now, before State) []event.MemStall {
	type key struct {
		pid          uint32
		call, kind   string
		major, minor uint32
	}
	keyOf := func(m *event.MemStall) key { return key{m.Pid, m.Call, m.Kind, m.Dev.Major, m.Dev.Minor} }
	prev := make(map[key]*event.MemStall, len(before.MemStalls))
	for i := range before.MemStalls {
		prev[keyOf(&before.MemStalls[i])] = &before.MemStalls[i]
	}
	var out []event.MemStall
	for _, m := range now.MemStalls {
		d := m
		d.Time = now.At
		if p := prev[keyOf(&m)]; p != nil && p.Total <= m.Total && p.Count <= m.Count {
			d.Total, d.Count = m.Total-p.Total, m.Count-p.Count
			if m.Max <= p.Max {
				d.Max = min(m.Max, d.Total)
			}
		}
		if d.Count > 0 || d.Total > 0 {
			out = append(out, d)
		}
	}
	return out
}

// requeuesDelta is the requeues of now less those of before, per device.
func requeuesDelta(now, before State) []event.Requeues {
	var out []event.Requeues
	for _, q := range now.Requeues {
		d := q
		d.Time = now.At
		for _, p := range before.Requeues {
			if p.Dev.Major == q.Dev.Major && p.Dev.Minor == q.Dev.Minor && p.Count <= q.Count && p.TimedOut <= q.TimedOut {
				d.Count, d.TimedOut = q.Count-p.Count, q.TimedOut-p.TimedOut
				break
			}
		}
		if d.Count > 0 || d.TimedOut > 0 {
			out = append(out, d)
		}
	}
	return out
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
		n += 8*int64(len(s.Latency.Counts)) + 96 + int64(len(s.Comm)+len(s.Dev.Name))
	}
	n += int64(len(blocked)) * 128
	return n
}

// cloneSums copies the slices of sums (the events are values; their
// stacks are shared, never written).
func cloneSums(stats []event.SyscallStats, blocked []event.BlockedStack) ([]event.SyscallStats, []event.BlockedStack) {
	return slices.Clone(stats), slices.Clone(blocked)
}
