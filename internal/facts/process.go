package facts

import (
	"cmp"
	"math"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/stage"
)

// KindSyscall is a storage system call above --min-latency (probe
// syscall); its Attr names the call.
const KindSyscall = "syscall"

// SourceSyscall is how the syscall probe timed a call.
const SourceSyscall = "tracepoints: the call's entry and exit"

// SourceUnfinished is how the syscall probe timed a call still in the
// kernel when the run ended (event.UnfinishedCall): its span ends there.
const SourceUnfinished = "tracepoints: the call's entry; still in the call when the run ended"

// Process is one process whose storage system calls the syscall probe
// traced: what its calls cost, and where their time off CPU (Blocked)
// went, split into stages (internal/stage: queue_freeze, tag_wait, ...,
// device, runqueue, other). The split covers the whole blocked time: every
// sleep, however short, was summed in the kernel with its stack.
type Process struct {
	Pid  uint32
	Comm string
	// Cgroup is its cgroup v2 path, Blkio its cgroup v1 blkio path; ""
	// when unknown.
	Cgroup, Blkio string
	// Devices are the devices its calls went to, the most time first
	// ("all" for sync(2)).
	Devices []string
	// Calls are its calls per system call, over its devices, the most time
	// first.
	Calls []*Call
	// Total is the time in its storage calls, entry to exit; Blocked the
	// part off CPU (asleep, or runnable and not running).
	Total, Blocked time.Duration
	// Stages split Blocked, the most time first.
	Stages []StageTime
	// Slow are its calls above --min-latency (kind syscall; Attr is the
	// call), in time order; a call still in the kernel when the run ended
	// is one too, up to then (Source SourceUnfinished).
	Slow Spans
	// Unfinished are its calls still in the kernel when the run ended
	// (their time so far counts in Total, Blocked and the stages), the
	// longest first.
	Unfinished []Unfinished
	// Reclaim is the time its storage calls spent in direct reclaim (the
	// allocator's, or its memory cgroup's over its limit), Compaction in
	// direct compaction, on or off CPU; MemStalls split them by kind and
	// call, the most time first.
	Reclaim, Compaction time.Duration
	MemStalls           []MemStall

	on    map[string]*Process      // the same process, on one device
	other map[string]time.Duration // stage other's time by stack (frames)
	// In a process as Processes.Unexplained gives it: the part (0..1) of
	// its slow calls' time, per device and call, in stages no finding
	// explains (1 where not set), and the blocked time findings explain.
	weight    map[weightKey]float64
	explained *stageSums
}

// weightKey is one call of a process on one device.
type weightKey struct{ device, call string }

// Unfinished is a storage call still in the kernel when the run ended.
type Unfinished struct {
	Tid     uint32 // the thread in it
	Comm    string // the thread's name
	Syscall string
	Device  string
	// InCall is its time in the call up to the end of the run; Blocked
	// the part the probe saw off CPU (asleep or in the run queue).
	InCall, Blocked time.Duration
	// Stage is the stage of its latest sleep, which may last still.
	Stage string
	// LowerBound: the call was in the kernel already when the probe
	// started or last armed (armed mode), and InCall counts from then.
	LowerBound bool
}

// Call is what one system call of a process cost.
type Call struct {
	Syscall string
	Latency Latency
	// Total is the time in these calls (with the time so far of those
	// still in the kernel when the run ended); Blocked the part off CPU.
	Total, Blocked time.Duration
	// Unfinished counts these calls still in the kernel when the run
	// ended (not in Latency, which has the calls that returned).
	Unfinished int
	// FromArming counts, of the calls in Latency, those in progress
	// already when the probe armed (armed mode): timed from the arming,
	// their latencies are lower bounds.
	FromArming uint64

	// h is the latencies Latency summarizes, read only: the accumulator's
	// sum (sharedHist: the event's own histogram when one event made it),
	// not a copy (2.6 KB a call); empty for a Call built by hand.
	h      sharedHist
	inCall time.Duration // the time so far of the Unfinished calls
	// stages split Blocked by stage (other's by stack), for
	// Processes.Unexplained; nil for a Call built by hand.
	stages *stageSums
}

