package facts

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// limitTimeline is a run of 10 s: cgroup /backup (v1) limited to 50 write
// IOPS on loop0, whose writer fio (pid 300, moved there by a shell: its
// cgroup at its first call was the root) wrote 250 times from 2 s to 7 s;
// a logger (pid 400) in another cgroup; loop0 serves a write in 1 ms.
func limitTimeline() *timeline.Timeline {
	s := func(d float64) event.Mono { return event.Mono(d * float64(time.Second)) }
	ms := uint64(time.Millisecond)
	tl := &timeline.Timeline{Start: 0, End: s(10)}
	tl.Add(event.IOLimit{Time: s(0), Cgroup: "/backup", V1: true, Dev: loop0, Limit: "wiops", Value: 50})
	tl.Add(event.IOLimit{Time: s(0), Cgroup: "/backup", V1: true, Dev: loop0, Limit: "rbps", Value: 1 << 20})
	for _, c := range []struct {
		at     float64
		writes uint64
	}{{0, 1000}, {2.5, 1020}, {3, 1045}, {6.5, 1220}, {7.5, 1250}, {10, 1250}} {
		tl.Add(event.CgroupIO{Time: s(c.at), Cgroup: "/backup", V1: true, Dev: loop0, Writes: c.writes, WriteBytes: c.writes * 4096})
	}
	tl.Add(event.CgroupMember{Time: s(2), Cgroup: "/backup", V1: true, Pid: 300, Comm: "fio"})
	tl.Add(event.Process{Time: s(2), Pid: 300, Comm: "sh", Blkio: "/"})
	tl.Add(event.Process{Time: s(1), Pid: 400, Comm: "logger", Blkio: "/system"})
	at := s(10)
	// fio: 250 writes of 20 ms, 19 of them waiting for their I/O (a device
	// stack), 1 on CPU.
	lat := make([]uint64, 250)
	for i := range lat {
		lat[i] = 20 * ms
	}
	tl.Add(event.SyscallStats{Time: at, Pid: 300, Comm: "fio", Call: "pwrite64", Dev: loop0, Latency: latencies(lat...), Sleep: 250 * 19 * time.Millisecond})
	tl.Add(event.BlockedStack{Time: at, Pid: 300, Comm: "fio", Call: "pwrite64", Dev: loop0, Total: 250 * 19 * time.Millisecond, Count: 250, KernelStack: ioWait})
	tl.Add(event.SyscallStats{Time: at, Pid: 400, Comm: "logger", Call: "write", Dev: loop0, Latency: latencies(2*ms, 2*ms), Sleep: 2 * time.Millisecond})
	tl.Add(event.BlockedStack{Time: at, Pid: 400, Comm: "logger", Call: "write", Dev: loop0, Total: 2 * time.Millisecond, Count: 2, KernelStack: ioWait})
	h := tl.Device(loop0)
	for range 250 {
		h.Service.Add(ms)
	}
	tl.Sort()
	return tl
}

