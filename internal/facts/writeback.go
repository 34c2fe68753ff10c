package facts

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/stage"
)

// Wbt is what writeback throttling (rq-qos wbt) did on a device (probe
// writeback).
type Wbt struct {
	// LatUs is the latency target (queue/wbt_lat_usec) at the start of the
	// run; -1 when unknown, 0 when wbt is off.
	LatUs float64
	// Exceeded counts the synchronous I/Os whose latency exceeded wbt's
	// monitoring window, which made it scale the writes down (tracepoint
	// wbt_lat).
	Exceeded int
	// Steps are the times wbt rescaled the device's depth; ScaledDown those
	// that left it below the default (step above 0).
	Steps, ScaledDown int
	// MaxStep is the furthest it scaled down; MinDepth the least depth it
	// allowed any writes then (its "max" limit), 0 when it never scaled.
	MaxStep  int
	MinDepth int
	// Step is the scale step wbt left the device at (the last step's; 0
	// when it never stepped), Depth the most writes it let in flight then
	// (0 unknown) and WindowMs its monitoring window then.
	Step, Depth int
	WindowMs    float64
	// Windows counts the windows whose latencies wbt traced (wbt_stat:
	// those whose reads missed the target, and every one while it was
	// scaled);
	// ReadMeanMs is the highest mean read latency of one, ReadMaxMs the
	// longest read, ms.
	Windows               int
	ReadMeanMs, ReadMaxMs float64
}

// Dirty is the dirty-page throttling of the writers whose pages go to a
// device (probe writeback: balance_dirty_pages).
type Dirty struct {
	// Pauses, and the time they lasted in all and at most.
	Pauses         int
	TotalMs, MaxMs float64
	// Writers are the paused processes, the most time first.
	Writers []*DirtyWriter
	// LimitMiB is the dirty limit in force at the longest pause (the
	// system's: vm.dirty_bytes or vm.dirty_ratio of the memory), DirtyMiB
	// the dirty and written-back memory then; DeviceMiB and
	// DeviceDirtyMiB this device's share of the limit and its dirty pages.
	LimitMiB, DirtyMiB, DeviceMiB, DeviceDirtyMiB float64
	// RateKiBs is the rate the kernel let this device's writers dirty
	// pages at then (KiB/s): what it measured the device writes back.
	RateKiBs float64
	// Memcgs are the memory cgroups whose own dirty limit paused writers
	// of this device, the most time first (cgroup v2, where cgroup
	// writeback gives each memory cgroup a dirty limit of its own: a share
	// of the memory it may use). A pause is the memory cgroup's when the
	// writer's cgroup has memory.max or memory.high and the dirty pages it
	// was measured against are below half the system's threshold, under
	// which the system's limit throttles no one.
	Memcgs []*DirtyMemcg
}

// DirtyMemcg is a memory cgroup whose own dirty limit paused its writers.
type DirtyMemcg struct {
	Path string // its cgroup v2 path
	// Pauses, and their time in all, of its writers (Writers, names).
	Pauses  int
	TotalMs float64
	Writers []string
	// MaxMiB and HighMiB are its memory.max and memory.high (0: not set);
	// MemoryMiB the smaller set one, what its dirty limit is a share of,
	// and Limit says it as set: "memory.max=67108864 (64 MiB)".
	MaxMiB, HighMiB, MemoryMiB float64
	Limit                      string
	// DirtyLimitMiB is its dirty limit: as the kernel reported it where
	// the tracepoint gives the cgroup's own (newer kernels), else
	// vm.dirty_ratio of MemoryMiB (or vm.dirty_bytes at the share MemoryMiB
	// is of the system's dirtyable memory), an upper bound: the kernel
	// counts only the cgroup's file pages and free headroom. DirtyMiB its
	// dirty pages at its longest pause; SystemLimitMiB the system's dirty
	// threshold at the start, for comparison.
	DirtyLimitMiB, DirtyMiB, SystemLimitMiB float64
}

// Memcg is the memory cgroup whose dirty limit paused the device's
// writers the longest; one with an empty Path when none did.
func (d Dirty) Memcg() *DirtyMemcg {
	if len(d.Memcgs) == 0 {
		return &DirtyMemcg{}
	}
	return d.Memcgs[0]
}

