package facts

import "time"

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
// of their kind do not count. Each process keeps only those slow calls.
func (ps Processes) Slower(minMs, tailMs float64) Processes {
	var out Processes
	for _, p := range ps {
		if p == nil || len(p.Slow) == 0 {
			continue
		}
		slow := p.Slow.where(func(sp *Span) bool {
			return msOf(sp.Duration()) >= tailMs && p.Call(sp.Attr).Latency.P99Us >= tailMs*1000
		})
		if len(slow) == 0 || msOf(slow.total()) < minMs {
			continue
		}
		q := *p
		q.Slow = slow
		out = append(out, &q)
	}
	return out
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

// Unexplained returns the processes as seen on the devices no finding of e
// is about (their calls and stages there), leaving out those a finding
// names and those whose calls all went to such devices.
func (ps Processes) Unexplained(e Explained) Processes {
	var out Processes
	for _, p := range ps {
		if p == nil || len(Tasks{{Pid: p.Pid, Tgid: p.Pid}}.In(e.Tasks)) > 0 {
			continue
		}
		var devs []string
		for _, d := range p.Devices {
			if !e.Device(d) {
				devs = append(devs, d)
			}
		}
		switch {
		case len(devs) == 0:
		case len(devs) == len(p.Devices):
			out = append(out, p)
		default:
			keep := map[string]bool{}
			for _, d := range devs {
				keep[d] = true
			}
			out = append(out, ProcessesOn(Processes{p}, keep)...)
		}
	}
	sortProcesses(out)
	return out
}

// total is the time the spans cover, summed (overlaps twice).
func (s Spans) total() time.Duration {
	var d time.Duration
	for _, sp := range s {
		d = SaturatingAdd(d, sp.Duration())
	}
	return d
}