func TestLimits(t *testing.T) {
	run := Build(limitTimeline(), Options{})
	d := run.Find("loop0")
	if d == nil || len(d.Limits) != 2 {
		t.Fatalf("loop0's limits: %+v", d)
	}
	l := d.Limits[0]
	if l.Kind != "wiops" || l.Cgroup != "/backup" || !l.V1 || l.Value != 50 || !l.Counted {
		t.Fatalf("first limit %+v, want /backup's wiops", l)
	}
	// 250 writes from the last reading before they grew (0 s) to the
	// first after they stopped (7.5 s)... the reading at 2.5 s is the
	// first that grew: from 0 s. 250 / 7.5 s.
	if want := 250 / 7.5; math.Abs(l.Rate-want) > 0.01 {
		t.Errorf("rate %.2f, want %.2f", l.Rate, want)
	}
	if got, want := l.Setting(), "blkio.throttle.write_iops_device=50"; got != want {
		t.Errorf("setting %q, want %q", got, want)
	}
	if l.File() != "blkio.throttle.write_iops_device" || l.Unit() != "IOPS" || l.Op() != "write" {
		t.Errorf("file %q unit %q op %q", l.File(), l.Unit(), l.Op())
	}
	// fio is the cgroup's by cgroup.procs (named as seen there); the
	// logger is not. Its delay: 4750 ms blocked, 250 ms of service.
	if len(l.Processes) != 1 || l.Processes[0].Pid != 300 || l.Processes[0].Comm != "fio" {
		t.Fatalf("processes %+v, want fio (300)", l.Processes)
	}
	if want := 4500 * time.Millisecond; l.Delay != want || l.Delays[0] != want {
		t.Errorf("delay %v (%v), want %v", l.Delay, l.Delays, want)
	}
	if got := l.Delayed(); !slices.Equal(got, []string{"fio (pid 300): 4500 ms"}) {
		t.Errorf("delayed %q", got)
	}
	if ts := l.Tasks(); len(ts) != 1 || ts[0].Pid != 300 {
		t.Errorf("tasks %+v", ts)
	}
	if l.Source != SourceLimitInferred || !slices.Equal(d.Limits.Sources(), []string{SourceLimitInferred}) {
		t.Errorf("sources %q", d.Limits.Sources())
	}
	// The read limit: no reads, rate 0; v2 spelling of the same limit.
	r := d.Limits[1]
	if r.Kind != "rbps" || r.Rate != 0 || r.Unit() != "B/s" || r.Op() != "read" {
		t.Errorf("second limit %+v", r)
	}
	r.V1 = false
	if r.Setting() != "rbps=1048576" || r.File() != "io.max" {
		t.Errorf("v2 setting %q file %q", r.Setting(), r.File())
	}
}

// A process read in the cgroup before it exec'd (the shell that moved
// itself there, then exec'd fio: under qemu the poll can fall between the
// two) is named as it exec'd, as it did its I/O, not as the shell.
func TestLimitsMemberExecdAfterwards(t *testing.T) {
	for _, tc := range []struct {
		name     string
		member   string  // its name in cgroup.procs at 2 s
		execAt   float64 // when it exec'd fio (0: not seen)
		procComm string  // its name at its first storage call
		want     string
	}{
		{"read before its exec", "sh", 2.5, "fio", "fio"},
		{"read before its exec, shell's name at first call", "sh", 2.5, "sh", "fio"},
		{"read after its exec", "fio", 1.5, "sh", "fio"},
		{"no exec seen", "fio", 0, "sh", "fio"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := limitTimeline()
			for i := range tl.CgroupMembers {
				tl.CgroupMembers[i].Comm = tc.member
			}
			for i := range tl.Processes {
				if tl.Processes[i].Pid == 300 {
					tl.Processes[i].Comm = tc.procComm
				}
			}
			if tc.execAt > 0 {
				at := event.Mono(tc.execAt * float64(time.Second))
				tl.Add(event.Exec{Time: at, Forked: at - 1, Task: event.Task{Pid: 300, Tgid: 300, Comm: "fio"}, Filename: "/usr/bin/fio"})
				tl.Sort()
			}
			l := Build(tl, Options{}).Find("loop0").Limits[0]
			if len(l.Processes) != 1 || l.Processes[0].Comm != tc.want {
				t.Fatalf("processes %+v, want %s (300)", l.Processes, tc.want)
			}
			if got := l.Delayed(); len(got) != 1 || !strings.HasPrefix(got[0], tc.want+" (pid 300)") {
				t.Errorf("delayed %q, want %s first", got, tc.want)
			}
		})
	}
}

// Without counters read twice, or with no process, a limit has no rate
// and no delay.
func TestLimitsUncounted(t *testing.T) {
	tl := &timeline.Timeline{Start: 0, End: event.Mono(time.Second)}
	tl.Add(event.IOLimit{Cgroup: "/x", Dev: loop0, Limit: "wbps", Value: 100})
	tl.Add(event.CgroupIO{Cgroup: "/x", Dev: loop0, WriteBytes: 5})
	run := Build(tl, Options{})
	l := run.Find("loop0").Limits[0]
	if l.Counted || l.Rate != 0 || l.Delay != 0 || l.Use() != 0 {
		t.Errorf("%+v", l)
	}
}

