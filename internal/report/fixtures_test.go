package report

import (
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/internal/hist"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/rules"
)

// Hand-built diagnoses for the golden tests: what facts.Build and the rules
// would hand over for the situations the report must present.

var startedAt = time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)

type scenario struct {
	tl       *timeline.Timeline
	run      *facts.Run
	findings []rules.Finding
	meta     Meta
}

func (s scenario) build() *Report { return Build(s.tl, s.run, s.findings, s.meta) }

func meta(devices ...string) Meta {
	return Meta{Version: "0.1.0-test", StartedAt: startedAt.Add(400 * time.Millisecond), Duration: time.Minute, MinLatency: time.Millisecond, Devices: devices}
}

func msDur(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

func kframes(names ...string) []event.Frame {
	out := make([]event.Frame, len(names))
	for i, n := range names {
		out[i] = event.Frame{Addr: 0xffffffff81000000 + uint64(i)*0x100, Symbol: n, Offset: uint64(0x10 * (i + 1)), Module: "kernel"}
	}
	return out
}

var (
	queueEnterStack = kframes("__bio_queue_enter", "blk_mq_submit_bio", "__submit_bio", "submit_bio_noacct_nocheck", "blkdev_direct_write", "vfs_write")
	freezeStack     = kframes("blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store", "queue_attr_store", "kernfs_fop_write_iter", "vfs_write")
	nrRequestsStack = kframes("blk_mq_freeze_queue_wait", "queue_requests_store", "queue_attr_store", "kernfs_fop_write_iter", "vfs_write")
	writerUser      = []event.Frame{{Addr: 0x7f00001000, Symbol: "pwrite64", Offset: 0x47, Module: "/usr/lib/x86_64-linux-gnu/libc.so.6"}, {Addr: 0x401000, Symbol: "main", Offset: 0x1d, Module: "/usr/local/bin/writer"}}
	udevUser        = []event.Frame{{Addr: 0x7f00002000, Symbol: "write", Offset: 0x14, Module: "/usr/lib/x86_64-linux-gnu/libc.so.6"}}
)

func span(kind string, atMs, durMs float64, pid uint32, comm, dev string, k, u []event.Frame) facts.Span {
	return facts.Span{Start: msDur(atMs), End: msDur(atMs + durMs), Kind: kind, Pid: pid, Tgid: pid, Comm: comm, Device: dev, KernelStack: k, UserStack: u}
}

func okProbes() []event.ProbeStatus {
	return []event.ProbeStatus{
		{Name: "submit", Mechanism: event.MechTracepoint, Status: event.StatusOK},
		{Name: "offcpu", Mechanism: event.MechTPBTF, Status: event.StatusOK, Skipped: []event.Skip{{Mechanism: event.MechFentry, Reason: "program load: operation not permitted"}}},
		{Name: "exec", Mechanism: event.MechTPBTF, Status: event.StatusOK},
		{Name: "uevent", Mechanism: event.MechNetlink, Status: event.StatusOK},
		{Name: "sysfs", Mechanism: event.MechTracepoint, Status: event.StatusOK},
	}
}

func baseTimeline(seconds float64) *timeline.Timeline {
	return &timeline.Timeline{
		Start: event.Mono(5 * time.Second), End: event.Mono(5*time.Second + time.Duration(seconds*float64(time.Second))),
		Kernel: "6.18.0-whyslow", Hostname: "lab1", MinLatency: time.Millisecond, Probes: okProbes(),
	}
}

func points(n int, every time.Duration, what string) facts.Points {
	out := make(facts.Points, n)
	for i := range out {
		out[i] = facts.Point{At: time.Duration(i) * every, Device: "loop0", What: what}
	}
	return out
}

// freezeChain is the story whyslow exists for: a monitor runs a command every
// 2 s, its uevents make udev write queue/scheduler, the freeze stalls writes.
func freezeChain() scenario {
	tl := baseTimeline(60)
	loop0 := &facts.Device{
		Name: "loop0", ID: "7:0",
		Submit:  facts.Latency{Count: 183211, MeanUs: 41.2871, P50Us: 7.349, P99Us: 11834.66, MaxUs: 28132.9},
		Service: facts.Latency{Count: 183002, MeanUs: 88.0, P50Us: 61.25, P99Us: 412.04, MaxUs: 2310.5},
		Stalls: facts.Spans{
			span(facts.KindSubmit, 2000, 27.9, 900, "writer", "loop0", nil, nil),
			span(facts.KindSubmit, 4000, 28.13, 900, "writer", "loop0", nil, nil),
			span(facts.KindSubmit, 6000, 12.5, 901, "fio", "loop0", nil, nil),
		},
		QueueWaits: facts.Spans{
			span(facts.KindQueueEnter, 2000.1, 27.8, 900, "writer", "loop0", queueEnterStack, writerUser),
			span(facts.KindQueueEnter, 4000.1, 28.0, 900, "writer", "loop0", queueEnterStack, writerUser),
			span(facts.KindQueueEnter, 6000.1, 12.4, 901, "fio", "loop0", queueEnterStack, nil),
			span(facts.KindQueueEnter, 8000.1, 3.0, 902, "jbd2/loop0-8", "loop0", nil, nil), // no stack: not grouped
		},
		Freezes: facts.Spans{
			span(facts.KindFreezeWait, 2000, 28.0, 4711, "(udev-worker)", "loop0", freezeStack, udevUser),
			span(facts.KindFreezeWait, 4000, 28.2, 4712, "(udev-worker)", "loop0", freezeStack, udevUser),
			span(facts.KindFreezeWait, 6000, 12.6, 4711, "(udev-worker)", "loop0", freezeStack, udevUser),
			span(facts.KindFreezeWait, 6020, 1.5, 4711, "(udev-worker)", "loop0", nrRequestsStack, udevUser),
		},
		Uevents:     points(30, 2*time.Second, "change"),
		SysfsWrites: points(30, 2*time.Second, "queue/scheduler"),
	}
	loop1 := &facts.Device{
		Name: "loop1", ID: "7:1",
		Submit:  facts.Latency{Count: 120, MeanUs: 5.1, P50Us: 4.75, P99Us: 9.5, MaxUs: 14},
		Service: facts.Latency{Count: 120, MeanUs: 40, P50Us: 38, P99Us: 90, MaxUs: 130},
	}
	run := &facts.Run{Duration: time.Minute, Kernel: tl.Kernel, MinLatency: time.Millisecond, Devices: []*facts.Device{loop1, loop0}}
	trigger := &rules.Trigger{Pid: 5120, PPid: 5001, Comm: "fake-arcconf", ParentComm: "monitor.sh", Filename: "/usr/local/bin/fake-arcconf", Args: []string{"fake-arcconf", "getconfig", "1", "LD"}, Pipeline: "fake-arcconf getconfig 1 LD | grep Temperature", Count: 30, Period: 2 * time.Second}
	findings := []rules.Finding{
		{
			Rank: 2, Rule: "uevent-storm", Severity: rules.Info, Score: 0,
			Title:       "loop0 gets a change uevent every 2.0s",
			Explanation: "Each change uevent makes udev run its rules for the device again.",
			Remedy:      "Find what emits the uevents (see the freeze chain above).",
			Devices:     []string{"loop0"},
			Steps:       []rules.Step{{Rule: "uevent-storm", Title: "change uevents on loop0"}},
			Evidence:    []rules.Evidence{{Name: "uevents", Value: 30}, {Name: "per_second", Value: 0.5}},
		},
		{
			Rank: 1, Rule: "freeze-chain", Severity: rules.Critical, Score: 512.2871,
			Title: "udev's writes of queue/scheduler freeze loop0 and stall its writers",
			Explanation: "Every write of queue/scheduler freezes the request queue of loop0: the writer waits until " +
				"all in-flight I/O has drained, and every new submission blocks in __bio_queue_enter until the queue " +
				"is unfrozen. This wait happens before request accounting, so iostat and biolatency do not show it.\n" +
				"The writes come from udev rules run on change uevents, which fake-arcconf causes.",
			Remedy:    "Stop the udev rule from rewriting queue attributes on every change uevent (match ACTION==\"add\" only),\nor stop monitor.sh from running fake-arcconf so often.",
			Precision: "direct: kprobe blk_freeze_queue_start; inferred: off-CPU stacks",
			Devices:   []string{"loop0"},
			Processes: []rules.Process{
				{Pid: 5120, Comm: "fake-arcconf", Role: "trigger"},
				{Pid: 4711, Comm: "(udev-worker)", Role: "freezer"},
				{Pid: 900, Comm: "writer", Role: "submitter"},
			},
			Trigger: trigger,
			Steps: []rules.Step{
				{Rule: "periodic-command", Title: "monitor.sh runs fake-arcconf every 2.0s"},
				{Rule: "uevent-storm", Title: "change uevents on loop0"},
				{Rule: "sysfs-freeze", Title: "(udev-worker) writes queue/scheduler, freezing loop0"},
				{Rule: "freeze-chain", Title: "writer's submissions stall up to 28ms"},
			},
			Evidence: []rules.Evidence{
				{Name: "freezes", Value: 4},
				{Name: "freeze_total", Value: msDur(69.8)},
				{Name: "max_stall_ms", Value: 28.13},
				{Name: "stalled_submits", Value: uint64(3)},
				{Name: "attrs", Value: []string{"queue/scheduler", "queue/nr_requests"}},
				{Name: "overlap_ratio", Value: 0.96666666},
			},
		},
	}
	return scenario{tl: tl, run: run, findings: findings, meta: meta()}
}

// slowDevice is a plain slow disk: high service time, no freezes.
func slowDevice() scenario {
	tl := baseTimeline(30)
	sda := &facts.Device{
		Name: "sda", ID: "8:0",
		Submit:  facts.Latency{Count: 9000, MeanUs: 6.2, P50Us: 5.5, P99Us: 14.25, MaxUs: 80},
		Service: facts.Latency{Count: 9000, MeanUs: 48210.7, P50Us: 41500, P99Us: 182300.44, MaxUs: 412000},
		QueueWaits: facts.Spans{
			span(facts.KindIOWait, 100, 180, 3001, "postgres", "sda", kframes("io_schedule", "folio_wait_bit"), nil), // not a blocked-queue span
		},
	}
	bcache := &facts.Device{
		Name: "bcache0", ID: "252:0", Lower: []string{"sda", "nvme0n1"},
		Submit:  facts.Latency{Count: 9000, MeanUs: 3.1, P50Us: 2.9, P99Us: 8.1, MaxUs: 21},
		Service: facts.Latency{Count: 0},
	}
	run := &facts.Run{Duration: 30 * time.Second, Kernel: tl.Kernel, MinLatency: time.Millisecond, Devices: []*facts.Device{sda, bcache}}
	findings := []rules.Finding{{
		Rank: 1, Rule: "slow-device", Severity: rules.Warning, Score: 433896.3,
		Title:       "sda is slow to serve requests: p99 182ms",
		Explanation: "Requests spend most of their time in the device (issue to completion), not in the block layer.",
		Remedy:      "Check the device's health (smartctl -a /dev/sda) and whether its workload exceeds what it can do.",
		Devices:     []string{"sda"},
		Steps:       []rules.Step{{Rule: "slow-device", Title: "sda is slow to serve requests: p99 182ms"}},
		Evidence: []rules.Evidence{
			{Name: "service_p99_us", Value: 182300.44},
			{Name: "service_max_us", Value: 412000.0},
			{Name: "requests", Value: 9000},
			{Name: "stacked_under", Value: "bcache0"},
		},
	}}
	m := meta()
	m.Duration = 30 * time.Second
	return scenario{tl: tl, run: run, findings: findings, meta: m}
}

// nothingFound is a quiet host.
func nothingFound() scenario {
	tl := baseTimeline(60)
	vda := &facts.Device{
		Name: "vda", ID: "254:0",
		Submit:  facts.Latency{Count: 412, MeanUs: 3.3, P50Us: 3.1, P99Us: 6.75, MaxUs: 19.2},
		Service: facts.Latency{Count: 412, MeanUs: 310, P50Us: 280, P99Us: 900, MaxUs: 1200},
	}
	run := &facts.Run{Duration: time.Minute, Kernel: tl.Kernel, MinLatency: time.Millisecond, Devices: []*facts.Device{vda}}
	return scenario{tl: tl, run: run, meta: meta("vda")}
}

// degraded lost events and ran without two probes, and was interrupted.
func degraded() scenario {
	tl := baseTimeline(12.5)
	tl.Probes = []event.ProbeStatus{
		{Name: "submit", Mechanism: event.MechTracepoint, Status: event.StatusOK},
		{Name: "offcpu", Status: event.StatusUnavailable, Reason: "no mechanism works on this kernel",
			Skipped: []event.Skip{
				{Mechanism: event.MechFentry, Reason: "program load: operation not permitted"},
				{Mechanism: event.MechTPBTF, Reason: "sched_switch has no prev_state argument"},
			}},
		{Name: "exec", Mechanism: event.MechTPBTF, Status: event.StatusOK},
		{Name: "uevent", Mechanism: event.MechNetlink, Status: event.StatusOK},
		{Name: "sysfs", Status: event.StatusUnavailable, Reason: "tracepoint syscalls:sys_enter_openat not found"},
	}
	tl.AddLoss(event.Loss{Probe: "submit", What: "ring buffer full", Count: 1200})
	tl.AddLoss(event.Loss{Probe: "exec", What: "ring buffer full", Count: 34})
	tl.AddLoss(event.Loss{Probe: "uevent", What: "netlink overrun", Count: 2})
	// One set of missed completions, a line of each probe: counted once.
	tl.AddLoss(event.Loss{Probe: event.ProbeSubmit, What: event.SubmitMissedWhat, Count: 500})
	tl.AddLoss(event.Loss{Probe: event.ProbeDevFault, What: event.DevFaultUnseenWhat, Count: 500})
	loop0 := &facts.Device{
		Name: "loop0", ID: "7:0",
		Submit:  facts.Latency{Count: 52000, MeanUs: 30, P50Us: 7, P99Us: 9000, MaxUs: 31000},
		Service: facts.Latency{Count: 52000, MeanUs: 80, P50Us: 60, P99Us: 400, MaxUs: 2000},
		Stalls:  facts.Spans{span(facts.KindSubmit, 1000, 31, 900, "writer", "loop0", nil, nil)},
		Uevents: points(6, 2*time.Second, "change"),
	}
	run := &facts.Run{Duration: 12500 * time.Millisecond, Kernel: tl.Kernel, MinLatency: time.Millisecond, LostEvents: 1736, Devices: []*facts.Device{loop0}}
	findings := []rules.Finding{{
		Rank: 1, Rule: "submit-stall", Severity: rules.Warning, Score: 31,
		Title:       "writer's submissions to loop0 stall up to 31ms",
		Explanation: "Bios waited before they got a request; the off-CPU probe was unavailable, so why is unknown.",
		Remedy:      "Run again where the off-CPU probe works to see where the submitters block.",
		Devices:     []string{"loop0"},
		Processes:   []rules.Process{{Pid: 900, Comm: "writer", Role: "submitter"}},
		Steps:       []rules.Step{{Rule: "submit-stall", Title: "writer's submissions to loop0 stall up to 31ms"}},
		Evidence:    []rules.Evidence{{Name: "stalls", Value: 1}, {Name: "max_stall", Value: 31 * time.Millisecond}},
	}}
	m := meta()
	m.RuleErrors = rules.RuleErrors{{Rule: "my-slow-writes", File: "/etc/whyslow/rules/slow-writes.yaml", Line: 7, Column: 18,
		Device: "loop0", Field: "when", Message: "index out of range: 100 (array length is 1)", More: 2}}
	return scenario{tl: tl, run: run, findings: findings, meta: m}
}

// withProcesses adds the application's view to a diagnosis: processes and
// their storage calls as facts.Build derives them from the syscall probe's
// sums. comm and cgroup name the writer; other is the frame of a stack no
// rule knows.
func withProcesses(sc scenario, comm, cgroup, other string) scenario {
	tl := &timeline.Timeline{End: event.Mono(time.Minute)}
	at := tl.End
	lat := func(ms ...float64) hist.Sparse {
		var h hist.Histogram
		for _, v := range ms {
			h.Add(uint64(msDur(v)))
		}
		return hist.Compact(&h)
	}
	loop1 := event.Device{Major: 7, Minor: 1, Name: "loop1"}
	vda := event.Device{Major: 254, Minor: 0, Name: "vda"}
	tl.Add(event.Process{Time: 1, Pid: 900, Comm: comm, Cgroup: cgroup, Blkio: "/"})
	tl.Add(event.SyscallStats{Time: at, Pid: 900, Comm: comm, Call: "pwrite64", Dev: loop1,
		Latency: lat(0.2, 0.3, 0.3, 0.4, 31, 65), Sleep: msDur(92), Runqueue: msDur(2)})
	tl.Add(event.SyscallStats{Time: at, Pid: 900, Comm: comm, Call: "fdatasync", Dev: loop1,
		Latency: lat(0.1, 0.1, 0.2), Sleep: msDur(0.3)})
	tl.Add(event.BlockedStack{Time: at, Pid: 900, Comm: comm, Call: "pwrite64", Dev: loop1, Total: msDur(90), Count: 4,
		KernelStack: kframes("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio")})
	tl.Add(event.BlockedStack{Time: at, Pid: 900, Comm: comm, Call: "pwrite64", Dev: loop1, Total: msDur(1.5), Count: 4,
		KernelStack: kframes("__schedule", "schedule", "io_schedule_timeout", "submit_bio_wait")})
	tl.Add(event.BlockedStack{Time: at, Pid: 900, Comm: comm, Call: "pwrite64", Dev: loop1, Total: msDur(0.5), Count: 1,
		KernelStack: kframes("__schedule", "schedule", other, "mydrv_submit")})
	tl.Add(event.BlockedStack{Time: at, Pid: 900, Comm: comm, Call: "fdatasync", Dev: loop1, Total: msDur(0.3), Count: 3,
		KernelStack: kframes("__schedule", "schedule", "io_schedule", "blkdev_issue_flush")})
	tl.Add(event.SyscallStats{Time: at, Pid: 640, Comm: "journald", Call: "write", Dev: vda, Latency: lat(0.01, 0.02, 0.01)})
	tl.Device(loop1)
	tl.Device(vda)
	tl.Sort()
	sc.run.Processes = facts.Build(tl, facts.Options{}).Processes
	return sc
}

// affectedChain is the freeze chain with the processes it slowed down.
func affectedChain() scenario {
	return withProcesses(freezeChain(), "fio", "/user.slice/fio.scope", "my_driver_wait")
}

var scenarios = []struct {
	name string
	make func() scenario
}{
	{"freeze-chain", freezeChain},
	{"slow-device", slowDevice},
	{"nothing-found", nothingFound},
	{"degraded", degraded},
	{"affected", affectedChain},
}
