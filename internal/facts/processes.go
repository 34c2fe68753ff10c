package facts

import (
	"time"

	"github.com/whyslow/whyslow/internal/stage"
)

// Processes is a list of processes (Run.Processes, Device.Processes), the
// most time in storage calls first.
type Processes []*Process

// Count is the number of processes.
func (ps Processes) Count() int { return len(ps) }

// Tasks returns the processes as tasks (Pid and Tgid the process id), with
// the cgroup their I/O is charged to: the blkio one where cgroup v1 holds
// the block I/O controller, else the v2 one.
func (ps Processes) Tasks() Tasks {
	var ts taskSet
	for _, p := range ps {
		if p == nil {
			continue
		}
		cg := p.Blkio
		if cg == "" {
			cg = p.Cgroup
		}
		comm := p.Comm
		if n := len(p.Slow); n > 0 && p.Slow[n-1].Comm != "" {
			comm = p.Slow[n-1].Comm // its name when it last was slow: after an exec, the new one
		}
		ts.add(Task{Pid: p.Pid, Tgid: p.Pid, Comm: comm, Cgroup: cg})
	}
	return ts.list
}

// Comms returns the distinct comms of the processes (as Tasks names
// them), sorted.
func (ps Processes) Comms() []string { return ps.Tasks().Comms() }

// Except returns the processes that are not a process of t.
func (ps Processes) Except(t Tasks) Processes {
	pids := map[uint32]bool{}
	for _, x := range t {
		pids[x.Pid] = true
		if x.Tgid != 0 {
			pids[x.Tgid] = true
		}
	}
	var out Processes
	for _, p := range ps {
		if p != nil && !pids[p.Pid] {
			out = append(out, p)
		}
	}
	return out
}

// Waited returns the processes that spent at least minMs milliseconds
// blocked in the stages named, together (and some time).
func (ps Processes) Waited(minMs float64, stages ...string) Processes {
	var out Processes
	for _, p := range ps {
		var d time.Duration
		for _, s := range stages {
			d += p.Stage(s)
		}
		if p != nil && msOf(d) >= minMs && d > 0 {
			out = append(out, p)
		}
	}
	return out
}

// StageMs is the time the processes spent blocked in the stages named, in
// ms, summed.
func (ps Processes) StageMs(stages ...string) float64 {
	var d time.Duration
	for _, p := range ps {
		for _, s := range stages {
			d += p.Stage(s)
		}
	}
	return msOf(d)
}

// Slower returns the processes whose slow calls (above --min-latency) of
// the kinds that are slow at the tail took at least minMs milliseconds
// together: of each kind of call, the ones of at least tailMs, when that
// kind's p99 is at least tailMs too; a few slow calls among many fast ones
// of their kind do not count. Of a process as Unexplained gives it, only
// the part of that time in stages no finding explains counts
// (UnexplainedMs). Each process keeps only those slow calls.
func (ps Processes) Slower(minMs, tailMs float64) Processes {
	var out Processes
	for _, p := range ps {
		if p == nil || len(p.Slow) == 0 {
			continue
		}
		slow := p.Slow.where(func(sp *Span) bool {
			return msOf(sp.Duration()) >= tailMs && p.Call(sp.Attr).Latency.P99Us >= tailMs*1000
		})
		if len(slow) == 0 || msOf(p.unexplained(slow)) < minMs {
			continue
		}
		q := *p
		q.Slow = slow
		out = append(out, &q)
	}
	return out
}

// unexplained is the part of the time of spans (the process's slow calls)
// in stages no finding explains: all of it but in a process Unexplained
// gave.
func (p *Process) unexplained(spans Spans) time.Duration {
	if p.weight == nil {
		return spans.total()
	}
	var d time.Duration
	for _, sp := range spans {
		w, ok := p.weight[weightKey{sp.Device, sp.Attr}]
		if !ok {
			w = 1
		}
		d = SaturatingAdd(d, time.Duration(w*float64(sp.Duration())))
	}
	return d
}

