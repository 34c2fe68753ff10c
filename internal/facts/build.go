package facts

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/stage"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Options tune how facts are derived. The zero value means the defaults.
type Options struct {
	// Window is the coincidence window rules use (Run.Window). Default 100ms.
	Window time.Duration
	// SubmitSlack widens a slow submission when looking for the off-CPU span
	// (queue-enter, tag-wait) of the same thread inside it. Default 1ms.
	SubmitSlack time.Duration
	// SysfsLookback is how long before a freeze-wait span the freezer's own
	// sysfs write may be and still name the device and attribute. Default 1s.
	SysfsLookback time.Duration
	// WakeSlack is how long after a freeze ends the queue-enter waits woken
	// by the freezer may end and still name the freeze's device. Default 5ms.
	WakeSlack time.Duration
	// UeventLate is how late a uevent's time may be (Point.Late): uevents
	// are timed when whyslow reads them from netlink, and udev, reading
	// the same uevent, can act on it (freeze a queue) before that on a
	// loaded host. Default 250ms (seen: 100 ms in a 5.10 guest under TCG).
	UeventLate time.Duration
	// Stages names the stage of each blocked stack of a storage call;
	// nil means the built-in table (stage.Default).
	Stages *stage.Table
}

// Defaults for Options.
const (
	DefaultWindow        = 100 * time.Millisecond
	DefaultSubmitSlack   = time.Millisecond
	DefaultSysfsLookback = time.Second
	DefaultWakeSlack     = 5 * time.Millisecond
	DefaultUeventLate    = 250 * time.Millisecond
)

func (o *Options) defaults() {
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.SubmitSlack <= 0 {
		o.SubmitSlack = DefaultSubmitSlack
	}
	if o.SysfsLookback <= 0 {
		o.SysfsLookback = DefaultSysfsLookback
	}
	if o.WakeSlack <= 0 {
		o.WakeSlack = DefaultWakeSlack
	}
	if o.UeventLate <= 0 {
		o.UeventLate = DefaultUeventLate
	}
}

// Kernel functions whose presence on a blocked stack names the span's kind.
var (
	queueEnterFuncs = []string{"__bio_queue_enter", "bio_queue_enter", "blk_queue_enter"}
	freezeFuncs     = []string{"blk_mq_freeze_queue_wait", "blk_mq_freeze_queue_wait_timeout",
		"blk_freeze_queue", "blk_mq_freeze_queue", "blk_mq_freeze_queue_nomemsave"}
	tagFuncs = []string{"blk_mq_get_tag"}
	// ioWaitPrefixes match by prefix: io_schedule_timeout, folio_wait_bit_common, ...
	ioWaitPrefixes = []string{"io_schedule", "folio_wait", "wait_on_page_bit", "__folio_lock",
		"__lock_page", "bit_wait_io", "__wait_on_buffer", "wait_on_page_writeback", "submit_bio_wait"}
)

// Classify returns the Kind of an off-CPU span from its kernel frames,
// innermost first. The block-layer kinds (queue-enter, freeze-wait,
// tag-wait) are looked for first, innermost frame first, because their
// functions sleep through io_schedule themselves (blk_mq_get_tag does); only
// then does any io_schedule/folio_wait-style frame make it io-wait.
func Classify(frames []event.Frame) string {
	for _, f := range frames {
		name := baseSymbol(f.Symbol)
		switch {
		case slices.Contains(queueEnterFuncs, name):
			return KindQueueEnter
		case slices.Contains(freezeFuncs, name):
			return KindFreezeWait
		case slices.Contains(tagFuncs, name):
			return KindTagWait
		}
	}
	for _, f := range frames {
		name := baseSymbol(f.Symbol)
		for _, p := range ioWaitPrefixes {
			if strings.HasPrefix(name, p) {
				return KindIOWait
			}
		}
	}
	return KindOther
}

// baseSymbol strips compiler suffixes: "blk_mq_get_tag.isra.0" -> "blk_mq_get_tag".
func baseSymbol(s string) string {
	if i := strings.IndexByte(s, '.'); i > 0 {
		return s[:i]
	}
	return s
}

