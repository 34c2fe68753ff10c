package flight

import (
	"slices"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Loss causes of WindowSums (event.Loss.What), counted in sums (one sum is
// one event of a timeline.Sums stream).
const (
	// FoldedLoss: sums of exited processes merged into those of another
	// exited process of the same command (the first one folded), so that
	// their calls, sleeps and stacks are counted under one process id.
	FoldedLoss = "exited processes' sums folded into one process of the same command (memory bound of a window's sums)"
	// DroppedSumsLoss: sums of exited processes dropped, the window
	// holding its bound of sums even after folding.
	DroppedSumsLoss = "exited processes' sums dropped (memory bound of a window's sums)"
)

// SumsBound is how many sums of each stream a WindowSums holds before it
// folds the sums of exited processes.
type SumsBound struct {
	Stats, Blocked, MemStalls, IOUsage int
}

// DefaultSumsBound bounds a window's sums to some 14 MB (Bytes): 4096 call
// histograms (2.7 KB each, event.SyscallStats), 16384 blocked stacks
// (their frames shared with the probe's cache), 4096 memory stalls and
// 4096 processes' I/O sums.
var DefaultSumsBound = SumsBound{Stats: 4096, Blocked: 16384, MemStalls: 4096, IOUsage: 4096}

// Bytes estimates the most memory sums within b take (a command name of
// at most 16 bytes and a device name of at most 32 in each).
func (b SumsBound) Bytes() int64 {
	b = b.orDefaults()
	st := State{Stats: make([]event.SyscallStats, b.Stats), Blocked: make([]event.BlockedStack, b.Blocked),
		MemStalls: make([]event.MemStall, b.MemStalls), IOUsage: make([]event.IOUsage, b.IOUsage)}
	return st.SumsBytes() + int64(b.Stats)*48
}

func (b SumsBound) orDefaults() SumsBound {
	def := DefaultSumsBound
	return SumsBound{orDefault(b.Stats, def.Stats), orDefault(b.Blocked, def.Blocked),
		orDefault(b.MemStalls, def.MemStalls), orDefault(b.IOUsage, def.IOUsage)}
}

// WindowSums accumulates what the probes summed over a stretch of the run,
// one checkpoint after another (Add: the difference of each state from the
// one before, as AddSumsChain counts it), so that the caller holds the
// latest state and the stretch's sums rather than every state taken in
// it. Its memory is bounded: when a stream holds more sums than its bound,
// the sums of the processes that exited (those a state says were pruned:
// State.Pruned, State.PrunedIO) are folded, every exited process of one
// command under the process id of the first of them folded (per call,
// device and stack, as the stream keys its sums); when that is not
// enough, exited processes' sums are dropped, latest first. Both are
// counted as losses of the probe that summed them (FoldedLoss,
// DroppedSumsLoss). The sums of running processes are never folded: the
// probes' maps bound them.
type WindowSums struct {
	// Bound is the bound of each stream; zero fields mean
	// DefaultSumsBound's.
	Bound SumsBound

	sums   timeline.Timeline // the sums streams, and the fold's losses
	exited map[uint32]bool   // processes whose syscall sums were pruned
	exitIO map[uint32]bool   // processes whose I/O sums were pruned
	rep    map[string]uint32 // by command: the process exited ones fold into

	// The calls still in the kernel at the latest state added, and the
	// time of the state the first Add started from (unfinishedIn cuts
	// them to the stretch).
	began  event.Mono
	latest State
}

// Add counts the sums of now less those of before, the state taken right
// before it.
func (w *WindowSums) Add(now, before State) {
	var d timeline.Timeline
	AddSums(&d, now, before)
	mergeAllSums(&w.sums, &d)
	if w.exited == nil {
		w.exited, w.exitIO = map[uint32]bool{}, map[uint32]bool{}
		w.began = before.At
	}
	w.latest = State{At: now.At, Unfinished: now.Unfinished}
	for _, p := range now.Pruned {
		w.exited[p] = true
	}
	for _, p := range now.PrunedIO {
		w.exitIO[p] = true
	}
	w.bound()
}

// Len is how many sums are held, over every stream.
func (w *WindowSums) Len() int {
	t := &w.sums
	return len(t.SyscallStats) + len(t.BlockedStacks) + len(t.MemStalls) + len(t.Requeues) + len(t.IOUsage)
}

// Bytes estimates the memory of the sums held.
func (w *WindowSums) Bytes() int64 {
	t := &w.sums
	return State{Stats: t.SyscallStats, Blocked: t.BlockedStacks, MemStalls: t.MemStalls, Requeues: t.Requeues, IOUsage: t.IOUsage}.SumsBytes()
}

// Losses are what folding and dropping counted so far (FoldedLoss,
// DroppedSumsLoss).
func (w *WindowSums) Losses() []event.Loss { return slices.Clone(w.sums.Losses) }

// Take sets the sums of tl to those accumulated and the calls still in
// the kernel at the latest state added (cut to the stretch, as AddSums
// gives them), adds the fold's losses (and returns them), and empties w
// for the next stretch.
func (w *WindowSums) Take(tl *timeline.Timeline) []event.Loss {
	tl.SyscallStats, tl.BlockedStacks, tl.MemStalls = w.sums.SyscallStats, w.sums.BlockedStacks, w.sums.MemStalls
	tl.Requeues, tl.IOUsage = w.sums.Requeues, w.sums.IOUsage
	if w.exited != nil {
		tl.UnfinishedCalls = unfinishedIn(w.latest, State{At: w.began})
	}
	losses := w.sums.Losses
	for _, l := range losses {
		tl.AddLoss(l)
	}
	*w = WindowSums{Bound: w.Bound}
	return losses
}

// bound folds, then drops, the sums of exited processes of a stream over
// its bound. The syscall probe's three streams fold together: a process's
// calls, stacks and stalls stay under one process id.
func (w *WindowSums) bound() {
	b := w.Bound.orDefaults()
	t := &w.sums
	gone := func(pid uint32) bool { return w.exited[pid] }
	if len(t.SyscallStats) > b.Stats || len(t.BlockedStacks) > b.Blocked || len(t.MemStalls) > b.MemStalls {
		var n uint64
		var k int
		t.SyscallStats, k = foldSums(t.SyscallStats, statsKeyOf, func(s *event.SyscallStats) *uint32 { return &s.Pid },
			func(s *event.SyscallStats) string { return s.Comm }, gone, w.repOf, addStats)
		n += uint64(k)
		t.BlockedStacks, k = foldSums(t.BlockedStacks, blockedKeyOf, func(s *event.BlockedStack) *uint32 { return &s.Pid },
			func(s *event.BlockedStack) string { return s.Comm }, gone, w.repOf, addBlockedStack)
		n += uint64(k)
		t.MemStalls, k = foldSums(t.MemStalls, memStallKeyOf, func(s *event.MemStall) *uint32 { return &s.Pid },
			func(s *event.MemStall) string { return s.Comm }, gone, w.repOf, addMemStallSum)
		n += uint64(k)
		w.lose(event.ProbeSyscall, FoldedLoss, n)
		n = 0
		t.SyscallStats, k = dropSums(t.SyscallStats, b.Stats, func(s *event.SyscallStats) bool { return gone(s.Pid) })
		n += uint64(k)
		t.BlockedStacks, k = dropSums(t.BlockedStacks, b.Blocked, func(s *event.BlockedStack) bool { return gone(s.Pid) })
		n += uint64(k)
		t.MemStalls, k = dropSums(t.MemStalls, b.MemStalls, func(s *event.MemStall) bool { return gone(s.Pid) })
		n += uint64(k)
		w.lose(event.ProbeSyscall, DroppedSumsLoss, n)
		w.exited = keepHeld(w.exited, w.syscallPids())
		w.forgetReps()
	}
	if len(t.IOUsage) > b.IOUsage {
		goneIO := func(pid uint32) bool { return w.exitIO[pid] }
		var k int
		t.IOUsage, k = foldSums(t.IOUsage, ioUsageKeyOf, func(u *event.IOUsage) *uint32 { return &u.Task.Tgid },
			func(u *event.IOUsage) string { return u.Task.Comm }, goneIO, w.repOf, addIOUsage)
		w.lose(event.ProbeSubmit, FoldedLoss, uint64(k))
		t.IOUsage, k = dropSums(t.IOUsage, b.IOUsage, func(u *event.IOUsage) bool { return goneIO(u.Task.Tgid) })
		w.lose(event.ProbeSubmit, DroppedSumsLoss, uint64(k))
		w.exitIO = keepHeld(w.exitIO, w.ioPids())
		w.forgetReps()
	}
}

// After a fold or a drop, the exited processes and the commands'
// representatives whose sums are no longer held are forgotten: they are
// in no sum (folded under another process id, or dropped), and the maps
// would otherwise grow with every process of the window, beyond the
// bound of its sums. A later sum of a forgotten process (a late
// completion counted anew) is marked exited again by the state that
// removes it.

func (w *WindowSums) syscallPids() map[uint32]bool {
	t := &w.sums
	pids := make(map[uint32]bool, len(t.SyscallStats))
	for i := range t.SyscallStats {
		pids[t.SyscallStats[i].Pid] = true
	}
	for i := range t.BlockedStacks {
		pids[t.BlockedStacks[i].Pid] = true
	}
	for i := range t.MemStalls {
		pids[t.MemStalls[i].Pid] = true
	}
	return pids
}

func (w *WindowSums) ioPids() map[uint32]bool {
	pids := make(map[uint32]bool, len(w.sums.IOUsage))
	for i := range w.sums.IOUsage {
		pids[w.sums.IOUsage[i].Task.Tgid] = true
	}
	return pids
}

// keepHeld returns the pids of set that are in held.
func keepHeld(set, held map[uint32]bool) map[uint32]bool {
	for pid := range set {
		if !held[pid] {
			delete(set, pid)
		}
	}
	return set
}

// forgetReps forgets the representatives whose sums were all dropped.
func (w *WindowSums) forgetReps() {
	if len(w.rep) == 0 {
		return
	}
	sys, io := w.syscallPids(), w.ioPids()
	for comm, pid := range w.rep {
		if !sys[pid] && !io[pid] {
			delete(w.rep, comm)
		}
	}
}

// repOf is the process the exited process pid of command comm folds
// into: the first exited one of that command folded.
func (w *WindowSums) repOf(comm string, pid uint32) uint32 {
	if w.rep == nil {
		w.rep = map[string]uint32{}
	}
	if r, ok := w.rep[comm]; ok {
		return r
	}
	w.rep[comm] = pid
	return pid
}

func (w *WindowSums) lose(probe, what string, n uint64) {
	if n > 0 {
		w.sums.AddLoss(event.Loss{Probe: probe, What: what, Count: n})
	}
}

func orDefault(v, def int) int {
	if v <= 0 {
		return def
	}
	return v
}

// foldSums gives each sum of an exited process (gone) the process id its
// command folds into (rep) and merges the sums that then share a key
// (add), in the order they came. It returns how many sums were merged
// into another.
func foldSums[E any, K comparable](sums []E, keyOf func(*E) K, pidOf func(*E) *uint32, commOf func(*E) string,
	gone func(uint32) bool, rep func(comm string, pid uint32) uint32, add func(a, b *E)) ([]E, int) {
	at := make(map[K]int, len(sums))
	out := sums[:0]
	merged := 0
	for i := range sums {
		e := sums[i]
		if p := pidOf(&e); gone(*p) {
			*p = rep(commOf(&e), *p)
		}
		k := keyOf(&e)
		if j, ok := at[k]; ok {
			add(&out[j], &e)
			merged++
			continue
		}
		at[k] = len(out)
		out = append(out, e)
	}
	clear(sums[len(out):])
	return out, merged
}

// dropSums drops the sums of exited processes (gone), the latest first,
// until at most max are left, and returns how many it dropped.
func dropSums[E any](sums []E, max int, gone func(*E) bool) ([]E, int) {
	drop := len(sums) - max
	if drop <= 0 {
		return sums, 0
	}
	dropped := make([]bool, len(sums))
	n := 0
	for i := len(sums) - 1; i >= 0 && n < drop; i-- {
		if gone(&sums[i]) {
			dropped[i] = true
			n++
		}
	}
	out := sums[:0]
	for i := range sums {
		if !dropped[i] {
			out = append(out, sums[i])
		}
	}
	clear(sums[len(out):])
	return out, n
}

func addStats(a, b *event.SyscallStats) {
	a.Time = max(a.Time, b.Time)
	addStatsCounts(a, b)
}

func addBlockedStack(a, b *event.BlockedStack) {
	a.Time = max(a.Time, b.Time)
	addBlockedCounts(a, b)
}

func addMemStallSum(a, b *event.MemStall) {
	a.Time = max(a.Time, b.Time)
	addMemStallCounts(a, b)
}

func addIOUsage(a, b *event.IOUsage) {
	a.Time = max(a.Time, b.Time)
	addIOUsageCounts(a, b)
}
