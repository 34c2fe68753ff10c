package facts

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/stage"
)

// Sources of a limit's delay.
const (
	// SourceLimitInferred: the delay is inferred from the limit and the
	// cgroup's counters in cgroupfs and the blocked time of its processes
	// that the device's service time does not explain (blk-throttle holds
	// bios before block_bio_queue, where no tracepoint sees them).
	SourceLimitInferred = "inferred: cgroupfs limit and counters, blocked time the device does not explain"
)

// Limit is one blk-throttle limit of a cgroup on a device (cgroup v2
// io.max, v1 blkio.throttle.*), with what the run saw of it: the rate the
// cgroup's I/O ran at, and the processes in the cgroup (or below it) that
// made storage calls to the device, and the delay they suffered.
type Limit struct {
	// Cgroup is the cgroup's path in its hierarchy; V1 says the hierarchy
	// is cgroup v1's blkio one.
	Cgroup string
	V1     bool
	Device string
	// Kind is "rbps", "wbps", "riops" or "wiops"; Value its bytes or I/Os a
	// second.
	Kind  string
	Value uint64
	// Rate is the rate of the cgroup's I/O of the limit's kind (reads or
	// writes; I/Os or bytes a second) on the device while it did I/O
	// during the run, from its counters (read at the start, every 500 ms
	// when they change with the reading before the change, and at the
	// end; zero on a device of a v2 io.max that io.stat does not list
	// yet): from the last reading before they grew to the first after
	// they stopped; Counted is false when they were not read twice (then
	// Rate is 0).
	Rate    float64
	Counted bool
	// Processes are the processes of the cgroup (or of one below it) that
	// made storage calls to the device, each as seen on the device (their
	// calls there), the most time first: those the iolimits probe saw in
	// its cgroup.procs, and those whose cgroup path at their first storage
	// call was in it.
	Processes []*Process
	// Delay is the time the limit cost those processes: their blocked time
	// in the stages throttled I/O shows up in (device, writeback_wait,
	// cgroup_throttle), the part of it in the calls the limit holds (reads
	// for a read limit, writes and syncs for a write limit, asynchronous
	// calls for both: by their share of the blocked time), less what the
	// device's service time explains (those calls times its mean service
	// time). Where the throttle probe timed the bios blk-throttle held
	// (fentry or kprobe), it is the sum of their waits above --min-latency
	// instead. Delays has it per process, in the order of Processes.
	Delay  time.Duration
	Delays []time.Duration
	// Source says how Delay was measured: SourceLimitInferred, or
	// SourceDirect (fentry __blk_throtl_bio, ...).
	Source string
	// Stuck is the longest time one of Processes spent in a call the
	// limit holds (of its op) on the device that had not returned when
	// the run ended, its latest sleep a wait for the I/O (the stages
	// throttled I/O shows up in), on a device that failed no request
	// and timed none out (probe devfault): a limit so low that one bio
	// does not get through it in the run, whose cgroup's I/O then shows
	// no rate at all. 0 when none.
	Stuck time.Duration
}

// Binding reports whether the limit held its cgroup's I/O: it ran at 75%
// of the limit or more, or a call of its processes could not get through
// at all (Stuck of a second or more, while its I/O stayed below the
// limit).
func (l *Limit) Binding() bool {
	return l.Counted && (l.Use() >= 0.75 || l.Stuck >= time.Second)
}

// Limits is a list of limits.
type Limits []*Limit

// Count is the number of limits.
func (l Limits) Count() int { return len(l) }

// DelayMs is the delay of all the limits, in milliseconds.
func (l Limits) DelayMs() float64 {
	var d time.Duration
	for _, x := range l {
		d = SaturatingAdd(d, x.Delay)
	}
	return msOf(d)
}

// Sources returns how the limits' delays were measured, distinct.
func (l Limits) Sources() []string {
	var out []string
	for _, x := range l {
		if x.Source != "" {
			out = append(out, x.Source)
		}
	}
	return distinctSorted(out)
}