// Build derives the facts of a timeline. It never fails: events it cannot
// place (a blocked span no device can be named for) are kept in
// Run.Unattributed. A nil timeline gives an empty Run.
func Build(tl *timeline.Timeline, opts Options) *Run {
	opts.defaults()
	run := &Run{Window: opts.Window, OffCPUByKind: map[string]int{}}
	if tl == nil {
		return run
	}
	b := &builder{tl: tl, opts: opts, run: run, byName: map[string]*Device{}, names: map[string]string{}}
	run.Duration = tl.Duration()
	run.Kernel = tl.Kernel
	run.MinLatency = tl.MinLatency
	run.LostEvents = tl.LostEvents()
	run.probes = tl.Probes
	if t := tl.Trouble; t != nil && t.PSI.Known {
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		run.Pressure = Pressure{Known: true, IOSomeMs: ms(t.PSI.IOSome), IOFullMs: ms(t.PSI.IOFull),
			MemorySomeMs: ms(t.PSI.MemorySome), MemoryFullMs: ms(t.PSI.MemoryFull)}
	}

	b.devices()
	b.ioUsage()
	b.stalls()
	b.offCPU()
	b.sysfsWrites()
	b.faults()
	b.uevents() // after every device is known
	b.commands()
	b.holders()
	b.processes() // after every device is known
	b.limits()    // after the processes
	b.writeback()
	b.iocost() // last: devices it did not see get its unknowns

	for _, d := range b.byName {
		run.Devices = append(run.Devices, d)
		for _, s := range []*Spans{&d.Stalls, &d.QueueWaits, &d.TagWaits, &d.Freezes, &d.SubmitCalls, &d.Timeouts} {
			sortSpans(*s)
		}
	}
	slices.SortFunc(run.Devices, func(a, c *Device) int { return cmp.Compare(a.Name, c.Name) })
	sortSpans(run.Unattributed)
	return run
}

type builder struct {
	tl     *timeline.Timeline
	opts   Options
	run    *Run
	byName map[string]*Device
	names  map[string]string // major:minor -> name, for events that carry no name
	// The indexes of the exits by pid, then time, built on first use.
	exitOrder []int32
	// ueventWritesBy counts the writes of uevent files by pid, built on
	// first use.
	ueventWritesBy map[uint32]int
}

func (b *builder) rel(t event.Mono) time.Duration { return t.Sub(b.tl.Start) }

// name returns the name a device is known by: its kernel name, or the name
// another event gave the same major:minor, or major:minor.
func (b *builder) name(d event.Device) string {
	if d.Name != "" {
		return d.Name
	}
	if n, ok := b.names[d.ID()]; ok {
		return n
	}
	return d.ID()
}

// device returns the device of a name, creating it when needed.
func (b *builder) device(name, id string) *Device {
	if d, ok := b.byName[name]; ok {
		if d.ID == "" {
			d.ID = id
		}
		return d
	}
	d := &Device{Name: name, ID: id}
	b.byName[name] = d
	return d
}

// deviceOf is device for an event's device: its major:minor is formatted
// only when the device does not have one yet.
func (b *builder) deviceOf(name string, dev event.Device) *Device {
	if d, ok := b.byName[name]; ok && d.ID != "" {
		return d
	}
	return b.device(name, dev.ID())
}

func (b *builder) devices() {
	for _, h := range b.tl.Devices {
		if h.Dev.Name != "" {
			b.names[h.Dev.ID()] = h.Dev.Name
		}
	}
	for _, s := range b.tl.SlowSubmits {
		if s.Dev.Name != "" {
			b.names[s.Dev.ID()] = s.Dev.Name
		}
	}
	for _, q := range b.tl.QueueEnters {
		if q.Dev.Name != "" {
			b.names[q.Dev.ID()] = q.Dev.Name
		}
	}
	for _, f := range b.tl.Freezes {
		if f.Dev.Name != "" {
			b.names[f.Dev.ID()] = f.Dev.Name
		}
	}
	for _, c := range b.tl.SubmitCalls {
		if c.Dev.Name != "" {
			b.names[c.Dev.ID()] = c.Dev.Name
		}
	}
	for _, h := range b.tl.Devices {
		d := b.device(b.name(h.Dev), h.Dev.ID())
		d.Submit = latency(&h.Submit)
		d.Service = latency(&h.Service)
		d.ServiceTime = time.Duration(min(h.Service.SumNs, math.MaxInt64))
		d.SubmitCall = latency(&h.SubmitCall)
	}
}