// StageTime is the time a process spent in one stage.
type StageTime struct {
	Stage string
	Total time.Duration
	Share float64 // of the process's Blocked time (0..1)
	// Frames tell what the time of stage other was: the top frames of its
	// largest stack (or why it has none); "" for the other stages.
	Frames string
}

// On returns the process as seen on one device: its calls there and their
// stages. A device it made no call to gives a process with no calls.
func (p *Process) On(device string) *Process {
	if p == nil {
		return &Process{}
	}
	if q, ok := p.on[device]; ok {
		return q
	}
	return &Process{Pid: p.Pid, Comm: p.Comm, Cgroup: p.Cgroup, Blkio: p.Blkio}
}

// Stage is the time the process spent in one stage.
func (p *Process) Stage(name string) time.Duration {
	if p == nil {
		return 0
	}
	for _, s := range p.Stages {
		if s.Stage == name {
			return s.Total
		}
	}
	return 0
}

// Share is the part (0..1) of the process's blocked time spent in one
// stage.
func (p *Process) Share(name string) float64 {
	if p == nil || p.Blocked <= 0 {
		return 0
	}
	return float64(p.Stage(name)) / float64(p.Blocked)
}

// TopStage is the stage with the most time, "" when it was never blocked.
func (p *Process) TopStage() string {
	if p == nil || len(p.Stages) == 0 {
		return ""
	}
	return p.Stages[0].Stage
}

// BlockedShare is the part (0..1) of its time in storage calls the
// process spent off CPU.
func (p *Process) BlockedShare() float64 {
	if p == nil || p.Total <= 0 {
		return 0
	}
	return float64(p.Blocked) / float64(p.Total)
}

// Call returns its calls of one system call ("pwrite64"); a call it did
// not make gives a Call with a zero count.
func (p *Process) Call(syscall string) *Call {
	if p != nil {
		for _, c := range p.Calls {
			if c.Syscall == syscall {
				return c
			}
		}
	}
	return &Call{Syscall: syscall}
}

// processKey is one process's calls of one kind on one device.
type processKey struct {
	pid          uint32
	device, call string
}

// stageSums is the time of each stage, and of other its time per stack
// (the frames that tell it).
type stageSums struct {
	total map[string]time.Duration
	other map[string]time.Duration // by frames; "" for time with none
}

func (s *stageSums) add(st string, d time.Duration, frames string) {
	if d <= 0 {
		return
	}
	if s.total == nil {
		s.total = map[string]time.Duration{}
	}
	s.total[st] = SaturatingAdd(s.total[st], d)
	if st == stage.Other {
		if s.other == nil {
			s.other = map[string]time.Duration{}
		}
		s.other[frames] = SaturatingAdd(s.other[frames], d)
	}
}

func (s *stageSums) merge(o *stageSums) {
	for st, d := range o.total {
		if st != stage.Other {
			s.add(st, d, "")
		}
	}
	for f, d := range o.other {
		s.add(stage.Other, d, f)
	}
}

// otherTop is the frames of other's largest stack, "" when it has none.
func (s *stageSums) otherTop() string {
	if tops := topStacks(s.other, 1); len(tops) > 0 {
		return tops[0].Frames
	}
	return ""
}

// StackTime is the time blocked in one stack of stage other.
type StackTime struct {
	Frames string // its top frames, innermost first, or why it has none
	Total  time.Duration
}