// Use is Rate over Value: 1 when the cgroup's I/O ran at the limit; 0
// when not counted.
func (l *Limit) Use() float64 {
	if l == nil || l.Value == 0 {
		return 0
	}
	return l.Rate / float64(l.Value)
}

// Setting is the limit as it is written: "wiops=50" for io.max,
// "blkio.throttle.write_iops_device=50" for cgroup v1.
func (l *Limit) Setting() string {
	if l == nil {
		return ""
	}
	if l.V1 {
		return fmt.Sprintf("%s=%d", v1LimitFile(l.Kind), l.Value)
	}
	return fmt.Sprintf("%s=%d", l.Kind, l.Value)
}

// File is the cgroupfs file that sets the limit.
func (l *Limit) File() string {
	if l == nil {
		return ""
	}
	if l.V1 {
		return v1LimitFile(l.Kind)
	}
	return "io.max"
}

// Unit is the unit of Value and Rate: "IOPS" or "B/s".
func (l *Limit) Unit() string {
	if l != nil && strings.HasSuffix(l.Kind, "bps") {
		return "B/s"
	}
	return "IOPS"
}

// Op is the kind of I/O the limit holds: "read" or "write".
func (l *Limit) Op() string {
	if l != nil && strings.HasPrefix(l.Kind, "r") {
		return "read"
	}
	return "write"
}

// DelayMs is Delay in milliseconds.
func (l *Limit) DelayMs() float64 {
	if l == nil {
		return 0
	}
	return msOf(l.Delay)
}

// Tasks returns the limit's processes as tasks (pid = tgid), the most
// delayed first.
func (l *Limit) Tasks() Tasks {
	if l == nil {
		return nil
	}
	idx := make([]int, len(l.Processes))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(l.delay(b), l.delay(a)) })
	var ts taskSet
	for _, i := range idx {
		p := l.Processes[i]
		ts.add(Task{Pid: p.Pid, Tgid: p.Pid, Comm: p.Comm})
	}
	return ts.list
}

// Delayed returns the limit's processes that it delayed, with their delay:
// "fio (pid 123): 5600 ms", the most delayed first.
func (l *Limit) Delayed() []string {
	if l == nil {
		return nil
	}
	idx := make([]int, 0, len(l.Processes))
	for i := range l.Processes {
		if l.delay(i) > 0 {
			idx = append(idx, i)
		}
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(l.delay(b), l.delay(a)) })
	out := make([]string, 0, len(idx))
	for _, i := range idx {
		p := l.Processes[i]
		out = append(out, fmt.Sprintf("%s (pid %d): %.0f ms", p.Comm, p.Pid, msOf(l.delay(i))))
	}
	return out
}

func (l *Limit) delay(i int) time.Duration {
	if i < len(l.Delays) {
		return l.Delays[i]
	}
	return 0
}

func v1LimitFile(kind string) string {
	op, rest := "write", strings.TrimPrefix(kind, "w")
	if strings.HasPrefix(kind, "r") {
		op, rest = "read", strings.TrimPrefix(kind, "r")
	}
	return "blkio.throttle." + op + "_" + rest + "_device"
}

// callOp is the I/O a system call does: "read" for the reads, "" for the
// asynchronous calls (either), "write" for the writes and syncs.
func callOp(call string) string {
	switch call {
	case "read", "pread64", "readv", "preadv", "preadv2":
		return "read"
	case "io_submit", "io_getevents", "io_pgetevents", "io_uring_enter", "io_destroy":
		return ""
	}
	return "write"
}

// IOCost is the iocost controller's configuration on a device where it is
// enabled (the cgroup v2 root's io.cost.qos and io.cost.model).
type IOCost struct {
	QoS, Model string
}

// throttledStages are where time held by blk-throttle shows in a stack:
// the caller waits for its parked bio like for the device.
var throttledStages = []string{stage.Device, stage.WritebackWait, stage.CgroupThrottle}