// UnexplainedMs is the part of the processes' slow calls' time, in ms,
// spent in stages no finding explains: SlowMs but for processes as
// Unexplained gives them, whose slow calls count by the share of their
// blocked time (per device and call) in the stages no finding explains.
func (ps Processes) UnexplainedMs() float64 {
	var d time.Duration
	for _, p := range ps {
		if p != nil {
			d = SaturatingAdd(d, p.unexplained(p.Slow))
		}
	}
	return msOf(d)
}

// ExplainedStages returns, of processes as Unexplained gives them, the
// blocked time findings explain, by stage, summed, the most time first
// (shares of their blocked time); none for other processes. Runqueue time
// is not among them: it goes with the stages left in their proportion,
// and the rest of it is no finding's.
func (ps Processes) ExplainedStages() []StageTime {
	var sums stageSums
	var blocked time.Duration
	for _, p := range ps {
		if p == nil || p.explained == nil {
			continue
		}
		sums.merge(p.explained)
		blocked = SaturatingAdd(blocked, p.Blocked)
	}
	q := &Process{Blocked: blocked}
	for st, d := range sums.total {
		q.Stages = append(q.Stages, StageTime{Stage: st, Total: d})
	}
	shareStages(q)
	return q.Stages
}

// SlowMs is the time of the processes' slow calls, in ms, summed.
func (ps Processes) SlowMs() float64 {
	var d time.Duration
	for _, p := range ps {
		if p != nil {
			d = SaturatingAdd(d, p.Slow.total())
		}
	}
	return msOf(d)
}

// Slow returns the processes' slow calls, in time order.
func (ps Processes) Slow() Spans {
	var out Spans
	for _, p := range ps {
		if p != nil {
			out = append(out, p.Slow...)
		}
	}
	sortSpans(out)
	return out
}

// Stages returns the processes' blocked time by stage, summed, the most
// time first; the frames of other are those of its largest stack.
func (ps Processes) Stages() []StageTime {
	sums, blocked := ps.sums()
	q := &Process{Blocked: blocked}
	for st, d := range sums.total {
		t := StageTime{Stage: st, Total: d}
		if st == "other" {
			t.Frames = sums.otherTop()
		}
		q.Stages = append(q.Stages, t)
	}
	shareStages(q)
	return q.Stages
}

// OtherStacks returns the processes' n largest stacks of stage other (the
// stacks no stage of the table knows), summed over them, the most time
// first.
func (ps Processes) OtherStacks(n int) []StackTime {
	sums, _ := ps.sums()
	return topStacks(sums.other, n)
}

// sums are the processes' stage times, summed, and their blocked time.
func (ps Processes) sums() (*stageSums, time.Duration) {
	var sums stageSums
	var blocked time.Duration
	for _, p := range ps {
		if p == nil {
			continue
		}
		sums.merge(p.sums())
		blocked = SaturatingAdd(blocked, p.Blocked)
	}
	return &sums, blocked
}

// Unexplained returns the processes as seen with only the blocked time no
// finding of e explains: a finding explains the stages it declares (all of
// them when it declares none) of the processes it names, on every device,
// and of every process on the devices it is about. A process no finding is
// about is returned as it is. Of the others, each device where some of its
// blocked time is left keeps its calls and slow calls, its stages only
// those no finding explains (their shares still of its whole blocked
// time), and, for each call, the part of its blocked time in those stages:
// what UnexplainedMs and Slower count of its slow calls. Time in stage
// runqueue (runnable, waiting for a CPU) is no storage cause that a finding
// could explain: it goes with the call's other stages, explained and not
// in their proportion. A process with nothing left is left out.
func (ps Processes) Unexplained(e Explained) Processes {
	covers := e.covers()
	var out Processes
	for _, p := range ps {
		if p == nil {
			continue
		}
		touched := false
		for _, c := range covers {
			for _, d := range p.Devices {
				touched = touched || c.about(p.Pid, d)
			}
		}
		if !touched {
			out = append(out, p)
			continue
		}
		var views []*Process
		for _, d := range p.Devices {
			if v := unexplainedOn(p.On(d), p.Pid, d, covers); v != nil {
				views = append(views, v)
			}
		}
		switch len(views) {
		case 0:
		case 1:
			out = append(out, views[0])
		default:
			out = append(out, mergeViews(p, views))
		}
	}
	sortProcesses(out)
	return out
}

