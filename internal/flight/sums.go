package flight

import (
	"slices"
	"strconv"
	"strings"

	"github.com/whyslow/whyslow/internal/event"
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
