package facts

import (
	"cmp"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// MemStall is the time a process's calls of one system call spent in one
// kind of memory stall.
type MemStall struct {
	// Kind is "direct_reclaim" (the page allocator reclaiming for itself:
	// memory short on the host), "memcg_reclaim" (a charge over its memory
	// cgroup's limit) or "compaction" (direct compaction).
	Kind    string
	Syscall string
	Total   time.Duration
	Count   uint64 // stalls
	Max     time.Duration
}

// MemStallTime is Reclaim plus Compaction: the time its storage calls
// spent making memory.
func (p *Process) MemStallTime() time.Duration {
	if p == nil {
		return 0
	}
	return SaturatingAdd(p.Reclaim, p.Compaction)
}

// MemStallShare is the part (0..1) of its time in storage calls spent in
// reclaim or compaction.
func (p *Process) MemStallShare() float64 {
	if p == nil || p.Total <= 0 {
		return 0
	}
	return float64(p.MemStallTime()) / float64(p.Total)
}

// MemStallOf is the time its storage calls spent in one kind of memory
// stall ("memcg_reclaim").
func (p *Process) MemStallOf(kind string) time.Duration {
	var t time.Duration
	if p != nil {
		for _, m := range p.MemStalls {
			if m.Kind == kind {
				t = SaturatingAdd(t, m.Total)
			}
		}
	}
	return t
}

// MemStallCalls names the calls its memory stalls were in, the most time
// first.
func (p *Process) MemStallCalls() []string {
	out := []string{}
	if p == nil {
		return out
	}
	for _, m := range p.MemStalls {
		if !slices.Contains(out, m.Syscall) {
			out = append(out, m.Syscall)
		}
	}
	return out
}

// MemStallKinds names the kinds of its memory stalls, the most time first.
func (p *Process) MemStallKinds() []string {
	out := []string{}
	if p == nil {
		return out
	}
	t := map[string]time.Duration{}
	for _, m := range p.MemStalls {
		t[m.Kind] = SaturatingAdd(t[m.Kind], m.Total)
	}
	for k := range t {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, c string) int {
		if n := cmp.Compare(t[c], t[a]); n != 0 {
			return n
		}
		return cmp.Compare(a, c)
	})
	return out
}

// memStalls adds the syscall probe's memory stalls (event.MemStall) to
// the processes and to each as seen on its devices.
func (b *builder) memStalls(byPid map[uint32]*Process) {
	type key struct {
		pid                uint32
		device, call, kind string
	}
	sums := map[key]*MemStall{}
	for _, m := range b.tl.MemStalls {
		k := key{m.Pid, b.name(m.Dev), m.Call, m.Kind}
		s := sums[k]
		if s == nil {
			s = &MemStall{Kind: m.Kind, Syscall: m.Call}
			sums[k] = s
		}
		s.Total = SaturatingAdd(s.Total, m.Total)
		s.Count += m.Count
		s.Max = max(s.Max, m.Max)
	}
	add := func(p *Process, s MemStall) {
		switch s.Kind {
		case event.MemCompaction:
			p.Compaction = SaturatingAdd(p.Compaction, s.Total)
		default:
			p.Reclaim = SaturatingAdd(p.Reclaim, s.Total)
		}
		for i := range p.MemStalls {
			if p.MemStalls[i].Kind == s.Kind && p.MemStalls[i].Syscall == s.Syscall {
				m := &p.MemStalls[i]
				m.Total = SaturatingAdd(m.Total, s.Total)
				m.Count += s.Count
				m.Max = max(m.Max, s.Max)
				return
			}
		}
		p.MemStalls = append(p.MemStalls, s)
	}
	touched := map[*Process]bool{}
	for k, s := range sums {
		p := byPid[k.pid]
		if p == nil {
			continue // no sums of its calls: not a process of the run
		}
		add(p, *s)
		touched[p] = true
		if q, ok := p.on[k.device]; ok && q != p {
			add(q, *s)
			touched[q] = true
		}
	}
	for p := range touched {
		slices.SortFunc(p.MemStalls, func(a, c MemStall) int {
			if n := cmp.Compare(c.Total, a.Total); n != 0 {
				return n
			}
			return cmp.Compare(a.Kind+a.Syscall, c.Kind+c.Syscall)
		})
	}
}

// Pressure is the stall time PSI counted over the run (the growth of
// "total" in /proc/pressure/io and memory): "some" is time at least one
// task was stalled, "full" time every non-idle task was. A rule can say
// "tasks waited N ms on I/O" from it, for the whole host: PSI does not say
// which device.
type Pressure struct {
	Known        bool
	IOSomeMs     float64
	IOFullMs     float64
	MemorySomeMs float64
	MemoryFullMs float64
}
