package synth

import (
	"fmt"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Storm names an adversarial run: events in the shapes that make a naive
// analysis quadratic, for benchmarks and for tests that the analysis ends.
type Storm string

// Storms.
const (
	// StormFreezes: one device's queue frozen over and over by one udev
	// worker, each freeze (20 ms, announced by its sysfs write) overlapping
	// some two hundred others; two queue-enter waits of distinct threads
	// woken by the freezer as each freeze ends, named for the device only
	// through the freeze; slow submissions behind them; a change uevent now
	// and then.
	StormFreezes Storm = "freezes"
	// StormPeriodic: thousands of commands (n/200, at least 1000), each run
	// periodically by one of four monitor processes, each run followed by a change
	// uevent for one device; every 50th uevent makes udev freeze the queue.
	StormPeriodic Storm = "periodic"
	// StormExits: an exit flood from a few reused pids (a pid namespace
	// that wraps), with an exec of one of them every ten exits.
	StormExits Storm = "exits"
)

// Storms are every storm, in the order benchmarks run them.
var Storms = []Storm{StormFreezes, StormPeriodic, StormExits}

// stormRate is how many events a storm has per second of run time.
const stormRate = 20000

// StormTimeline generates about n events of a storm into a sorted
// timeline (a few more than n when the last unit of the storm is
// completed). Generation is deterministic.
func StormTimeline(s Storm, n int) *timeline.Timeline {
	n = max(n, 100)
	g := &storm{tl: &timeline.Timeline{Start: Start, Kernel: "6.18.44", Hostname: "storm", MinLatency: time.Millisecond}, n: n}
	for _, p := range []string{"exec", "offcpu", "service", "submit", "sysfs", "uevent"} {
		mech := event.MechTPBTF
		switch p {
		case "sysfs":
			mech = event.MechTracepoint
		case "uevent":
			mech = event.MechNetlink
		}
		g.tl.Probes = append(g.tl.Probes, event.ProbeStatus{Name: p, Mechanism: mech, Status: event.StatusOK})
	}
	h := g.tl.Device(loop0)
	for i := range 1000 {
		h.Submit.Add(uint64(800 + i))
		h.Service.Add(uint64(150000 + 10*i))
	}
	switch s {
	case StormFreezes:
		g.freezes()
	case StormPeriodic:
		g.periodic()
	case StormExits:
		g.exits()
	default:
		panic("synth: unknown storm " + string(s))
	}
	g.tl.End = Start.Add(time.Duration(float64(g.count) / stormRate * float64(time.Second)))
	g.tl.Sort()
	return g.tl
}

var loop0 = event.Device{Major: 7, Minor: 0, Name: "loop0"}

type storm struct {
	tl    *timeline.Timeline
	n     int
	count int
}

func (g *storm) add(e event.Event) {
	g.tl.Add(e)
	g.count++
}

// at is the time of the i-th event of the storm.
func at(i int) event.Mono {
	return Start.Add(time.Duration(float64(i) / stormRate * float64(time.Second)))
}

func (g *storm) freezes() {
	const freeze = 20 * time.Millisecond
	worker := udevWorker
	for u := 0; g.count < g.n; u++ {
		t := at(g.count)
		g.add(event.SysfsWrite{Time: t, Task: worker, Device: loop0.Name, Attr: "queue/scheduler",
			Path: "/sys/devices/virtual/block/loop0/queue/scheduler"})
		fz := t.Add(100 * time.Microsecond)
		g.add(event.OffCPU{Start: fz, Duration: freeze, Task: worker, Waker: event.Task{Comm: "swapper/0"},
			KernelStack: freezeStacks[0], UserStack: userStacks[2]})
		for k := range 2 {
			pid := uint32(10000 + 2*u + k) // a thread of its own: tasks by the hundred thousand
			tk := event.Task{Pid: pid, Tgid: pid, Comm: fmt.Sprintf("writer-%d", k)}
			st := fz.Add(time.Duration(k+1) * time.Millisecond)
			g.add(event.OffCPU{Start: st, Duration: fz.Add(freeze).Sub(st) + time.Duration(k)*time.Millisecond, Task: tk, Waker: worker,
				KernelStack: queueEnterStacks[k], UserStack: userStacks[0]})
		}
		sub := submitters[u%len(submitters)]
		g.add(event.SlowSubmit{Start: fz.Add(500 * time.Microsecond), Latency: freeze, Task: sub, Dev: loop0, Op: "WS", End: "getrq",
			Sector: uint64(u) * 8, Bytes: 4096})
		if u%10 == 0 {
			g.add(event.Uevent{Time: t.Add(-time.Millisecond), Action: "change", DevPath: "/devices/virtual/block/loop0",
				Subsystem: "block", DevName: "loop0", DevType: "disk", Seqnum: uint64(u)})
		}
	}
}

func (g *storm) periodic() {
	cmds := max(g.n/200, 1000)
	// Each run is three events (exec, exit, uevent), so the runs of all
	// commands come every 3/stormRate s and each command's every cmds times that.
	period := time.Duration(float64(cmds) * 3 / stormRate * float64(time.Second))
	pid := uint32(100000)
	seq := uint64(0)
	for r := 0; g.count < g.n; r++ {
		c := r % cmds
		t := at(g.count).Add(time.Duration(r/cmds%7) * time.Microsecond) // a little jitter
		pid++
		parent := uint32(2000 + c%4)
		name := fmt.Sprintf("check-%d", c)
		g.add(event.Exec{Time: t, Forked: t - event.Mono(200*time.Microsecond), Task: event.Task{Pid: pid, Tgid: pid, Comm: name},
			PPid: parent, ParentComm: "monitor", Filename: "/usr/local/bin/" + name, Args: []string{name, "--device", "/dev/loop0"}})
		g.add(event.Exit{Time: t.Add(period / 10), Pid: pid})
		seq++
		u := t.Add(time.Millisecond)
		g.add(event.Uevent{Time: u, Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block",
			DevName: "loop0", DevType: "disk", Seqnum: seq})
		if seq%50 == 0 {
			fz := u.Add(5 * time.Millisecond)
			g.add(event.SysfsWrite{Time: fz - event.Mono(100*time.Microsecond), Task: udevWorker, Device: loop0.Name, Attr: "queue/scheduler",
				Path: "/sys/devices/virtual/block/loop0/queue/scheduler"})
			g.add(event.OffCPU{Start: fz, Duration: 10 * time.Millisecond, Task: udevWorker, Waker: event.Task{Comm: "swapper/0"},
				KernelStack: freezeStacks[0], UserStack: userStacks[2]})
			g.add(event.SlowSubmit{Start: fz.Add(time.Millisecond), Latency: 9 * time.Millisecond, Task: submitters[0], Dev: loop0,
				Op: "WS", End: "getrq", Sector: seq, Bytes: 4096})
		}
	}
}

func (g *storm) exits() {
	const pids = 8
	for i := 0; g.count < g.n; i++ {
		t := at(g.count)
		pid := uint32(300 + i%pids)
		if i%10 == 0 {
			g.add(event.Exec{Time: t, Forked: t - event.Mono(100*time.Microsecond), Task: event.Task{Pid: pid, Tgid: pid, Comm: "true"},
				PPid: 1, ParentComm: "systemd", Filename: "/usr/bin/true", Args: []string{"true"}})
		}
		g.add(event.Exit{Time: t.Add(50 * time.Microsecond), Pid: pid})
	}
}