// ioUsage sums each device's I/O per process and per cgroup, and their
// shares of the device's.
func (b *builder) ioUsage() {
	type procKey struct {
		dev string
		pid uint32
	}
	type cgKey struct {
		dev, cgroup string
	}
	procs := map[procKey]*IOUse{}
	cgroups := map[cgKey]*IOUse{}
	procCgroups := map[procKey]map[string]float64{} // in flight per cgroup of a process
	cgProcs := map[cgKey]map[string]float64{}       // in flight per comm of a cgroup
	devProcs := map[string]map[string]float64{}
	for _, u := range b.tl.IOUsage {
		name := b.name(u.Dev)
		d := b.deviceOf(name, u.Dev)
		cg := u.Cgroup
		if cg == "" && u.CgroupID != 0 {
			cg = fmt.Sprintf("#%d", u.CgroupID)
		}
		pk, ck := procKey{name, u.Task.Tgid}, cgKey{name, cg}
		p := procs[pk]
		if p == nil {
			p = &IOUse{Pid: u.Task.Tgid, Comm: u.Task.Comm, Kthread: u.Kthread}
			procs[pk] = p
			procCgroups[pk] = map[string]float64{}
		}
		c := cgroups[ck]
		if c == nil {
			c = &IOUse{Cgroup: cg}
			cgroups[ck] = c
			cgProcs[ck] = map[string]float64{}
		}
		p.Kthread = p.Kthread || u.Kthread
		if devProcs[name] == nil {
			devProcs[name] = map[string]float64{}
		}
		ms := msOf(u.InFlight)
		for _, x := range []*IOUse{p, c, &d.IO} {
			x.add(u, ms)
		}
		procCgroups[pk][cg] += ms
		cgProcs[ck][u.Task.Comm] += ms
		devProcs[name][u.Task.Comm] += ms
	}
	for k, p := range procs {
		p.Cgroup = heaviest(procCgroups[k])[0]
		p.Comms = []string{p.Comm}
		d := b.byName[k.dev]
		d.IOBy = append(d.IOBy, *p)
	}
	for k, c := range cgroups {
		c.Comms = heaviest(cgProcs[k])
		d := b.byName[k.dev]
		d.IOByCgroup = append(d.IOByCgroup, *c)
	}
	for name, d := range b.byName {
		if d.IO.IOs == 0 {
			continue
		}
		d.IO.Comms = heaviest(devProcs[name])
		for _, rows := range []IOUses{d.IOBy, d.IOByCgroup} {
			for i := range rows {
				rows[i].shares(d.IO)
			}
			slices.SortFunc(rows, func(a, c IOUse) int {
				return cmp.Or(cmp.Compare(c.InFlightMs, a.InFlightMs), cmp.Compare(c.IOs, a.IOs),
					cmp.Compare(a.Pid, c.Pid), cmp.Compare(a.Cgroup, c.Cgroup))
			})
		}
		d.IO.shares(d.IO)
	}
}

// add counts one record of a process's I/O into the row.
func (x *IOUse) add(u event.IOUsage, inFlightMs float64) {
	x.IOs += u.IOs
	x.Requests += u.Requests
	x.Bytes += u.Bytes
	x.InFlightMs += inFlightMs
	switch u.Op {
	case "read":
		x.Reads += u.IOs
		x.ReadBytes += u.Bytes
	case "write":
		x.Writes += u.IOs
		x.WriteBytes += u.Bytes
		if u.Sync {
			x.SyncWrites += u.IOs
		}
	case "flush":
		x.Flushes += u.IOs
	}
}

// shares sets the row's shares of the device's I/O, all.
func (x *IOUse) shares(all IOUse) {
	x.IOShare = ratioOf(float64(x.IOs), float64(all.IOs))
	x.RequestShare = ratioOf(float64(x.Requests), float64(all.Requests))
	x.ByteShare = ratioOf(float64(x.Bytes), float64(all.Bytes))
	x.TimeShare = ratioOf(x.InFlightMs, all.InFlightMs)
}

func ratioOf(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}

// heaviest returns the keys of m, the largest value first (ties by key);
// [""] for an empty map.
func heaviest(m map[string]float64) []string {
	if len(m) == 0 {
		return []string{""}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, c string) int { return cmp.Or(cmp.Compare(m[c], m[a]), cmp.Compare(a, c)) })
	return keys
}

func latency(h *hist.Histogram) Latency {
	return latencyOf(h.Count, h.SumNs, h.MaxNs, h.Quantile)
}

// latencyOf summarizes a histogram of count values summing to sumNs, the
// largest maxNs, whose quantiles quantile tells.
func latencyOf(count, sumNs, maxNs uint64, quantile func(float64) time.Duration) Latency {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	l := Latency{
		Count: count,
		P50Us: us(quantile(0.5)),
		P99Us: us(quantile(0.99)),
		MaxUs: float64(maxNs) / float64(time.Microsecond),
	}
	if count > 0 { // in nanoseconds first, as Histogram.Mean, but never through a Duration that could overflow
		l.MeanUs = float64(sumNs/count) / float64(time.Microsecond)
	}
	return l
}

