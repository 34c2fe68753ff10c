package facts

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/whyslow/whyslow/internal/event"
)

// Wbt is what writeback throttling (rq-qos wbt) did on a device (probe
// writeback).
type Wbt struct {
	// LatUs is the latency target (queue/wbt_lat_usec) at the start of the
	// run; -1 when unknown, 0 when wbt is off.
	LatUs float64
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
	// Missed counts the windows in which a latency missed the target
	// (wbt_lat), MissedUs the longest such latency (µs).
	Missed   int
	MissedUs float64
	// Windows counts the windows whose latencies wbt traced (wbt_stat:
	// those that missed the target, and every one while it was scaled);
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

// Journal is the jbd2 journal of the ext4 filesystem on a device (probe
// writeback): its commits and whose data they wrote.
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
}

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
	missed := func(w *Wbt, lat time.Duration) {
		w.Missed++
		w.MissedUs = max(w.MissedUs, float64(lat)/float64(time.Microsecond))
	}
	for _, l := range tl.WbtLats {
		d := dev(l.Dev)
		if l.From == "wbt_lat" { // the tracepoint, in traces of earlier versions
			missed(&d.Wbt, l.Lat)
			continue
		}
		d.Wbt.LatUs = float64(l.Lat) / float64(time.Microsecond)
		wbtSeen[d] = true
	}
	for _, win := range tl.WbtWindows {
		w := &dev(win.Dev).Wbt
		if win.Exceeded > 0 {
			missed(w, win.Exceeded)
			continue
		}
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
	writers := map[*Device]map[uint32]*DirtyWriter{}
	longest := map[*Device]time.Duration{}
	for _, p := range tl.DirtyPauses {
		d := dev(p.Dev)
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
	for _, d := range b.byName {
		if !wbtSeen[d] {
			d.Wbt.LatUs = -1
		}
		slices.SortFunc(d.Journal.Ordered, func(a, c *OrderedWriter) int {
			return cmp.Or(cmp.Compare(c.Commits, a.Commits), cmp.Compare(a.Pid, c.Pid))
		})
	}
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