// topStacks returns up to n stacks of other, the most time first (ties
// by frames); time with no frames ("") is left out.
func topStacks(other map[string]time.Duration, n int) []StackTime {
	var out []StackTime
	for f, d := range other {
		if f != "" && d > 0 {
			out = append(out, StackTime{Frames: f, Total: d})
		}
	}
	slices.SortFunc(out, func(a, c StackTime) int {
		if n := cmp.Compare(c.Total, a.Total); n != 0 {
			return n
		}
		return cmp.Compare(a.Frames, c.Frames)
	})
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// processes builds Run.Processes and Device.Processes from the syscall
// probe's sums (event.SyscallStats, event.BlockedStack), classifying each
// stack with the table.
func (b *builder) processes() {
	if len(b.tl.SyscallStats) == 0 && len(b.tl.UnfinishedCalls) == 0 {
		return
	}
	tab := b.opts.Stages
	if tab == nil {
		tab = stage.Default()
	}
	type group struct {
		h              sharedHist
		sleep, runq    time.Duration
		stages         stageSums
		walked         map[string]time.Duration // asleep by stage, stacks walked
		unwalked, lost time.Duration
		stacks         time.Duration // asleep in the stacks summed
		// The calls still in the kernel at the end: how many, and their
		// time so far.
		unfinished int
		inCall     time.Duration
		fromArming uint64
	}
	groups := map[processKey]*group{}
	get := func(k processKey) *group {
		g := groups[k]
		if g == nil {
			g = &group{walked: map[string]time.Duration{}}
			groups[k] = g
		}
		return g
	}
	comms := map[uint32]string{}
	for i := range b.tl.SyscallStats {
		s := &b.tl.SyscallStats[i]
		g := get(processKey{s.Pid, b.name(s.Dev), s.Call})
		g.h.merge(sharedHist{sp: &s.Latency})
		g.fromArming += s.FromArming
		g.sleep = SaturatingAdd(g.sleep, s.Sleep)
		g.runq = SaturatingAdd(g.runq, s.Runqueue)
		if comms[s.Pid] == "" {
			comms[s.Pid] = s.Comm
		}
	}
	names := make([]string, 0, 64)
	for _, bs := range b.tl.BlockedStacks {
		g := get(processKey{bs.Pid, b.name(bs.Dev), bs.Call})
		g.stacks = SaturatingAdd(g.stacks, bs.Total)
		switch {
		case bs.Unwalked:
			g.unwalked = SaturatingAdd(g.unwalked, bs.Total)
		case len(bs.KernelStack) == 0:
			g.lost = SaturatingAdd(g.lost, bs.Total)
		default:
			names = names[:0]
			for _, f := range bs.KernelStack {
				names = append(names, f.Symbol)
			}
			r := tab.Classify(names, bs.Call)
			g.walked[r.Stage] = SaturatingAdd(g.walked[r.Stage], bs.Total)
			g.stages.add(r.Stage, bs.Total, r.Frame)
		}
	}
	// The calls still in the kernel at the end: their earlier sleeps are
	// in the blocked stacks already; their latest sleep, up to the end,
	// is one more, and their time so far counts with their calls'.
	unfinished := map[uint32][]Unfinished{}
	for _, u := range b.tl.UnfinishedCalls {
		dev := b.name(u.Dev)
		g := get(processKey{u.Task.Tgid, dev, u.Call})
		g.unfinished++
		g.inCall = SaturatingAdd(g.inCall, max(u.InCall, 0))
		g.runq = SaturatingAdd(g.runq, max(u.Runqueue, 0))
		g.sleep = SaturatingAdd(g.sleep, max(u.Asleep, 0))
		g.stacks = SaturatingAdd(g.stacks, max(u.Asleep, 0))
		if comms[u.Task.Tgid] == "" {
			comms[u.Task.Tgid] = u.Task.Comm
		}
		st := stage.Other
		switch {
		case u.Unwalked:
			g.unwalked = SaturatingAdd(g.unwalked, max(u.Asleep, 0))
			st = ""
		case len(u.KernelStack) == 0:
			g.lost = SaturatingAdd(g.lost, max(u.Asleep, 0))
		default:
			names = names[:0]
			for _, f := range u.KernelStack {
				names = append(names, f.Symbol)
			}
			r := tab.Classify(names, u.Call)
			st = r.Stage
			g.walked[r.Stage] = SaturatingAdd(g.walked[r.Stage], max(u.Asleep, 0))
			g.stages.add(r.Stage, max(u.Asleep, 0), r.Frame)
		}
		blocked := min(SaturatingAdd(SaturatingAdd(max(u.Sleep, 0), max(u.Runqueue, 0)), max(u.Asleep, 0)), max(u.InCall, 0))
		unfinished[u.Task.Tgid] = append(unfinished[u.Task.Tgid], Unfinished{Tid: u.Task.Pid, Comm: u.Task.Comm,
			Syscall: u.Call, Device: dev, InCall: max(u.InCall, 0), Blocked: blocked, Stage: st, LowerBound: u.Before})
	}
	for _, g := range groups {
		// The sleeps not walked share out like the walked ones.
		var walked time.Duration
		for _, d := range g.walked {
			walked = SaturatingAdd(walked, d)
		}
		if g.unwalked > 0 {
			if walked == 0 {
				g.stages.add(stage.Other, g.unwalked, "stacks not walked")
			} else {
				for st, d := range g.walked {
					g.stages.add(st, time.Duration(float64(g.unwalked)*float64(d)/float64(walked)), "")
				}
			}
		}
		g.stages.add(stage.Other, g.lost, "stacks lost")
		// Sleep the probe summed per call but not per stack (its
		// map was full): counted, with no stage to give it.
		if g.sleep > g.stacks {
			g.stages.add(stage.Other, g.sleep-g.stacks, "sleeps not summed by stack")
		}
		g.stages.add(stage.Runqueue, g.runq, "")
	}

	// A process's last record names it: a later one says it exec'd or
	// moved to another cgroup (probe syscall).
	info := map[uint32]event.Process{}
	for _, p := range b.tl.Processes {
		info[p.Pid] = p
	}
	byPid := map[uint32]*Process{}
	calls := map[uint32]map[string]*callAcc{}
	sums := map[uint32]*stageSums{}
	devSums := map[uint32]map[string]*stageSums{}
	devCalls := map[uint32]map[string]map[string]*callAcc{}
	// A process on one device (most) has the same sums there as over
	// all: its device's calls share the accumulators of all its calls
	// rather than holding a second set (a histogram of 2.6 KB a call).
	oneDev := map[uint32]string{}
	multiDev := map[uint32]bool{}
	for k := range groups {
		if d, ok := oneDev[k.pid]; !ok {
			oneDev[k.pid] = k.device
		} else if d != k.device {
			multiDev[k.pid] = true
		}
	}
	for k, g := range groups {
		p := byPid[k.pid]
		if p == nil {
			p = &Process{Pid: k.pid, Comm: comms[k.pid], on: map[string]*Process{}}
			if pi, ok := info[k.pid]; ok {
				p.Cgroup, p.Blkio = pi.Cgroup, pi.Blkio
				if pi.Comm != "" {
					p.Comm = pi.Comm
				}
			}
			byPid[k.pid] = p
			calls[k.pid] = map[string]*callAcc{}
			sums[k.pid] = &stageSums{}
			devSums[k.pid] = map[string]*stageSums{}
			devCalls[k.pid] = map[string]map[string]*callAcc{}
		}
		blocked := time.Duration(0)
		for _, d := range g.stages.total {
			blocked = SaturatingAdd(blocked, d)
		}
		accs := []map[string]*callAcc{calls[k.pid]}
		if multiDev[k.pid] {
			accs = append(accs, devCallsOf(devCalls[k.pid], k.device))
		}
		for _, acc := range accs {
			a := acc[k.call]
			if a == nil {
				a = &callAcc{}
				acc[k.call] = a
			}
			a.h.merge(g.h)
			a.blocked = SaturatingAdd(a.blocked, blocked)
			a.stages.merge(&g.stages)
			a.unfinished += g.unfinished
			a.inCall = SaturatingAdd(a.inCall, g.inCall)
			a.fromArming += g.fromArming
		}
		sums[k.pid].merge(&g.stages)
		ds := devSums[k.pid][k.device]
		if ds == nil {
			ds = &stageSums{}
			devSums[k.pid][k.device] = ds
		}
		ds.merge(&g.stages)
		// Merged: the group (a histogram and its maps) can go while the
		// next ones are, rather than all of them living to the end.
		delete(groups, k)
	}
	for pid, p := range byPid {
		p.Unfinished = unfinished[pid]
		slices.SortFunc(p.Unfinished, func(a, c Unfinished) int {
			if n := cmp.Compare(c.InCall, a.InCall); n != 0 {
				return n
			}
			return cmp.Compare(a.Tid, c.Tid)
		})
		fill(p, calls[pid], sums[pid])
		if !multiDev[pid] {
			devCalls[pid][oneDev[pid]] = calls[pid]
		}
		for dev, acc := range devCalls[pid] {
			q := &Process{Pid: p.Pid, Comm: p.Comm, Cgroup: p.Cgroup, Blkio: p.Blkio, Devices: []string{dev}}
			for _, u := range p.Unfinished {
				if u.Device == dev {
					q.Unfinished = append(q.Unfinished, u)
				}
			}
			fill(q, acc, devSums[pid][dev])
			p.on[dev] = q
			p.Devices = append(p.Devices, dev)
		}
		slices.SortFunc(p.Devices, func(a, c string) int {
			if n := cmp.Compare(p.on[c].Total, p.on[a].Total); n != 0 {
				return n
			}
			return cmp.Compare(a, c)
		})
		b.run.Processes = append(b.run.Processes, p)
	}
	sortProcesses(b.run.Processes)
	// Each slow call once, on its process's device; a process on one
	// device shares that list (spans are large and a storm has many).
	counts := map[processKey]int{}
	for _, c := range b.tl.Syscalls {
		counts[processKey{pid: c.Task.Tgid, device: b.name(c.Dev)}]++
	}
	for _, c := range b.tl.Syscalls {
		p := byPid[c.Task.Tgid]
		if p == nil {
			continue // no sums of it: not a process of the run
		}
		dev := b.name(c.Dev)
		q, ok := p.on[dev]
		if !ok {
			continue
		}
		if q.Slow == nil {
			q.Slow = make(Spans, 0, counts[processKey{pid: c.Task.Tgid, device: dev}])
		}
		start := b.rel(c.Start)
		q.Slow = append(q.Slow, Span{Start: start, End: SaturatingAdd(start, max(c.Duration, 0)), Kind: KindSyscall,
			Pid: c.Task.Pid, Tgid: c.Task.Tgid, Comm: c.Task.Comm, Device: dev, Attr: c.Call, Source: SourceSyscall})
	}
	for _, u := range b.tl.UnfinishedCalls {
		p := byPid[u.Task.Tgid]
		if p == nil {
			continue
		}
		dev := b.name(u.Dev)
		q, ok := p.on[dev]
		if !ok {
			continue
		}
		start := b.rel(u.Start)
		q.Slow = append(q.Slow, Span{Start: start, End: SaturatingAdd(start, max(u.InCall, 0)), Kind: KindSyscall,
			Pid: u.Task.Pid, Tgid: u.Task.Tgid, Comm: u.Task.Comm, Device: dev, Attr: u.Call, Source: SourceUnfinished})
	}
	for _, p := range b.run.Processes {
		for _, dev := range p.Devices {
			q := p.on[dev]
			sortSpans(q.Slow)
			if len(p.Devices) == 1 {
				p.Slow = q.Slow
			} else {
				p.Slow = append(p.Slow, q.Slow...)
			}
			if d, ok := b.byName[dev]; ok {
				d.Processes = append(d.Processes, q)
			}
		}
		if len(p.Devices) > 1 {
			sortSpans(p.Slow)
		}
	}
	b.memStalls(byPid)
	for _, d := range b.byName {
		sortProcesses(d.Processes)
	}
}

func devCallsOf[V any](m map[string]map[string]V, dev string) map[string]V {
	if m[dev] == nil {
		m[dev] = map[string]V{}
	}
	return m[dev]
}

// callAcc sums one system call's latencies, blocked time and its stages,
// and its calls still in the kernel at the end.
type callAcc struct {
	h          sharedHist
	blocked    time.Duration
	stages     stageSums
	unfinished int
	inCall     time.Duration
	fromArming uint64
}

// addCalls adds each call of calls to acc, by system call.
func addCalls(acc map[string]*callAcc, calls []*Call) {
	for _, c := range calls {
		a := acc[c.Syscall]
		if a == nil {
			a = &callAcc{}
			acc[c.Syscall] = a
		}
		a.h.merge(c.h)
		a.blocked = SaturatingAdd(a.blocked, c.Blocked)
		a.unfinished += c.Unfinished
		a.inCall = SaturatingAdd(a.inCall, c.inCall)
		a.fromArming += c.FromArming
		if c.stages != nil {
			a.stages.merge(c.stages)
		}
	}
}

// fill sets a process's calls, totals and stages from its sums.
func fill(p *Process, acc map[string]*callAcc, sums *stageSums) {
	for name, a := range acc {
		h := a.h
		total := SaturatingAdd(time.Duration(min(h.sumNs(), math.MaxInt64)), a.inCall)
		c := &Call{Syscall: name, Latency: h.latency(), Total: total, Blocked: a.blocked, Unfinished: a.unfinished,
			FromArming: a.fromArming, h: h, inCall: a.inCall, stages: &a.stages}
		p.Calls = append(p.Calls, c)
		p.Total = SaturatingAdd(p.Total, c.Total)
	}
	sortCalls(p.Calls)
	for st, d := range sums.total {
		p.Blocked = SaturatingAdd(p.Blocked, d)
		t := StageTime{Stage: st, Total: d}
		if st == stage.Other {
			t.Frames = sums.otherTop()
		}
		p.Stages = append(p.Stages, t)
	}
	p.other = sums.other
	shareStages(p)
}

func sortCalls(cs []*Call) {
	slices.SortFunc(cs, func(a, c *Call) int {
		if n := cmp.Compare(c.Total, a.Total); n != 0 {
			return n
		}
		return cmp.Compare(a.Syscall, c.Syscall)
	})
}

// shareStages sets the stages' shares of the blocked time and orders them,
// the most time first (ties in the vocabulary's order).
func shareStages(p *Process) {
	for i := range p.Stages {
		p.Stages[i].Share = 0
		if p.Blocked > 0 {
			p.Stages[i].Share = float64(p.Stages[i].Total) / float64(p.Blocked)
		}
	}
	slices.SortFunc(p.Stages, func(a, c StageTime) int {
		if n := cmp.Compare(c.Total, a.Total); n != 0 {
			return n
		}
		return cmp.Compare(slices.Index(stage.Vocabulary, a.Stage), slices.Index(stage.Vocabulary, c.Stage))
	})
}

// sortProcesses orders processes by their time in storage calls, the most
// first.
func sortProcesses(ps []*Process) {
	slices.SortFunc(ps, func(a, c *Process) int {
		if n := cmp.Compare(c.Total, a.Total); n != 0 {
			return n
		}
		return cmp.Compare(a.Pid, c.Pid)
	})
}

// ProcessesOn restricts processes to the devices named: each as seen on
// those devices only (their calls and stages there), the ones with no call
// there left out. For the --device filter.
func ProcessesOn(ps []*Process, devices map[string]bool) []*Process {
	var out []*Process
	for _, p := range ps {
		var on []string
		for _, d := range p.Devices {
			if devices[d] {
				on = append(on, d)
			}
		}
		switch len(on) {
		case 0:
		case len(p.Devices):
			out = append(out, p)
		case 1:
			out = append(out, p.on[on[0]])
		default:
			out = append(out, p.merged(on))
		}
	}
	sortProcesses(out)
	return out
}

// merged is the process on several of its devices.
func (p *Process) merged(devices []string) *Process {
	q := &Process{Pid: p.Pid, Comm: p.Comm, Cgroup: p.Cgroup, Blkio: p.Blkio, Devices: devices, on: map[string]*Process{}}
	calls := map[string]*callAcc{}
	var sums stageSums
	for _, d := range devices {
		v := p.on[d]
		q.on[d] = v
		q.Slow = append(q.Slow, v.Slow...)
		q.Unfinished = append(q.Unfinished, v.Unfinished...)
		addCalls(calls, v.Calls)
		sums.merge(v.sums())
	}
	sortSpans(q.Slow)
	slices.SortFunc(q.Unfinished, func(a, c Unfinished) int {
		if n := cmp.Compare(c.InCall, a.InCall); n != 0 {
			return n
		}
		return cmp.Compare(a.Tid, c.Tid)
	})
	fill(q, calls, &sums)
	return q
}

// sums returns the process's stage times as sums, other's by stack.
func (p *Process) sums() *stageSums {
	var s stageSums
	for _, st := range p.Stages {
		if st.Stage != stage.Other {
			s.add(st.Stage, st.Total, "")
		}
	}
	var other time.Duration
	for f, d := range p.other {
		s.add(stage.Other, d, f)
		other = SaturatingAdd(other, d)
	}
	// Other's time no stack accounts for (a process built without them).
	s.add(stage.Other, p.Stage(stage.Other)-other, p.otherFrames())
	return &s
}

// otherFrames are the Frames of the process's stage other.
func (p *Process) otherFrames() string {
	for _, st := range p.Stages {
		if st.Stage == stage.Other {
			return st.Frames
		}
	}
	return ""
}

// sharedHist is a sum of histograms that copies none while it holds one:
// it points at the first one merged (an event's sparse histogram, or
// another sum's, read-only) and makes a whole Histogram of its own only
// when a second is added. Most sums (a process's system call on one
// device) have one: 2.6 KB each not made, twice.
type sharedHist struct {
	sp   *hist.Sparse    // the one histogram merged, when sparse
	full *hist.Histogram // the one merged, or the sum (own)
	own  bool            // full is this sum's own, which merges may write
}

// merge adds o to the sum; what o points at is never written.
func (s *sharedHist) merge(o sharedHist) {
	switch {
	case o.sp == nil && o.full == nil:
	case s.sp == nil && s.full == nil:
		*s = sharedHist{sp: o.sp, full: o.full}
	default:
		if !s.own {
			h := new(hist.Histogram)
			if s.sp != nil {
				s.sp.AddTo(h)
			} else {
				*h = *s.full
			}
			*s = sharedHist{full: h, own: true}
		}
		if o.sp != nil {
			o.sp.AddTo(s.full)
		} else {
			s.full.Merge(o.full)
		}
	}
}

// sumNs is the sum's time.
func (s *sharedHist) sumNs() uint64 {
	switch {
	case s.sp != nil:
		return s.sp.SumNs
	case s.full != nil:
		return s.full.SumNs
	}
	return 0
}

// latency summarizes the sum.
func (s *sharedHist) latency() Latency {
	switch {
	case s.sp != nil:
		return latencyOf(s.sp.Count, s.sp.SumNs, s.sp.MaxNs, s.sp.Quantile)
	case s.full != nil:
		return latency(s.full)
	}
	return Latency{} // an empty histogram's

}