func (b *builder) stalls() {
	// Spans are large: size each device's list once.
	counts := map[string]int{}
	for _, s := range b.tl.SlowSubmits {
		counts[b.name(s.Dev)]++
	}
	for _, s := range b.tl.SlowSubmits {
		name := b.name(s.Dev)
		d := b.deviceOf(name, s.Dev)
		if d.Stalls == nil {
			d.Stalls = make(Spans, 0, counts[name])
		}
		start := b.rel(s.Start)
		d.Stalls = append(d.Stalls, Span{
			Start: start, End: SaturatingAdd(start, max(s.Latency, 0)), Kind: KindSubmit,
			Pid: s.Task.Pid, Tgid: s.Task.Tgid, Comm: s.Task.Comm, Device: name, Source: SourceSubmitTP,
		})
	}
	for _, c := range b.tl.SubmitCalls {
		if c.Dev.Major == 0 && c.Dev.Minor == 0 && c.Dev.Name == "" {
			continue // no device: nothing to attach it to
		}
		name := b.name(c.Dev)
		d := b.deviceOf(name, c.Dev)
		start := b.rel(c.Start)
		d.SubmitCalls = append(d.SubmitCalls, Span{
			Start: start, End: SaturatingAdd(start, max(c.Latency, 0)), Kind: KindSubmitCall,
			Pid: c.Task.Pid, Tgid: c.Task.Tgid, Comm: c.Task.Comm, Device: name,
			Source: SourceDirect(c.Mechanism, c.Func),
		})
	}
}

// directProbe reports whether a direct probe measured this run: it ran on
// fentry or kprobe, or its events are there (a trace of a run whose probe
// status was lost).
func (b *builder) directProbe(name string, events int) bool {
	if events > 0 {
		return true
	}
	for _, p := range b.tl.Probes {
		if p.Name == name && p.Status == event.StatusOK &&
			(p.Mechanism == event.MechFentry || p.Mechanism == event.MechKprobe) {
			return true
		}
	}
	return false
}

// offCPU classifies the blocked spans and names their devices:
//   - queue-enter and tag-wait: the same thread's slow submission that contains the span;
//   - freeze-wait: the freezer's own sysfs write shortly before, else the device of
//     the queue-enter waits it woke, else the one device whose stalls overlap it;
//   - queue-enter waits still without a device: the freeze of the task that woke them.
//
// When the queueenter or freeze probe timed the functions directly, their
// spans replace the inferred queue-enter waits or freeze waits (which are
// still counted in OffCPUByKind), so nothing is counted twice.
func (b *builder) offCPU() {
	submits := map[uint32]*threadSubmits{} // by thread, in time order
	for i, s := range b.tl.SlowSubmits {
		ts := submits[s.Task.Pid]
		if ts == nil {
			ts = &threadSubmits{all: b.tl.SlowSubmits}
			submits[s.Task.Pid] = ts
		}
		ts.add(i)
	}
	writes := map[uint32]*threadWrites{}
	for _, w := range b.tl.SysfsWrites {
		tw := writes[w.Task.Pid]
		if tw == nil {
			tw = &threadWrites{}
			writes[w.Task.Pid] = tw
		}
		tw.add(w)
	}

	// Classify first, to size the lists: spans are large.
	kinds := make([]string, len(b.tl.OffCPU))
	nWaits, nFreezes := 0, 0
	for i, o := range b.tl.OffCPU {
		kinds[i] = Classify(o.KernelStack)
		b.run.OffCPUByKind[kinds[i]]++
		switch kinds[i] {
		case KindQueueEnter, KindTagWait:
			nWaits++
		case KindFreezeWait:
			nFreezes++
		}
	}
	waits, freezes := make([]Span, 0, nWaits), make([]Span, 0, nFreezes) // all, attributed or not
	for i, o := range b.tl.OffCPU {
		kind := kinds[i]
		if kind != KindQueueEnter && kind != KindTagWait && kind != KindFreezeWait {
			continue
		}
		start := b.rel(o.Start)
		sp := Span{
			Start: start, End: SaturatingAdd(start, max(o.Duration, 0)), Kind: kind,
			Pid: o.Task.Pid, Tgid: o.Task.Tgid, Comm: o.Task.Comm, Waker: o.Waker,
			KernelStack: o.KernelStack, UserStack: o.UserStack, Source: SourceOffCPU,
		}
		switch kind {
		case KindQueueEnter, KindTagWait:
			if ts := submits[sp.Pid]; ts != nil {
				sp.Device = b.submitDevice(ts, o)
			}
			waits = append(waits, sp)
		case KindFreezeWait:
			if w, ok := b.sysfsBefore(writes[sp.Pid], o.Start); ok {
				sp.Device, sp.Attr = w.Device, w.Attr
			}
			freezes = append(freezes, sp)
		}
	}
	if b.directProbe(event.ProbeQueueEnter, len(b.tl.QueueEnters)) {
		waits = append(slices.DeleteFunc(waits, func(s Span) bool { return s.Kind == KindQueueEnter }), b.directQueueWaits()...)
	}
	if b.directProbe(event.ProbeFreeze, len(b.tl.Freezes)) {
		freezes = b.directFreezes(writes)
	}

	b.freezeDevices(freezes, waits)
	freezesOf := map[uint32][]endIndex{} // attributed freezes by freezer, by end
	for i, f := range freezes {
		if f.Device != "" {
			freezesOf[f.Pid] = append(freezesOf[f.Pid], endIndex{f.End, i})
		}
	}
	for _, of := range freezesOf {
		sortEnds(of)
	}
	for i := range waits {
		if waits[i].Device == "" && waits[i].Kind == KindQueueEnter && waits[i].Waker.Pid != 0 {
			if f, ok := b.wakingFreeze(waits[i], freezes, freezesOf[waits[i].Waker.Pid]); ok {
				waits[i].Device = f.Device
			}
		}
	}

	for _, sp := range waits {
		if sp.Device == "" {
			b.run.Unattributed = append(b.run.Unattributed, sp)
			continue
		}
		d := b.device(sp.Device, "")
		if sp.Kind == KindQueueEnter {
			d.QueueWaits = append(d.QueueWaits, sp)
		} else {
			d.TagWaits = append(d.TagWaits, sp)
		}
	}
	for _, sp := range freezes {
		if sp.Device == "" {
			b.run.Unattributed = append(b.run.Unattributed, sp)
			continue
		}
		d := b.device(sp.Device, "")
		d.Freezes = append(d.Freezes, sp)
	}
}