// The rate of a v2 cgroup limited to 40 write IOPS in a run of 10 s, whose
// writer ran at the limit from 3.6 s to the end, as the iolimits probe
// delivers its counters: zero at the start (no line in io.stat yet), the
// reading before they grew (at 3.5 s), every change, the end. Measured from
// that reading, it is at the limit and binding; from the run's start (a
// trace without it) it would be 64% of the limit and not binding. A
// cgroup already counted before the run is measured the same way; one
// whose limit let nothing through reads zero and is counted.
func TestLimitRateFromItsIO(t *testing.T) {
	s := func(d float64) event.Mono { return event.Mono(d * float64(time.Second)) }
	type reading struct {
		at     float64
		writes uint64
	}
	var load []reading
	for at := 4.0; at <= 10; at += 0.5 {
		load = append(load, reading{at, uint64((at - 3.6) * 40)})
	}
	for _, tc := range []struct {
		name     string
		readings []reading
		rate     float64
		binding  bool
	}{
		{"no line until its I/O", append([]reading{{0, 0}, {3.5, 0}}, load...), 256 / 6.5, true},
		{"no line until its I/O, the reading before it missing", append([]reading{{0, 0}}, load...), 256 / 10.0, false},
		{"counted before the run", func() []reading {
			rs := []reading{{0, 1000}, {3.5, 1000}}
			for _, r := range load {
				rs = append(rs, reading{r.at, 1000 + r.writes})
			}
			return rs
		}(), 256 / 6.5, true},
		{"nothing let through", []reading{{0, 0}, {10, 0}}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := &timeline.Timeline{Start: 0, End: s(10)}
			tl.Add(event.IOLimit{Time: s(0), Cgroup: "/late", Dev: loop0, Limit: "wiops", Value: 40})
			for _, r := range tc.readings {
				tl.Add(event.CgroupIO{Time: s(r.at), Cgroup: "/late", Dev: loop0, Writes: r.writes, WriteBytes: r.writes * 4096})
			}
			tl.Sort()
			l := Build(tl, Options{}).Find("loop0").Limits[0]
			if !l.Counted || math.Abs(l.Rate-tc.rate) > 0.01 || l.Binding() != tc.binding {
				t.Errorf("counted %v, rate %.2f, binding %v; want counted, rate %.2f, binding %v", l.Counted, l.Rate, l.Binding(), tc.rate, tc.binding)
			}
		})
	}
}

func TestUnder(t *testing.T) {
	for _, tc := range []struct {
		p, c string
		want bool
	}{{"/a/b", "/a", true}, {"/a", "/a", true}, {"/ab", "/a", false}, {"/a", "/", true}, {"", "/", false}, {"/a", "", false}} {
		if got := under(tc.p, tc.c); got != tc.want {
			t.Errorf("under(%q, %q) = %v", tc.p, tc.c, got)
		}
	}
}

// iocost's configuration goes to its device; InStage and friends list the
// processes by their time in a stage, under the name the syscall probe gave
// them (fio's is its shell's: the name at its first storage call).
func TestIOCostAndStages(t *testing.T) {
	tl := limitTimeline()
	tl.Add(event.IOCost{Dev: loop0, QoS: "enable=1 ctrl=user", Model: "ctrl=user model=linear"})
	run := Build(tl, Options{})
	d := run.Find("loop0")
	if d.IOCost == nil || d.IOCost.QoS != "enable=1 ctrl=user" || d.IOCost.Model != "ctrl=user model=linear" {
		t.Errorf("iocost %+v", d.IOCost)
	}
	if got := d.StageDelayed("device"); !slices.Equal(got, []string{"sh (pid 300): 4750 ms", "logger (pid 400): 2 ms"}) {
		t.Errorf("in device: %q", got)
	}
	if d.StageMs("device") != 4752 || len(d.StageTasks("iocost")) != 0 || len(d.InStage("device")) != 2 {
		t.Errorf("device %v ms, iocost tasks %v", d.StageMs("device"), d.StageTasks("iocost"))
	}
}