// unexplainedOn returns v, a process as seen on device, with only its
// blocked time no cover explains (see Unexplained): v itself when no cover
// is about it there, nil when the covers explain all of it.
func unexplainedOn(v *Process, pid uint32, device string, covers []Cover) *Process {
	var about []Cover
	for _, c := range covers {
		if c.about(pid, device) {
			if c.Stages == nil {
				return nil
			}
			about = append(about, c)
		}
	}
	if len(about) == 0 {
		return v
	}
	ex := func(st string) bool {
		for _, c := range about {
			if c.explains(st) {
				return true
			}
		}
		return false
	}
	// The calls and their stage sums; calls without (made by hand) go
	// together with the stages of the process on the device.
	type part struct {
		calls []string
		sums  *stageSums
	}
	var parts []part
	var bare []string
	for _, c := range v.Calls {
		if c.stages != nil {
			parts = append(parts, part{[]string{c.Syscall}, c.stages})
		} else {
			bare = append(bare, c.Syscall)
		}
	}
	if len(bare) > 0 || len(parts) == 0 {
		var all []string
		for _, c := range v.Calls {
			all = append(all, c.Syscall)
		}
		parts = []part{{all, v.sums()}}
	}
	q := *v
	q.weight = map[weightKey]float64{}
	var un, exp stageSums
	for _, pt := range parts {
		var u, x, rq time.Duration
		for st, d := range pt.sums.total {
			switch {
			case st == stage.Runqueue:
				rq = SaturatingAdd(rq, d)
			case ex(st):
				x = SaturatingAdd(x, d)
			default:
				u = SaturatingAdd(u, d)
			}
		}
		w := 1.0
		switch {
		case u+x > 0:
			w = float64(u) / float64(u+x)
		case rq > 0 && ex(stage.Runqueue):
			w = 0
		}
		for _, c := range pt.calls {
			q.weight[weightKey{device, c}] = w
		}
		for st, d := range pt.sums.total {
			switch {
			case st == stage.Runqueue:
				// Its share with the stages left; the rest is no
				// finding's to claim (ExplainedStages lists none).
				un.add(st, time.Duration(w*float64(d)), "")
			case st == stage.Other:
				for f, d := range pt.sums.other {
					if ex(st) {
						exp.add(st, d, f)
					} else {
						un.add(st, d, f)
					}
				}
			case ex(st):
				exp.add(st, d, "")
			default:
				un.add(st, d, "")
			}
		}
	}
	var left time.Duration
	for _, d := range un.total {
		left = SaturatingAdd(left, d)
	}
	if left == 0 && v.Blocked > 0 {
		return nil
	}
	q.Stages = nil
	for st, d := range un.total {
		t := StageTime{Stage: st, Total: d}
		if st == stage.Other {
			t.Frames = un.otherTop()
		}
		q.Stages = append(q.Stages, t)
	}
	q.other = un.other
	shareStages(&q)
	q.explained = &exp
	return &q
}

// mergeViews is the process p on the devices of views, each a process on
// one device as unexplainedOn gave it.
func mergeViews(p *Process, views []*Process) *Process {
	q := &Process{Pid: p.Pid, Comm: p.Comm, Cgroup: p.Cgroup, Blkio: p.Blkio, on: map[string]*Process{},
		weight: map[weightKey]float64{}, explained: &stageSums{}}
	calls := map[string]*callAcc{}
	var sums stageSums
	var blocked time.Duration
	for _, v := range views {
		q.Devices = append(q.Devices, v.Devices...)
		for _, d := range v.Devices {
			q.on[d] = v
		}
		q.Slow = append(q.Slow, v.Slow...)
		addCalls(calls, v.Calls)
		sums.merge(v.sums())
		blocked = SaturatingAdd(blocked, v.Blocked)
		for k, w := range v.weight {
			q.weight[k] = w
		}
		if v.explained != nil {
			q.explained.merge(v.explained)
		}
	}
	sortSpans(q.Slow)
	fill(q, calls, &sums)
	q.Blocked = blocked
	shareStages(q)
	return q
}

// total is the time the spans cover, summed (overlaps twice).
func (s Spans) total() time.Duration {
	var d time.Duration
	for _, sp := range s {
		d = SaturatingAdd(d, sp.Duration())
	}
	return d
}