// directQueueWaits are the queue-enter waits timed at the function.
func (b *builder) directQueueWaits() []Span {
	var out []Span
	for _, q := range b.tl.QueueEnters {
		start := b.rel(q.Start)
		sp := Span{
			Start: start, End: SaturatingAdd(start, max(q.Duration, 0)), Kind: KindQueueEnter,
			Pid: q.Task.Pid, Tgid: q.Task.Tgid, Comm: q.Task.Comm,
			Source: SourceDirect(q.Mechanism, q.Func),
		}
		if q.Dev.Major != 0 || q.Dev.Minor != 0 || q.Dev.Name != "" {
			sp.Device = b.name(q.Dev)
		}
		out = append(out, sp)
	}
	return out
}

// directFreezes are the queue freezes timed at the functions, with the
// freezer's sysfs write just before naming the attribute it changed.
func (b *builder) directFreezes(writes map[uint32]*threadWrites) []Span {
	var out []Span
	for _, f := range b.tl.Freezes {
		start := b.rel(f.Start)
		sp := Span{
			Start: start, End: SaturatingAdd(start, max(f.Duration, 0)), Kind: KindFreeze,
			Pid: f.Task.Pid, Tgid: f.Task.Tgid, Comm: f.Task.Comm,
			KernelStack: f.KernelStack, UserStack: f.UserStack,
			Source: SourceDirect(f.Mechanism, f.Func),
		}
		if f.Dev.Major != 0 || f.Dev.Minor != 0 || f.Dev.Name != "" {
			sp.Device = b.name(f.Dev)
		}
		if w, ok := b.sysfsBefore(writes[sp.Pid], f.Start); ok && (sp.Device == "" || w.Device == sp.Device) {
			sp.Device, sp.Attr = w.Device, w.Attr
		}
		out = append(out, sp)
	}
	return out
}

// submitDevice returns the device of the thread's slow submission that
// contains the off-CPU span (widened by SubmitSlack), or "": the first one
// in time order whose end reaches the span's end, if it starts early enough.
func (b *builder) submitDevice(subs *threadSubmits, o event.OffCPU) string {
	slack := event.Mono(b.opts.SubmitSlack)
	end := o.Start.Add(max(o.Duration, 0))
	// maxEnd only grows, and grows at a submission that ends there: the
	// first index where it reaches end-slack is the first submission that does.
	i := sort.Search(len(subs.maxEnd), func(i int) bool { return subs.maxEnd[i] >= end-slack })
	if i == len(subs.idx) {
		return ""
	}
	if s := subs.at(i); s.Start-slack <= o.Start {
		return b.name(s.Dev)
	}
	return ""
}