// DirtyWriter is one process paused in balance_dirty_pages.
type DirtyWriter struct {
	Pid            uint32
	Comm           string
	Pauses         int
	TotalMs, MaxMs float64
}

// DirtyLimits are the vm.dirty_* sysctls at the start of the run (probe
// writeback): bytes take precedence over the ratio when not 0.
type DirtyLimits struct {
	Known                            bool
	Bytes, Ratio                     uint64
	BackgroundBytes, BackgroundRatio uint64
	// Text says them as a person would set them: "vm.dirty_bytes=8388608
	// (8 MiB), vm.dirty_background_bytes=2097152 (2 MiB)".
	Text string
}

// Journal is the journal of the filesystem on a device (probe writeback):
// for ext4's jbd2, its commits and whose data they wrote; for xfs's log,
// its forces, who forced it, and its writes.
type Journal struct {
	// Commits, and their length from start to end: mean, p99, max, total.
	Commits                       int
	MeanMs, P99Ms, MaxMs, TotalMs float64
	// LockingMs, FlushingMs and LoggingMs are the commits' phases, summed:
	// waiting for the transaction's handles; submitting its ordered data;
	// writing the journal and waiting for the ordered data.
	LockingMs, FlushingMs, LoggingMs float64
	// Sync are the commits someone waited for (fsync).
	Sync int
	// Blocks are the journal blocks the commits wrote (jbd2_run_stats).
	Blocks uint64
	// Ordered are the processes whose data (ordered mode) the commits had
	// to write before they could commit, the most commits first.
	Ordered []*OrderedWriter

	// LogForces counts the forces of an xfs log (xfs:xfs_log_force): each
	// makes the log's changes durable, and whoever forced it waits for
	// the log's writes (fsync, fdatasync, sync, the log worker, the
	// AIL); FsyncForces are those made by fsync and fdatasync.
	LogForces, FsyncForces int
	// Forcers are the processes that forced the log, the most forces
	// first.
	Forcers []*LogForcer
	// LogWrites counts the writes of the xfs log's buffers, submitted to
	// completed (xlog_iclog_sync .. xlog_iclog_sync_done, 6.1+: 0 on
	// older kernels), and their length: mean, p99, max, ms. LogFlushes
	// are those that flushed the device's cache first.
	LogWrites, LogFlushes                        int
	LogWriteMeanMs, LogWriteP99Ms, LogWriteMaxMs float64
}

// LogForcer is a process that forced an xfs log.
type LogForcer struct {
	Pid    uint32
	Comm   string
	Forces int
	// Fsync are its forces made by fsync or fdatasync.
	Fsync int
}

// As names the process with the part it played in a finding.
func (f *LogForcer) As(role string) Task {
	return Task{Pid: f.Pid, Tgid: f.Pid, Comm: f.Comm, Role: role}
}

// ForceWaitMs is the time the processes given (a []*Process, or a list
// of them, as a rule's filter gives) waited for the journal (stage
// journal) per force of the xfs log they made, ms: how long a force kept
// them waiting, on average; 0 when they made none.
func (j Journal) ForceWaitMs(procs any) float64 {
	var waited float64
	pids := map[uint32]bool{}
	var add func(v any)
	add = func(v any) {
		switch v := v.(type) {
		case *Process:
			if v != nil && !pids[v.Pid] {
				pids[v.Pid] = true
				waited += v.StageMs(stage.Journal)
			}
		case []*Process:
			for _, p := range v {
				add(p)
			}
		case Processes:
			for _, p := range v {
				add(p)
			}
		case []any:
			for _, p := range v {
				add(p)
			}
		}
	}
	add(procs)
	forces := 0
	for _, f := range j.Forcers {
		if pids[f.Pid] {
			forces += f.Forces
		}
	}
	if forces == 0 {
		return 0
	}
	return waited / float64(forces)
}

