// Package synth generates synthetic timelines for benchmarks: realistic
// mixes of what the probes deliver on a busy storage host, in any number.
//
// A generated run has a few block devices with their latency histograms and
// a stream of events spread evenly over the run: slow submissions across the
// devices; blocked (off-CPU) spans, most of them waiting for I/O and some in
// queue enter, waiting for a tag or freezing a queue, with kernel and user
// stacks; uevents of several subsystems; execs and exits of many commands;
// and sysfs writes. Woven in is the story whyslow was built for (a daemon
// that runs a command every 3 s, a change uevent after each run, udev
// rewriting queue/scheduler, the queue freeze and the submitters stalled
// behind it), so that the rules have something to find and the analysis
// does its whole work.
//
// Generation is deterministic for a seed. Stacks come from a small set of
// templates and are shared between events, as the live probes share their
// symbolized stacks.
package synth

import (
	"fmt"
	"math"
	"math/rand/v2"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Options shape a generated run. The zero value of a field means its default.
type Options struct {
	// Events is how many events to generate (default 100000).
	Events int
	// Rate is the number of events per second of the run, which sets its
	// length (default 20000/s: 1M events are 50 s).
	Rate float64
	// Seed makes the run reproducible (default 1).
	Seed uint64
}

func (o *Options) defaults() {
	if o.Events <= 0 {
		o.Events = 100000
	}
	if o.Rate <= 0 {
		o.Rate = 20000
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
}

// Start is the CLOCK_MONOTONIC time a generated run starts at (1000 s).
const Start = event.Mono(1000 * time.Second)

// Mix is the share of each kind of event, in percent; the story's events
// come on top.
var Mix = struct {
	SlowSubmits, OffCPU, Uevents, Execs, Exits, SysfsWrites int
}{SlowSubmits: 35, OffCPU: 25, Uevents: 15, Execs: 10, Exits: 10, SysfsWrites: 5}

// devices of a generated run.
var devices = []event.Device{
	{Major: 7, Minor: 0, Name: "loop0"},
	{Major: 8, Minor: 0, Name: "sda"},
	{Major: 8, Minor: 16, Name: "sdb"},
	{Major: 259, Minor: 0, Name: "nvme0n1"},
	{Major: 253, Minor: 0, Name: "vda"},
}

func kframes(names ...string) []event.Frame {
	out := make([]event.Frame, len(names))
	for i, n := range names {
		out[i] = event.Frame{Addr: 0xffffffff81000000 + uint64(i)*0x1000 + uint64(len(n)), Symbol: n, Offset: uint64(len(n)), Module: "kernel"}
	}
	return out
}

func uframes(module string, names ...string) []event.Frame {
	out := make([]event.Frame, len(names))
	for i, n := range names {
		out[i] = event.Frame{Addr: 0x7f0000001000 + uint64(i)*0x100, Symbol: n, Offset: 0x10, Module: module}
	}
	return out
}

// Stack templates: kernel stacks by kind, and user stacks.
var (
	queueEnterStacks = [][]event.Frame{
		kframes("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio", "__submit_bio", "submit_bio_noacct_nocheck",
			"submit_bio_wait", "__blkdev_direct_IO_simple", "blkdev_write_iter", "vfs_write", "__x64_sys_pwrite64", "do_syscall_64",
			"entry_SYSCALL_64_after_hwframe"),
		kframes("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio", "__submit_bio", "submit_bio_noacct_nocheck",
			"submit_bio_wait", "blkdev_issue_flush", "blkdev_fsync", "do_fsync", "__x64_sys_fdatasync", "do_syscall_64",
			"entry_SYSCALL_64_after_hwframe"),
	}
	freezeStacks = [][]event.Frame{
		kframes("__schedule", "schedule", "blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store", "kernfs_fop_write_iter",
			"vfs_write", "ksys_write", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"),
	}
	tagStacks = [][]event.Frame{
		kframes("__schedule", "schedule", "io_schedule", "blk_mq_get_tag", "__blk_mq_alloc_requests", "blk_mq_submit_bio",
			"__submit_bio", "submit_bio_noacct_nocheck", "iomap_dio_bio_iter", "__iomap_dio_rw", "iomap_dio_rw", "xfs_file_dio_write_aligned",
			"vfs_write", "__x64_sys_pwrite64", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"),
	}
	ioStacks = [][]event.Frame{
		kframes("__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "filemap_fault", "__do_fault", "do_fault",
			"__handle_mm_fault", "handle_mm_fault", "do_user_addr_fault", "exc_page_fault", "asm_exc_page_fault"),
		kframes("__schedule", "schedule", "io_schedule", "blk_wait_io", "submit_bio_wait", "__blkdev_direct_IO_simple",
			"blkdev_read_iter", "vfs_read", "__x64_sys_pread64", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"),
		kframes("__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "folio_wait_writeback", "__filemap_fdatawait_range",
			"file_write_and_wait_range", "ext4_sync_file", "__x64_sys_fsync", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"),
		kframes("__schedule", "schedule", "io_schedule", "bit_wait_io", "__wait_on_bit", "out_of_line_wait_on_bit", "__wait_on_buffer",
			"jbd2_journal_commit_transaction", "kjournald2", "kthread", "ret_from_fork", "ret_from_fork_asm"),
	}
	otherStacks = [][]event.Frame{
		kframes("__schedule", "schedule", "schedule_preempt_disabled", "__mutex_lock", "kernfs_fop_write_iter", "vfs_write",
			"ksys_write", "do_syscall_64", "entry_SYSCALL_64_after_hwframe"),
	}
	userStacks = [][]event.Frame{
		uframes("/usr/lib/x86_64-linux-gnu/libc.so.6", "pwrite", "fio_psyncio_queue", "td_io_queue", "do_io", "thread_main"),
		uframes("/usr/lib/x86_64-linux-gnu/libc.so.6", "fdatasync", "XLogFlush", "RecordTransactionCommit", "CommitTransaction"),
		uframes("/usr/lib/x86_64-linux-gnu/libc.so.6", "__write"),
		uframes("/usr/sbin/mysqld", "os_file_write_func", "fil_io", "buf_flush_write_block_low", "buf_flush_page"),
		nil,
	}
)

// submitters are the tasks that submit I/O.
var submitters = func() []event.Task {
	var out []event.Task
	for i, c := range []string{"fio", "postgres", "mysqld", "kworker/u8:2", "jbd2/sda1-8", "rocksdb:low", "java", "ceph-osd"} {
		for j := range 6 {
			pid := uint32(2000 + i*100 + j)
			out = append(out, event.Task{Pid: pid, Tgid: uint32(2000 + i*100), Comm: c})
		}
	}
	return out
}()

var (
	udevWorker = event.Task{Pid: 611, Tgid: 611, Comm: "(udev-worker)"}
	tuned      = event.Task{Pid: 700, Tgid: 700, Comm: "tuned"}
)

// commands run by the host: file, parent comm, args.
var commands = []struct {
	file, parent string
	args         []string
}{
	{"/usr/bin/grep", "bash", []string{"grep", "-q", "error", "/var/log/syslog"}},
	{"/usr/bin/ls", "bash", []string{"ls", "-l"}},
	{"/usr/bin/cat", "sh", []string{"cat", "/proc/loadavg"}},
	{"/usr/bin/date", "cron", []string{"date", "+%s"}},
	{"/usr/sbin/smartctl", "smartd", []string{"smartctl", "-A", "/dev/sda"}},
	{"/usr/bin/python3", "systemd", []string{"python3", "/usr/local/bin/collect.py"}},
	{"/usr/bin/ip", "networkd-dispat", []string{"ip", "-j", "link"}},
	{"/usr/bin/sleep", "bash", []string{"sleep", "1"}},
	{"/usr/bin/awk", "sh", []string{"awk", "{print $1}"}},
	{"/usr/bin/df", "node_exporter", []string{"df", "-P"}},
}

var ueventKinds = []struct{ action, subsystem, devpath, devname, devtype string }{
	{"change", "block", "/devices/virtual/block/%s", "%s", "disk"},
	{"change", "net", "/devices/virtual/net/veth%d", "", ""},
	{"add", "net", "/devices/virtual/net/veth%d", "", ""},
	{"remove", "net", "/devices/virtual/net/veth%d", "", ""},
	{"bind", "usb", "/devices/pci0000:00/0000:00:14.0/usb1/1-%d", "", ""},
	{"change", "power_supply", "/devices/LNXSYSTM:00/AC%d", "", ""},
}

var sysfsAttrs = []string{"queue/read_ahead_kb", "queue/nr_requests", "queue/rq_affinity", "queue/nomerges", "queue/scheduler"}

// Generator produces the events of one run in time order.
type Generator struct {
	opts    Options
	rng     *rand.Rand
	n       int           // events produced
	step    time.Duration // mean gap between events
	t       event.Mono
	pending []event.Event // events due before the next random one
	pid     uint32        // next pid of an exec
	seq     uint64        // uevent seqnum

	// The story: raidmon runs arcconf every period.
	nextStory event.Mono
	raidmon   event.Task
	stories   int
}

// Story period: raidmon runs arcconf this often.
const storyPeriod = 3 * time.Second

// New returns a generator of a run with opts.
func New(opts Options) *Generator {
	opts.defaults()
	g := &Generator{
		opts:      opts,
		rng:       rand.New(rand.NewPCG(opts.Seed, opts.Seed*0x9e3779b97f4a7c15)),
		step:      time.Duration(float64(time.Second) / opts.Rate),
		t:         Start,
		pid:       100000,
		seq:       5000,
		raidmon:   event.Task{Pid: 900, Tgid: 900, Comm: "raidmon"},
		nextStory: Start.Add(storyPeriod / 2),
	}
	return g
}

// Duration is the length of the generated run.
func (g *Generator) Duration() time.Duration {
	return time.Duration(float64(g.opts.Events) / g.opts.Rate * float64(time.Second))
}

// Each calls fn with every event of the run, roughly in time order (events
// that belong together, such as an exec and its exit, come one after the
// other, as from several ring buffers; Timeline.Sort orders them).
func (g *Generator) Each(fn func(event.Event)) {
	for g.n < g.opts.Events {
		fn(g.next())
		g.n++
	}
}

func (g *Generator) next() event.Event {
	if len(g.pending) > 0 {
		e := g.pending[0]
		g.pending = g.pending[1:]
		return e
	}
	g.t = g.t.Add(time.Duration(g.rng.ExpFloat64() * float64(g.step)))
	if g.t >= g.nextStory {
		g.story(g.nextStory)
		g.nextStory = g.nextStory.Add(storyPeriod + time.Duration(g.rng.IntN(40))*time.Millisecond)
		if len(g.pending) > 0 {
			return g.next()
		}
	}
	r := g.rng.IntN(100)
	switch {
	case r < Mix.SlowSubmits:
		return g.slowSubmit()
	case r < Mix.SlowSubmits+Mix.OffCPU:
		return g.offCPU()
	case r < Mix.SlowSubmits+Mix.OffCPU+Mix.Uevents:
		return g.uevent()
	case r < Mix.SlowSubmits+Mix.OffCPU+Mix.Uevents+Mix.Execs+Mix.Exits:
		return g.exec()
	default:
		return g.sysfsWrite()
	}
}

// lognormal returns a latency around median with a spread (sigma).
func (g *Generator) lognormal(median time.Duration, sigma float64) time.Duration {
	return time.Duration(float64(median) * math.Exp(g.rng.NormFloat64()*sigma))
}

func (g *Generator) device() event.Device {
	// Skewed: the first devices get most of the I/O.
	return devices[min(int(g.rng.ExpFloat64()*1.5), len(devices)-1)]
}

func pick[T any](g *Generator, s []T) T { return s[g.rng.IntN(len(s))] }

var ops = []string{"W", "WS", "R", "RA", "FWS", "WM"}

func (g *Generator) slowSubmit() event.Event {
	tk := pick(g, submitters)
	return event.SlowSubmit{Start: g.t, Latency: max(g.lognormal(2*time.Millisecond, 0.8), time.Millisecond), Task: tk,
		Dev: g.device(), Op: pick(g, ops), End: "getrq", Sector: g.rng.Uint64N(1 << 30), Bytes: 4096 << g.rng.IntN(5)}
}

func (g *Generator) offCPU() event.Event {
	tk := pick(g, submitters)
	o := event.OffCPU{Start: g.t, Task: tk, UserStack: pick(g, userStacks)}
	// Queue-enter waits and freezes come with the story, in bursts.
	switch r := g.rng.IntN(100); {
	case r < 80:
		o.KernelStack = pick(g, ioStacks)
		o.Duration = max(g.lognormal(3*time.Millisecond, 0.9), time.Millisecond)
		o.Waker = event.Task{Comm: "swapper/1"}
	case r < 90:
		// A wait for a tag inside a slow submission of the same thread.
		o.KernelStack = pick(g, tagStacks)
		o.Duration = max(g.lognormal(2*time.Millisecond, 0.6), time.Millisecond)
		o.Waker = event.Task{Comm: "swapper/0"}
		dev := g.device()
		g.pending = append(g.pending, event.SlowSubmit{Start: g.t - event.Mono(20*time.Microsecond), Latency: o.Duration + 50*time.Microsecond,
			Task: tk, Dev: dev, Op: "W", End: "getrq", Sector: g.rng.Uint64N(1 << 30), Bytes: 4096})
	default:
		o.KernelStack = pick(g, otherStacks)
		o.Duration = max(g.lognormal(1500*time.Microsecond, 0.5), time.Millisecond)
	}
	return o
}

func (g *Generator) uevent() event.Event {
	k := pick(g, ueventKinds)
	g.seq++
	u := event.Uevent{Time: g.t, Action: k.action, Subsystem: k.subsystem, Seqnum: g.seq, DevType: k.devtype}
	if k.subsystem == "block" {
		d := g.device()
		u.DevPath = fmt.Sprintf(k.devpath, d.Name)
		u.DevName = d.Name
	} else {
		u.DevPath = fmt.Sprintf(k.devpath, g.rng.IntN(64))
	}
	return u
}

// exec returns an exec and queues its exit a little later.
func (g *Generator) exec() event.Event {
	c := pick(g, commands)
	g.pid++
	pid := g.pid
	ppid := uint32(3000 + g.rng.IntN(20))
	e := event.Exec{Time: g.t, Forked: g.t - event.Mono(200*time.Microsecond), Task: event.Task{Pid: pid, Tgid: pid, Comm: c.args[0]},
		PPid: ppid, ParentComm: c.parent, Filename: c.file, Args: c.args}
	g.pending = append(g.pending, event.Exit{Time: g.t.Add(g.lognormal(2*time.Millisecond, 1)), Pid: pid})
	return e
}

func (g *Generator) sysfsWrite() event.Event {
	d := g.device()
	attr := pick(g, sysfsAttrs)
	return event.SysfsWrite{Time: g.t, Task: tuned, Device: d.Name, Attr: attr,
		Path: "/sys/devices/virtual/block/" + d.Name + "/" + attr}
}

// story queues one run of the chain at t: raidmon runs arcconf (piped to
// grep), a change uevent for loop0 follows, udev writes queue/scheduler and
// blocks freezing the queue, and submitters stall meanwhile.
func (g *Generator) story(t event.Mono) {
	g.stories++
	loop0 := devices[0]
	g.pid += 2
	arc, grep := g.pid-1, g.pid
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	evs := []event.Event{
		event.Exec{Time: t, Forked: t - event.Mono(ms(0.3)), Task: event.Task{Pid: arc, Tgid: arc, Comm: "arcconf"}, PPid: g.raidmon.Pid,
			ParentComm: g.raidmon.Comm, Filename: "/usr/sbin/arcconf", Args: []string{"arcconf", "getconfig", "1", "AL"}},
		event.Exec{Time: t.Add(ms(0.2)), Forked: t - event.Mono(ms(0.2)), Task: event.Task{Pid: grep, Tgid: grep, Comm: "grep"}, PPid: g.raidmon.Pid,
			ParentComm: g.raidmon.Comm, Filename: "/usr/bin/grep", Args: []string{"grep", "Temperature"}},
		event.SysfsWrite{Time: t.Add(ms(5)), Task: event.Task{Pid: arc, Tgid: arc, Comm: "arcconf"}, Device: loop0.Name, Attr: "uevent",
			Path: "/sys/devices/virtual/block/loop0/uevent"},
		event.Exit{Time: t.Add(ms(30)), Pid: arc},
		event.Exit{Time: t.Add(ms(31)), Pid: grep},
	}
	g.seq++
	evs = append(evs, event.Uevent{Time: t.Add(ms(6)), Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block",
		DevName: "loop0", DevType: "disk", Seqnum: g.seq})
	fz := t.Add(ms(12))
	freeze := g.lognormal(15*time.Millisecond, 0.3)
	evs = append(evs,
		event.SysfsWrite{Time: fz - event.Mono(ms(0.1)), Task: udevWorker, Device: loop0.Name, Attr: "queue/scheduler",
			Path: "/sys/devices/virtual/block/loop0/queue/scheduler"},
		event.OffCPU{Start: fz, Duration: freeze, Task: udevWorker, Waker: event.Task{Comm: "swapper/0"},
			KernelStack: freezeStacks[0], UserStack: userStacks[2]})
	for i := range 2 + g.rng.IntN(3) {
		tk := submitters[i]
		st := fz.Add(ms(0.5 + float64(i)))
		wait := freeze - ms(0.5+float64(i))
		evs = append(evs,
			event.SlowSubmit{Start: st, Latency: wait + ms(0.05), Task: tk, Dev: loop0, Op: "WS", End: "getrq", Sector: uint64(i) * 8, Bytes: 4096},
			event.OffCPU{Start: st.Add(ms(0.01)), Duration: wait, Task: tk, Waker: udevWorker,
				KernelStack: queueEnterStacks[0], UserStack: userStacks[0]})
	}
	g.pending = append(g.pending, evs...)
}

// Timeline generates a whole run into a sorted timeline, with the device
// histograms and probe status a live run has.
func Timeline(opts Options) *timeline.Timeline {
	g := New(opts)
	tl := Empty(g)
	g.Each(tl.Add)
	tl.Sort()
	return tl
}

// Empty returns the timeline a run of g starts with: window, probes and
// device histograms, but no events yet.
func Empty(g *Generator) *timeline.Timeline {
	tl := &timeline.Timeline{
		Start: Start, End: Start.Add(g.Duration()), Kernel: "6.18.44", Hostname: "synth", MinLatency: time.Millisecond,
	}
	for _, p := range []string{"exec", "offcpu", "service", "submit", "sysfs", "uevent"} {
		mech := event.MechTPBTF
		switch p {
		case "sysfs":
			mech = event.MechTracepoint
		case "uevent":
			mech = event.MechNetlink
		}
		tl.Probes = append(tl.Probes, event.ProbeStatus{Name: p, Mechanism: mech, Status: event.StatusOK})
	}
	rng := rand.New(rand.NewPCG(g.opts.Seed, 7))
	ios := int(g.Duration().Seconds()*20000) + 1000
	for i, d := range devices {
		h := tl.Device(d)
		n := ios >> i
		for range min(n, 50000) {
			h.Submit.Add(uint64(float64(800) * math.Exp(rng.NormFloat64()*0.6)))
			h.Service.Add(uint64(float64(150000) * math.Exp(rng.NormFloat64()*0.5)))
		}
	}
	return tl
}