// threadSubmits are the slow submissions of one thread: indexes into all,
// in time order, with the latest end among each one and those before it.
type threadSubmits struct {
	all    []event.SlowSubmit
	idx    []int32
	maxEnd []event.Mono
}

func (t *threadSubmits) add(i int) {
	s := &t.all[i]
	end := s.Start.Add(s.Latency)
	if n := len(t.maxEnd); n > 0 {
		end = max(end, t.maxEnd[n-1])
	}
	t.idx = append(t.idx, int32(i))
	t.maxEnd = append(t.maxEnd, end)
}

func (t *threadSubmits) at(i int) *event.SlowSubmit { return &t.all[t.idx[i]] }

// threadWrites are the sysfs writes of one thread in time order, with, for
// each, the index of the latest one up to it that names a device (-1: none).
type threadWrites struct {
	ws      []event.SysfsWrite
	lastDev []int32
}

func (t *threadWrites) add(w event.SysfsWrite) {
	last := int32(-1)
	if n := len(t.lastDev); n > 0 {
		last = t.lastDev[n-1]
	}
	if w.Device != "" {
		last = int32(len(t.ws))
	}
	t.ws = append(t.ws, w)
	t.lastDev = append(t.lastDev, last)
}

// sysfsBefore returns the thread's latest sysfs write naming a device at
// most SysfsLookback before t.
func (b *builder) sysfsBefore(tw *threadWrites, t event.Mono) (event.SysfsWrite, bool) {
	if tw == nil {
		return event.SysfsWrite{}, false
	}
	hi := sort.Search(len(tw.ws), func(i int) bool { return tw.ws[i].Time > t })
	if hi == 0 || tw.lastDev[hi-1] < 0 {
		return event.SysfsWrite{}, false
	}
	if w := tw.ws[tw.lastDev[hi-1]]; t.Sub(w.Time) <= b.opts.SysfsLookback {
		return w, true
	}
	return event.SysfsWrite{}, false
}

// endIndex is a span's end and its index in a list of spans.
type endIndex struct {
	end time.Duration
	i   int
}

// sortEnds orders by end, then index.
func sortEnds(e []endIndex) {
	slices.SortFunc(e, func(a, c endIndex) int { return cmp.Or(cmp.Compare(a.end, c.end), cmp.Compare(a.i, c.i)) })
}

// freezeDevices names the device of each freeze that has none: the device
// most of the attributed queue-enter waits the freezer woke as the freeze
// ended belong to (those that ended from SubmitSlack before to WakeSlack
// after it; ties go to the smaller name), else the one device whose stalls
// overlap the freeze. The waits are swept once per freezer, in end order.
func (b *builder) freezeDevices(freezes, waits []Span) {
	wokenBy := map[uint32][]endIndex{} // attributed queue-enter waits by waker
	for i, w := range waits {
		if w.Kind == KindQueueEnter && w.Device != "" && w.Waker.Pid != 0 {
			wokenBy[w.Waker.Pid] = append(wokenBy[w.Waker.Pid], endIndex{w.End, i})
		}
	}
	open := map[uint32][]endIndex{} // freezes without a device, by freezer
	for i, f := range freezes {
		if f.Device == "" && len(wokenBy[f.Pid]) > 0 {
			open[f.Pid] = append(open[f.Pid], endIndex{f.End, i})
		}
	}
	for pid, fs := range open {
		ws := wokenBy[pid]
		sortEnds(ws)
		sortEnds(fs)
		votes := map[string]int{}
		lo, hi := 0, 0 // ws[lo:hi] are the waits in the current freeze's range
		for _, f := range fs {
			from, to := SaturatingAdd(f.end, -b.opts.SubmitSlack), SaturatingAdd(f.end, b.opts.WakeSlack)
			for ; hi < len(ws) && ws[hi].end <= to; hi++ {
				votes[waits[ws[hi].i].Device]++
			}
			for ; lo < hi && ws[lo].end < from; lo++ {
				d := waits[ws[lo].i].Device
				if votes[d]--; votes[d] == 0 {
					delete(votes, d)
				}
			}
			freezes[f.i].Device = majority(votes)
		}
	}
	stalls := b.stallIndex()
	for i := range freezes {
		if freezes[i].Device == "" {
			freezes[i].Device = stalledDevice(freezes[i], stalls)
		}
	}
}

// majority returns the key with the most votes; ties go to the smaller name.
func majority(votes map[string]int) string {
	best, n := "", 0
	for k, v := range votes {
		if v > n || v == n && k < best {
			best, n = k, v
		}
	}
	return best
}