// limits builds Device.Limits and Device.IOCost from the iolimits probe's
// events, after the processes.
func (b *builder) limits() {
	for _, c := range b.tl.IOCosts {
		if c.Dev.Name != "" {
			b.names[c.Dev.ID()] = c.Dev.Name
		}
		d := b.deviceOf(b.name(c.Dev), c.Dev)
		d.IOCost = &IOCost{QoS: c.QoS, Model: c.Model}
	}
	if len(b.tl.IOLimits) == 0 {
		return
	}
	type counterKey struct {
		cgroup string
		v1     bool
		dev    string
	}
	samples := map[counterKey][]event.CgroupIO{}
	for _, c := range b.tl.CgroupIO {
		k := counterKey{c.Cgroup, c.V1, c.Dev.ID()}
		samples[k] = append(samples[k], c)
	}
	for _, ss := range samples {
		slices.SortStableFunc(ss, func(a, c event.CgroupIO) int { return cmp.Compare(a.Time, c.Time) })
	}
	type limitKey struct {
		cgroup string
		v1     bool
		dev    string
		kind   string
	}
	type cgroupKey struct {
		cgroup string
		v1     bool
	}
	// The last exec of each process: a name read from /proc before it is
	// that of the program it exec'd from (the shell that moved it into the
	// cgroup), not the one it did its I/O as.
	lastExec := map[uint32]event.Exec{}
	for _, e := range b.tl.Execs {
		if e.Ret == 0 && e.Time >= lastExec[e.Task.Tgid].Time {
			lastExec[e.Task.Tgid] = e
		}
	}
	members := map[cgroupKey]map[uint32]string{}
	for _, m := range b.tl.CgroupMembers {
		k := cgroupKey{m.Cgroup, m.V1}
		if members[k] == nil {
			members[k] = map[uint32]string{}
		}
		comm := m.Comm
		if e, ok := lastExec[m.Pid]; ok && m.Time < e.Time {
			comm = e.Task.Comm // a member still, under the name it exec'd to
		}
		if _, ok := members[k][m.Pid]; !ok || comm != "" {
			members[k][m.Pid] = comm
		}
	}
	// Where the throttle probe timed the held bios, the delay is theirs.
	measured := b.directProbe(event.ProbeThrottle, len(b.tl.ThrottleWaits))
	type waitKey struct {
		tgid uint32
		dev  string
	}
	waits := map[waitKey]time.Duration{}
	source := ""
	for _, w := range b.tl.ThrottleWaits {
		if w.Dev.Name != "" {
			b.names[w.Dev.ID()] = w.Dev.Name
		}
	}
	for _, w := range b.tl.ThrottleWaits {
		k := waitKey{w.Task.Tgid, b.name(w.Dev)}
		waits[k] = SaturatingAdd(waits[k], max(w.Duration, 0))
		if source == "" {
			source = SourceDirect(w.Mechanism, w.Func)
		}
	}
	if measured && source == "" {
		for _, p := range b.tl.Probes {
			if p.Name == event.ProbeThrottle {
				source = SourceDirect(p.Mechanism, "blk-throttle")
			}
		}
	}
	faulty := map[string]bool{}
	for _, f := range b.tl.DeviceFaults {
		faulty[b.name(f.Dev)] = true
	}
	seen := map[limitKey]bool{}
	for _, e := range b.tl.IOLimits {
		if e.Dev.Name != "" {
			b.names[e.Dev.ID()] = e.Dev.Name
		}
		k := limitKey{e.Cgroup, e.V1, e.Dev.ID(), e.Limit}
		if seen[k] {
			continue // read again: the first reading is the one in force at the start
		}
		seen[k] = true
		name := b.name(e.Dev)
		d := b.deviceOf(name, e.Dev)
		l := &Limit{Cgroup: e.Cgroup, V1: e.V1, Device: name, Kind: e.Limit, Value: e.Value, Source: SourceLimitInferred}
		if measured {
			l.Source = source
		}
		if ss := samples[counterKey{e.Cgroup, e.V1, e.Dev.ID()}]; len(ss) >= 2 {
			l.Counted = true
			l.Rate = activeRate(ss, e.Limit)
		}
		for _, p := range b.run.Processes {
			path := p.Cgroup
			if e.V1 {
				path = p.Blkio
			}
			comm, member := members[cgroupKey{e.Cgroup, e.V1}][p.Pid]
			if !member && !under(path, e.Cgroup) {
				continue
			}
			q := p.On(name)
			if len(q.Calls) == 0 {
				continue
			}
			if comm != "" && comm != q.Comm {
				// Named as it was seen in the cgroup: its name at its
				// first storage call may be that of the shell that
				// moved it there and exec'd it.
				cp := *q
				cp.Comm = comm
				q = &cp
			}
			l.Processes = append(l.Processes, q)
			var blocked time.Duration
			for _, st := range throttledStages {
				blocked = SaturatingAdd(blocked, q.Stage(st))
			}
			// Of the calls the limit holds (reads for a read limit, the
			// others for a write limit; asynchronous ones for both): their
			// share of the blocked time, and their count.
			var calls uint64
			var opBlocked, allBlocked time.Duration
			for _, c := range q.Calls {
				allBlocked = SaturatingAdd(allBlocked, c.Blocked)
				if callOp(c.Syscall) == "" || callOp(c.Syscall) == l.Op() {
					calls += c.Latency.Count
					opBlocked = SaturatingAdd(opBlocked, c.Blocked)
				}
			}
			if allBlocked > 0 {
				blocked = time.Duration(float64(blocked) * float64(opBlocked) / float64(allBlocked))
			}
			explained := time.Duration(float64(calls) * d.Service.MeanUs * float64(time.Microsecond))
			delay := max(blocked-explained, 0)
			if measured {
				delay = waits[waitKey{p.Pid, name}]
			}
			l.Delays = append(l.Delays, delay)
			l.Delay = SaturatingAdd(l.Delay, delay)
			for _, u := range q.Unfinished {
				if !faulty[name] && slices.Contains(throttledStages, u.Stage) && (callOp(u.Syscall) == "" || callOp(u.Syscall) == l.Op()) {
					l.Stuck = max(l.Stuck, u.InCall)
				}
			}
		}
		d.Limits = append(d.Limits, l)
	}
	for _, d := range b.byName {
		slices.SortStableFunc(d.Limits, func(a, c *Limit) int {
			if n := cmp.Compare(c.Delay, a.Delay); n != 0 {
				return n
			}
			if n := cmp.Compare(a.Cgroup, c.Cgroup); n != 0 {
				return n
			}
			return cmp.Compare(a.Kind, c.Kind)
		})
	}
}