// nestedForceCallers are the log-force functions themselves: an
// xfs_log_force event they called is the CIL force inside a force already
// counted.
var nestedForceCallers = []string{"xfs_log_force_seq", "xfs_log_force_lsn", "xfs_log_force", "xlog_cil_force_seq", "xlog_cil_force_lsn"}

// fsyncCallers are the functions whose forces of an xfs log are fsync's
// and fdatasync's (xfs_fsync_flush_log is inlined into xfs_file_fsync on
// some kernels).
var fsyncCallers = []string{"xfs_file_fsync", "xfs_fsync_flush_log", "xfs_dir_fsync"}

// OrderedWriter is a process whose dirty data journal commits wrote first.
type OrderedWriter struct {
	Pid     uint32
	Comm    string
	Commits int // the commits that wrote its data
	Inodes  int // its files among them
}

// Mount is a filesystem on a device.
type Mount struct {
	FsDev  string // its own device: the disk, or a partition of it
	FSType string
	Point  string
}

// OrderedBy returns the writers of ordered data but the processes in
// except (the waiters themselves: a []*Process, or a list of them or of
// pids, as a rule's filter gives).
func (j Journal) OrderedBy(except any) []*OrderedWriter {
	pids := map[uint32]bool{}
	var add func(v any)
	add = func(v any) {
		switch v := v.(type) {
		case *Process:
			if v != nil {
				pids[v.Pid] = true
			}
		case uint32:
			pids[v] = true
		case []*Process:
			for _, p := range v {
				add(p)
			}
		case Processes:
			for _, p := range v {
				add(p)
			}
		case []any:
			for _, p := range v {
				add(p)
			}
		}
	}
	add(except)
	var out []*OrderedWriter
	for _, o := range j.Ordered {
		if !pids[o.Pid] {
			out = append(out, o)
		}
	}
	return out
}

// Writer returns the paused writer of pid; a process not paused gives one
// with no pauses.
func (d Dirty) Writer(pid uint32) *DirtyWriter {
	for _, w := range d.Writers {
		if w.Pid == pid {
			return w
		}
	}
	return &DirtyWriter{Pid: pid}
}