// Where the throttle probe timed the held bios, a limit's delay is their
// waits, and its source says so.
func TestLimitsMeasured(t *testing.T) {
	tl := limitTimeline()
	tl.Probes = append(tl.Probes, event.ProbeStatus{Name: event.ProbeThrottle, Status: event.StatusOK, Mechanism: event.MechFentry})
	for i := range 100 {
		tl.Add(event.ThrottleWait{Start: event.Mono(2*time.Second + time.Duration(i)*20*time.Millisecond), Duration: 15 * time.Millisecond,
			Task: event.Task{Pid: 301, Tgid: 300, Comm: "fio"}, Dev: loop0, Func: "__blk_throtl_bio", Mechanism: event.MechFentry})
	}
	tl.Sort()
	l := Build(tl, Options{}).Find("loop0").Limits[0]
	if want := 1500 * time.Millisecond; l.Delay != want {
		t.Errorf("delay %v, want %v", l.Delay, want)
	}
	if l.Source != "direct: fentry __blk_throtl_bio" {
		t.Errorf("source %q", l.Source)
	}
}

// A limit so low that no bio gets through it in the run: its reader is
// still in its call at the end, and the throttle probe, timing the held
// bios directly, reports the bio it still holds as it stops (unfinished,
// its wait so far). That wait is the limit's delay, with those of the bios
// it dispatched; without it a limit no bio got through would cost nothing.
func TestLimitsHeldAtEnd(t *testing.T) {
	s := func(d float64) event.Mono { return event.Mono(d * float64(time.Second)) }
	wait := func(start, d float64, unfinished bool) event.ThrottleWait {
		return event.ThrottleWait{Start: s(start), Duration: time.Duration(d * float64(time.Second)),
			Task: event.Task{Pid: 201, Tgid: 200, Comm: "dd"}, Dev: loop0, Func: "__blk_throtl_bio", Mechanism: event.MechFentry, Unfinished: unfinished}
	}
	for _, tc := range []struct {
		name    string
		waits   []event.ThrottleWait
		delay   time.Duration
		binding bool // and over the rule's 100 ms
	}{
		{"none timed", nil, 0, false},
		{"held at the end", []event.ThrottleWait{wait(2, 8, true)}, 8 * time.Second, true},
		{"dispatched, then held at the end", []event.ThrottleWait{wait(0.5, 0.05, false), wait(2, 8, true)}, 8050 * time.Millisecond, true},
		{"another process's held bio", []event.ThrottleWait{{Start: s(2), Duration: 8 * time.Second, Task: event.Task{Pid: 301, Tgid: 300, Comm: "cat"},
			Dev: loop0, Func: "__blk_throtl_bio", Mechanism: event.MechFentry, Unfinished: true}}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tl := &timeline.Timeline{Start: 0, End: s(10)}
			tl.Probes = append(tl.Probes, event.ProbeStatus{Name: event.ProbeThrottle, Status: event.StatusOK, Mechanism: event.MechFentry})
			tl.Add(event.IOLimit{Time: s(0), Cgroup: "/slow", Dev: loop0, Limit: "rbps", Value: 4096})
			tl.Add(event.CgroupIO{Time: s(0), Cgroup: "/slow", Dev: loop0})
			tl.Add(event.CgroupIO{Time: s(10), Cgroup: "/slow", Dev: loop0})
			tl.Add(event.Process{Time: s(1), Pid: 200, Comm: "dd", Cgroup: "/slow"})
			tl.Add(event.UnfinishedCall{Time: s(10), Start: s(2), Task: event.Task{Pid: 201, Tgid: 200, Comm: "dd"}, Call: "read", Dev: loop0,
				InCall: 8 * time.Second, Asleep: 8 * time.Second, KernelStack: ioWait})
			for _, w := range tc.waits {
				tl.Add(w)
			}
			tl.Sort()
			d := Build(tl, Options{}).Find("loop0")
			if d == nil || len(d.Limits) != 1 {
				t.Fatalf("loop0's limits: %+v", d)
			}
			l := d.Limits[0]
			if l.Delay != tc.delay || len(l.Delays) != 1 || l.Delays[0] != tc.delay {
				t.Errorf("delay %v (%v), want %v", l.Delay, l.Delays, tc.delay)
			}
			if l.Stuck != 8*time.Second || !l.Binding() {
				t.Errorf("stuck %v, binding %v: want 8s, binding", l.Stuck, l.Binding())
			}
			if got := l.Binding() && l.Delay >= 100*time.Millisecond; got != tc.binding {
				t.Errorf("binding over 100 ms: %v, want %v", got, tc.binding)
			}
			if !strings.HasPrefix(l.Source, "direct: fentry ") {
				t.Errorf("source %q, want the direct probe", l.Source)
			}
		})
	}
}