// activeRate is the rate of a cgroup's I/O of a limit's kind while it did
// I/O: from the last reading before its counter grew to the first reading
// after it stopped growing (the iolimits probe reads the counters every
// 500 ms and delivers those that changed and the reading before each
// change), so that a process that wrote for part of the run is measured
// against the limit while it wrote, not from the run's start: a cgroup
// idle, or with no line in io.stat yet (read as zero), until the middle
// of the run starts its window at its last idle reading. (A trace of a
// probe that did not deliver the reading before a change starts it at the
// last reading delivered: the run's start for a cgroup idle until then.)
func activeRate(ss []event.CgroupIO, kind string) float64 {
	q := func(c event.CgroupIO) uint64 {
		switch kind {
		case "riops":
			return c.Reads
		case "wiops":
			return c.Writes
		case "rbps":
			return c.ReadBytes
		default:
			return c.WriteBytes
		}
	}
	first, last := q(ss[0]), q(ss[len(ss)-1])
	if last <= first {
		return 0
	}
	from, to := ss[0].Time, ss[len(ss)-1].Time
	for _, c := range ss {
		if q(c) == first {
			from = c.Time
		}
	}
	for i := len(ss) - 1; i >= 0 && q(ss[i]) == last; i-- {
		to = ss[i].Time
	}
	if to <= from {
		return 0
	}
	return float64(last-first) / to.Sub(from).Seconds()
}

// under reports whether cgroup path p is cgroup c or below it.
func under(p, c string) bool {
	if p == "" || c == "" {
		return false
	}
	if c == "/" || p == c {
		return true
	}
	return strings.HasPrefix(p, strings.TrimSuffix(c, "/")+"/")
}