// FSType is the type of the first filesystem mounted on the device, ""
// when none was seen.
func (d *Device) FSType() string {
	if d == nil || len(d.Mounts) == 0 {
		return ""
	}
	return d.Mounts[0].FSType
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func mib(pages, pageSize uint64) float64 { return float64(pages*pageSize) / (1 << 20) }

// wbtWindow is a wbt_step's monitoring window. Traces of earlier versions
// hold its µs as ns: wbt's window is 100 ms, shorter when scaled down
// (divided by the square root of the step), never under a millisecond, so
// one under a millisecond is read as µs.
func wbtWindow(w time.Duration) time.Duration {
	if w > 0 && w < time.Millisecond {
		return w * 1000
	}
	return w
}

// writeback builds Device.Wbt, Dirty, Journal and Mounts and
// Run.DirtyLimits from the writeback probe's events.
func (b *builder) writeback() {
	tl := b.tl
	dev := func(e event.Device) *Device { return b.deviceOf(b.name(e), e) }
	wbtSeen := map[*Device]bool{}
	for _, m := range tl.Mounts {
		d := dev(m.Dev)
		d.Mounts = append(d.Mounts, Mount{FsDev: m.FsDev, FSType: m.FSType, Point: m.Point})
	}
	for _, l := range tl.WbtLats {
		d := dev(l.Dev)
		if l.From == "wbt_lat" {
			// the tracepoint reports a sync I/O's latency past wbt's
			// window, not its target
			d.Wbt.Exceeded++
			continue
		}
		d.Wbt.LatUs = float64(l.Lat) / float64(time.Microsecond)
		wbtSeen[d] = true
	}
	for _, win := range tl.WbtWindows {
		w := &dev(win.Dev).Wbt
		w.Windows++
		w.ReadMeanMs = max(w.ReadMeanMs, ms(win.ReadMean))
		w.ReadMaxMs = max(w.ReadMaxMs, ms(win.ReadMax))
	}
	for _, s := range tl.WbtSteps {
		d := dev(s.Dev)
		w := &d.Wbt
		w.Steps++
		w.Step, w.Depth, w.WindowMs = int(s.Step), int(s.Max), ms(wbtWindow(s.Window))
		if s.Step > 0 {
			w.ScaledDown++
			if int(s.Step) > w.MaxStep {
				w.MaxStep = int(s.Step)
			}
			if w.MinDepth == 0 || int(s.Max) < w.MinDepth {
				w.MinDepth = int(s.Max)
			}
		}
	}
	page := uint64(4096)
	if n := len(tl.DirtyLimits); n > 0 {
		l := tl.DirtyLimits[n-1]
		if l.PageSize > 0 {
			page = l.PageSize
		}
		b.run.DirtyLimits = DirtyLimits{Known: true, Bytes: l.Bytes, Ratio: l.Ratio,
			BackgroundBytes: l.BackgroundBytes, BackgroundRatio: l.BackgroundRatio}
		say := func(name string, bytes, ratio uint64) string {
			if bytes > 0 {
				return fmt.Sprintf("vm.%s_bytes=%d (%s)", name, bytes, sizeText(bytes))
			}
			return fmt.Sprintf("vm.%s_ratio=%d", name, ratio)
		}
		b.run.DirtyLimits.Text = say("dirty", l.Bytes, l.Ratio) + ", " + say("dirty_background", l.BackgroundBytes, l.BackgroundRatio)
	}
	var thresh, dirtyable uint64 // the system's dirty threshold, and what it is a share of (pages)
	if n := len(tl.DirtyLimits); n > 0 {
		thresh, dirtyable = tl.DirtyLimits[n-1].Thresh, tl.DirtyLimits[n-1].Dirtyable
	}
	type mkey struct {
		d    *Device
		path string
	}
	memcgs := map[mkey]*DirtyMemcg{}
	memcgLongest := map[mkey]time.Duration{}
	writers := map[*Device]map[uint32]*DirtyWriter{}
	longest := map[*Device]time.Duration{}
	for _, p := range tl.DirtyPauses {
		d := dev(p.Dev)
		if mem := memoryOf(p); mem > 0 && thresh > 0 && p.Dirty*2 < thresh {
			k := mkey{d, p.Cgroup}
			m := memcgs[k]
			if m == nil {
				m = &DirtyMemcg{Path: p.Cgroup, MaxMiB: float64(p.MemoryMax) / (1 << 20), HighMiB: float64(p.MemoryHigh) / (1 << 20),
					MemoryMiB: float64(mem) / (1 << 20), SystemLimitMiB: mib(thresh, page)}
				m.Limit = fmt.Sprintf("memory.max=%d (%s)", p.MemoryMax, sizeText(p.MemoryMax))
				if p.MemoryHigh > 0 && (p.MemoryMax == 0 || p.MemoryHigh < p.MemoryMax) {
					m.Limit = fmt.Sprintf("memory.high=%d (%s)", p.MemoryHigh, sizeText(p.MemoryHigh))
				}
				memcgs[k] = m
			}
			m.Pauses++
			m.TotalMs += ms(p.Pause)
			if !slices.Contains(m.Writers, p.Task.Comm) {
				m.Writers = append(m.Writers, p.Task.Comm)
			}
			if p.Pause >= memcgLongest[k] {
				memcgLongest[k] = p.Pause
				m.DirtyMiB = mib(p.Dirty, page)
				m.DirtyLimitMiB = memcgDirtyLimit(b.run.DirtyLimits, mem, p.Limit*page, thresh*page, dirtyable*page)
			}
		}
		x := &d.Dirty
		x.Pauses++
		x.TotalMs += ms(p.Pause)
		x.MaxMs = max(x.MaxMs, ms(p.Pause))
		if p.Pause >= longest[d] {
			longest[d] = p.Pause
			x.LimitMiB, x.DirtyMiB = mib(p.Limit, page), mib(p.Dirty, page)
			x.DeviceMiB, x.DeviceDirtyMiB = mib(p.WbSetpoint, page), mib(p.WbDirty, page)
			x.RateKiBs = float64(p.DirtyRatelimit)
		}
		if writers[d] == nil {
			writers[d] = map[uint32]*DirtyWriter{}
		}
		pid := p.Task.Tgid
		w := writers[d][pid]
		if w == nil {
			w = &DirtyWriter{Pid: pid, Comm: p.Task.Comm}
			writers[d][pid] = w
		}
		w.Pauses++
		w.TotalMs += ms(p.Pause)
		w.MaxMs = max(w.MaxMs, ms(p.Pause))
	}
	for k, m := range memcgs {
		k.d.Dirty.Memcgs = append(k.d.Dirty.Memcgs, m)
	}
	for d := range longest {
		slices.SortFunc(d.Dirty.Memcgs, func(a, c *DirtyMemcg) int {
			return cmp.Or(cmp.Compare(c.TotalMs, a.TotalMs), cmp.Compare(a.Path, c.Path))
		})
	}
	for d, ws := range writers {
		for _, w := range ws {
			d.Dirty.Writers = append(d.Dirty.Writers, w)
		}
		slices.SortFunc(d.Dirty.Writers, func(a, c *DirtyWriter) int {
			return cmp.Or(cmp.Compare(c.TotalMs, a.TotalMs), cmp.Compare(a.Pid, c.Pid))
		})
	}
	lengths := map[*Device][]float64{}
	for _, c := range tl.JournalCommits {
		d := dev(c.Dev)
		j := &d.Journal
		j.Commits++
		l := ms(c.Duration)
		lengths[d] = append(lengths[d], l)
		j.TotalMs += l
		j.MaxMs = max(j.MaxMs, l)
		j.LockingMs += ms(c.Locking)
		j.FlushingMs += ms(c.Flushing)
		j.LoggingMs += ms(c.Logging)
		if c.Sync {
			j.Sync++
		}
		j.Blocks += uint64(c.Blocks)
	}
	for d, ls := range lengths {
		slices.Sort(ls)
		d.Journal.MeanMs = d.Journal.TotalMs / float64(len(ls))
		d.Journal.P99Ms = ls[min(len(ls)-1, len(ls)*99/100)]
	}
	type okey struct {
		d   *Device
		pid uint32
	}
	commits := map[okey]map[uint32]bool{}
	inodes := map[okey]map[uint64]bool{}
	ordered := map[okey]*OrderedWriter{}
	for _, o := range tl.OrderedData {
		if o.Dirtier.Tgid == 0 {
			continue
		}
		k := okey{dev(o.Dev), o.Dirtier.Tgid}
		w := ordered[k]
		if w == nil {
			w = &OrderedWriter{Pid: o.Dirtier.Tgid, Comm: o.Dirtier.Comm}
			ordered[k] = w
			commits[k], inodes[k] = map[uint32]bool{}, map[uint64]bool{}
		}
		commits[k][o.Tid], inodes[k][o.Ino] = true, true
	}
	for k, w := range ordered {
		w.Commits, w.Inodes = len(commits[k]), len(inodes[k])
		k.d.Journal.Ordered = append(k.d.Journal.Ordered, w)
	}
	forcers := map[*Device]map[uint32]*LogForcer{}
	type forceKey struct {
		pid uint32
		dev string
		lsn int64
	}
	lastForce := map[forceKey]event.Mono{}
	for _, f := range tl.LogForces {
		// A force traces itself, then the CIL force it makes traces again
		// (caller xfs_log_force_seq): one force.
		k := forceKey{f.Task.Pid, f.Dev.ID(), f.Lsn}
		prev, seen := lastForce[k]
		lastForce[k] = f.Time
		if slices.Contains(nestedForceCallers, f.Caller) || f.Caller == "" && seen && f.Time.Sub(prev) < time.Millisecond {
			continue
		}
		d := dev(f.Dev)
		j := &d.Journal
		j.LogForces++
		fsync := slices.Contains(fsyncCallers, f.Caller)
		if fsync {
			j.FsyncForces++
		}
		if forcers[d] == nil {
			forcers[d] = map[uint32]*LogForcer{}
		}
		w := forcers[d][f.Task.Tgid]
		if w == nil {
			w = &LogForcer{Pid: f.Task.Tgid, Comm: f.Task.Comm}
			forcers[d][f.Task.Tgid] = w
		}
		w.Forces++
		if fsync {
			w.Fsync++
		}
	}
	for d, ws := range forcers {
		for _, w := range ws {
			d.Journal.Forcers = append(d.Journal.Forcers, w)
		}
		slices.SortFunc(d.Journal.Forcers, func(a, c *LogForcer) int {
			return cmp.Or(cmp.Compare(c.Forces, a.Forces), cmp.Compare(a.Pid, c.Pid))
		})
	}
	logWrites := map[*Device][]float64{}
	for _, w := range tl.LogWrites {
		d := dev(w.Dev)
		j := &d.Journal
		j.LogWrites++
		if w.Flush {
			j.LogFlushes++
		}
		l := ms(w.Duration)
		logWrites[d] = append(logWrites[d], l)
		j.LogWriteMaxMs = max(j.LogWriteMaxMs, l)
		j.LogWriteMeanMs += l
	}
	for d, ls := range logWrites {
		slices.Sort(ls)
		d.Journal.LogWriteMeanMs /= float64(len(ls))
		d.Journal.LogWriteP99Ms = ls[min(len(ls)-1, len(ls)*99/100)]
	}
	for _, d := range b.byName {
		if !wbtSeen[d] {
			d.Wbt.LatUs = -1
		}
		slices.SortFunc(d.Journal.Ordered, func(a, c *OrderedWriter) int {
			return cmp.Or(cmp.Compare(c.Commits, a.Commits), cmp.Compare(a.Pid, c.Pid))
		})
	}
}

// memoryOf is the memory the paused writer's cgroup may use, in bytes:
// the smaller of its memory.max and memory.high that is set; 0 for none
// (or the root).
func memoryOf(p event.DirtyPause) uint64 {
	if p.Cgroup == "" {
		return 0
	}
	switch {
	case p.MemoryMax == 0:
		return p.MemoryHigh
	case p.MemoryHigh == 0:
		return p.MemoryMax
	}
	return min(p.MemoryMax, p.MemoryHigh)
}

// memcgDirtyLimit is a memory cgroup's dirty limit in MiB, for a cgroup
// that may use mem bytes: the pause's limit where the kernel reported the
// cgroup's own (it fits in the cgroup's memory, where the system's would
// not), else the sysctl's share of mem: vm.dirty_ratio of it, or
// vm.dirty_bytes scaled by mem's share of the system's dirtyable memory.
func memcgDirtyLimit(l DirtyLimits, mem, reported, system, dirtyable uint64) float64 {
	const miB = 1 << 20
	switch {
	case reported > 0 && reported <= mem && reported < system/2:
		return float64(reported) / miB
	case l.Bytes > 0 && dirtyable > 0:
		return float64(l.Bytes) * float64(min(mem, dirtyable)) / float64(dirtyable) / miB
	case l.Ratio > 0:
		return float64(mem) * float64(l.Ratio) / 100 / miB
	}
	return 0
}

// sizeText says a byte count in the largest binary unit that divides it
// ("8 MiB"), or in bytes.
func sizeText(n uint64) string {
	for _, u := range []struct {
		s string
		v uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.v && n%u.v == 0 {
			return fmt.Sprintf("%d %s", n/u.v, u.s)
		}
	}
	return fmt.Sprintf("%d bytes", n)
}

// As names the process with the part it played in a finding.
func (p *Process) As(role string) Task {
	if p == nil {
		return Task{Role: role}
	}
	return Task{Pid: p.Pid, Tgid: p.Pid, Comm: p.Comm, Role: role}
}

// As names the writer with the part it played in a finding.
func (w *DirtyWriter) As(role string) Task {
	return Task{Pid: w.Pid, Tgid: w.Pid, Comm: w.Comm, Role: role}
}

// As names the writer with the part it played in a finding.
func (w *OrderedWriter) As(role string) Task {
	return Task{Pid: w.Pid, Tgid: w.Pid, Comm: w.Comm, Role: role}
}

// StageMs is the time the process spent in one stage, in milliseconds.
func (p *Process) StageMs(name string) float64 { return ms(p.Stage(name)) }