// deviceStalls are one device's stalls in time order, with the latest end
// among each one and those before it.
type deviceStalls struct {
	name   string
	spans  Spans
	maxEnd []time.Duration
}

// stallIndex returns every device's stalls, by name.
func (b *builder) stallIndex() []deviceStalls {
	var out []deviceStalls
	for name, d := range b.byName {
		ds := deviceStalls{name: name, spans: d.Stalls}
		if !slices.IsSortedFunc(ds.spans, func(a, c Span) int { return cmp.Compare(a.Start, c.Start) }) {
			ds.spans = slices.Clone(ds.spans)
			sortSpans(ds.spans)
		}
		ds.maxEnd = make([]time.Duration, len(ds.spans))
		for i, s := range ds.spans {
			ds.maxEnd[i] = s.End
			if i > 0 {
				ds.maxEnd[i] = max(s.End, ds.maxEnd[i-1])
			}
		}
		out = append(out, ds)
	}
	return out
}

// overlaps reports whether a stall overlaps [start, end]: some stall that
// starts by end ends at or after start.
func (ds deviceStalls) overlaps(start, end time.Duration) bool {
	n := sort.Search(len(ds.spans), func(i int) bool { return ds.spans[i].Start > end }) // stalls starting by end
	return n > 0 && ds.maxEnd[n-1] >= start
}

// stalledDevice returns the device whose stalls overlap the span when there
// is exactly one such device, or "".
func stalledDevice(f Span, stalls []deviceStalls) string {
	found := ""
	for _, ds := range stalls {
		if ds.overlaps(f.Start, f.End) {
			if found != "" && found != ds.name {
				return ""
			}
			found = ds.name
		}
	}
	return found
}

// wakingFreeze returns the attributed freeze of the task that woke a
// queue-enter wait, the one that ended last before the wait did (from
// WakeSlack before the wait's end to SubmitSlack after it; of two that
// ended at once, the first). of are the waker's attributed freezes by end.
func (b *builder) wakingFreeze(w Span, freezes []Span, of []endIndex) (Span, bool) {
	lo, hi := SaturatingAdd(w.End, -b.opts.WakeSlack), SaturatingAdd(w.End, b.opts.SubmitSlack)
	k := sort.Search(len(of), func(i int) bool { return of[i].end > hi }) - 1
	if k < 0 || of[k].end < lo {
		return Span{}, false
	}
	end := of[k].end
	k = sort.Search(k, func(i int) bool { return of[i].end >= end })
	return freezes[of[k].i], true
}

func (b *builder) uevents() {
	b.run.Uevents = make(Points, 0, len(b.tl.Uevents))
	for _, u := range b.tl.Uevents {
		p := Point{At: b.rel(u.Time), What: u.Action, Late: b.opts.UeventLate}
		if u.Subsystem == "block" {
			p.Device = strings.TrimPrefix(u.DevName, "/dev/")
		}
		b.run.Uevents = append(b.run.Uevents, p)
		if p.Device == "" {
			continue
		}
		if d, ok := b.byName[p.Device]; ok {
			d.Uevents = append(d.Uevents, p)
		}
	}
}

func (b *builder) sysfsWrites() {
	b.run.SysfsWrites = make(Points, 0, len(b.tl.SysfsWrites))
	for _, w := range b.tl.SysfsWrites {
		p := Point{At: b.rel(w.Time), Pid: w.Task.Pid, Comm: w.Task.Comm, Device: w.Device, What: w.Attr}
		b.run.SysfsWrites = append(b.run.SysfsWrites, p)
		if w.Device == "" {
			continue
		}
		d := b.device(w.Device, "")
		d.SysfsWrites = append(d.SysfsWrites, p)
	}
}

func (b *builder) commands() {
	type key struct{ file, parent string }
	sizes := map[key]int{}
	for _, e := range b.tl.Execs {
		sizes[key{e.Filename, e.ParentComm}]++
	}
	groups := map[key]*Command{}
	var order []key
	for _, e := range b.tl.Execs {
		k := key{e.Filename, e.ParentComm}
		c, ok := groups[k]
		if !ok {
			n := sizes[k]
			c = &Command{Filename: e.Filename, Comm: e.Task.Comm, Args: slices.Clone(e.Args),
				ParentComm: e.ParentComm, PPid: e.PPid, Pids: make([]uint32, 0, n), PPids: make([]uint32, 0, n),
				Ends: make([]time.Duration, 0, n), Forks: make([]time.Duration, 0, n), Execs: make(Points, 0, n)}
			groups[k] = c
			order = append(order, k)
		}
		c.Pids = append(c.Pids, e.Task.Pid)
		c.PPids = append(c.PPids, e.PPid)
		c.Ends = append(c.Ends, b.exitAfter(e.Task.Tgid, e.Time))
		forked := e.Time
		if e.Forked != 0 && e.Forked <= e.Time {
			forked = e.Forked
		}
		c.Forks = append(c.Forks, b.rel(forked))
		c.Count++
		c.Execs = append(c.Execs, Point{At: b.rel(e.Time), Pid: e.Task.Pid, Comm: e.Task.Comm, What: e.Filename})
	}
	for _, k := range order {
		c := groups[k]
		c.Period, c.Jitter = period(c.Execs)
		c.Periodic = c.Count >= 3 && c.Period > 0 && c.Jitter <= MaxPeriodicJitter
		b.run.Commands = append(b.run.Commands, c)
	}
	slices.SortStableFunc(b.run.Commands, func(a, c *Command) int {
		return cmp.Or(cmp.Compare(a.Filename, c.Filename), cmp.Compare(a.ParentComm, c.ParentComm))
	})
	b.pipelines()
	b.nest()
}

// MaxPeriodicJitter is the largest Jitter of a Periodic command.
const MaxPeriodicJitter = 0.25

// period returns the median interval between the points and the jitter:
// the median absolute deviation of the intervals divided by their median
// (robust to one missed or extra run). Fewer than 3 points give 0, 0.
func period(ps Points) (time.Duration, float64) {
	if len(ps) < 3 {
		return 0, 0
	}
	at := make([]time.Duration, len(ps))
	for i, p := range ps {
		at[i] = p.At
	}
	slices.Sort(at)
	iv := make([]float64, 0, len(at)-1)
	for i := 1; i < len(at); i++ {
		iv = append(iv, float64(at[i]-at[i-1]))
	}
	med := median(iv)
	if med <= 0 {
		return 0, math.Inf(1)
	}
	dev := make([]float64, len(iv))
	for i, v := range iv {
		dev[i] = math.Abs(v - med)
	}
	return time.Duration(med), median(dev) / med
}

// median of a non-empty list; the mean of the middle two for even lengths.
func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (b *builder) holders() {
	for _, h := range b.tl.Holders {
		if d, ok := b.byName[h.Upper]; ok && !slices.Contains(d.Lower, h.Lower) {
			d.Lower = append(d.Lower, h.Lower)
		}
		if d, ok := b.byName[h.Lower]; ok && !slices.Contains(d.Upper, h.Upper) {
			d.Upper = append(d.Upper, h.Upper)
		}
	}
	for _, d := range b.byName {
		sort.Strings(d.Lower)
		sort.Strings(d.Upper)
	}
	for _, d := range b.byName {
		for _, name := range d.Upper {
			up, ok := b.byName[name]
			if !ok {
				continue
			}
			// One measurement of each submission: the direct one when the
			// upper device has it (a bio-based device such as bcache has no
			// request, so no Stalls), else the tracepoints'.
			if len(up.SubmitCalls) > 0 {
				d.UpperStalls = append(d.UpperStalls, up.SubmitCalls...)
			} else {
				d.UpperStalls = append(d.UpperStalls, up.Stalls...)
			}
		}
		sortSpans(d.UpperStalls)
	}
}

func sortSpans(s Spans) { slices.SortStableFunc(s, compareSpans) }

// compareSpans orders spans by start, end and pid.
func compareSpans(a, c Span) int {
	return cmp.Or(cmp.Compare(a.Start, c.Start), cmp.Compare(a.End, c.End), cmp.Compare(a.Pid, c.Pid))
}

// exitAfter is when process pid ended after t (relative to the run), or 0.
func (b *builder) exitAfter(pid uint32, t event.Mono) time.Duration {
	ex := b.tl.Exits
	if b.exitOrder == nil {
		// Exits are in time order: sorted stably by pid, each pid's stay in
		// time order (pids are reused).
		b.exitOrder = make([]int32, len(ex))
		for i := range b.exitOrder {
			b.exitOrder[i] = int32(i)
		}
		slices.SortStableFunc(b.exitOrder, func(x, y int32) int { return cmp.Compare(ex[x].Pid, ex[y].Pid) })
	}
	o := b.exitOrder
	i := sort.Search(len(o), func(i int) bool {
		e := &ex[o[i]]
		return e.Pid > pid || e.Pid == pid && e.Time >= t
	})
	if i < len(o) && ex[o[i]].Pid == pid {
		return b.rel(ex[o[i]].Time)
	}
	return 0
}
