package facts

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

const start = event.Mono(1_000_000_000_000) // the timeline starts at 1000 s of CLOCK_MONOTONIC

// at is a time ms milliseconds into the run.
func at(ms float64) event.Mono { return start + event.Mono(ms*float64(time.Millisecond)) }

func msd(ms float64) time.Duration { return time.Duration(ms * float64(time.Millisecond)) }

var (
	loop0  = event.Device{Major: 7, Minor: 0, Name: "loop0"}
	loop1  = event.Device{Major: 7, Minor: 1, Name: "loop1"}
	fio    = event.Task{Pid: 900, Tgid: 900, Comm: "fio"}
	fio2   = event.Task{Pid: 901, Tgid: 900, Comm: "fio"}
	worker = event.Task{Pid: 500, Tgid: 500, Comm: "(udev-worker)"}
)

func frames(names ...string) []event.Frame {
	var out []event.Frame
	for i, n := range names {
		out = append(out, event.Frame{Addr: 0xffffffff81000000 + uint64(i), Symbol: n, Module: "kernel"})
	}
	return out
}

var (
	queueEnterStack = frames("__schedule", "schedule", "__bio_queue_enter", "blk_mq_submit_bio", "__submit_bio")
	freezeStack     = frames("__schedule", "schedule", "blk_mq_freeze_queue_wait", "elevator_change", "elv_iosched_store")
	tagStack        = frames("__schedule", "schedule", "io_schedule", "blk_mq_get_tag", "__blk_mq_alloc_requests")
	ioStack         = frames("__schedule", "schedule", "io_schedule", "folio_wait_bit_common", "filemap_fault")
)

func submit(tk event.Task, dev event.Device, startMs, latMs float64) event.SlowSubmit {
	return event.SlowSubmit{Start: at(startMs), Latency: msd(latMs), Task: tk, Dev: dev, Op: "WS", End: "getrq"}
}

func offcpu(tk event.Task, startMs, durMs float64, stack []event.Frame, waker event.Task) event.OffCPU {
	return event.OffCPU{Start: at(startMs), Duration: msd(durMs), Task: tk, Waker: waker, KernelStack: stack}
}

func write(tk event.Task, dev, attr string, ms float64) event.SysfsWrite {
	return event.SysfsWrite{Time: at(ms), Task: tk, Device: dev, Attr: attr, Path: "/sys/devices/virtual/block/" + dev + "/" + attr}
}

func newTimeline(evs ...event.Event) *timeline.Timeline {
	tl := &timeline.Timeline{Start: start, End: at(10_000), Kernel: "6.18.0", MinLatency: time.Millisecond}
	for _, e := range evs {
		tl.Add(e)
	}
	tl.Sort()
	return tl
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name   string
		frames []event.Frame
		want   string
	}{
		{"bio queue enter", queueEnterStack, KindQueueEnter},
		{"old blk_queue_enter", frames("schedule", "blk_queue_enter", "generic_make_request"), KindQueueEnter},
		{"freeze wait", freezeStack, KindFreezeWait},
		{"4.15 blk_freeze_queue", frames("schedule", "blk_mq_freeze_queue_wait_timeout", "blk_freeze_queue", "queue_requests_store"), KindFreezeWait},
		{"tag wait sleeps in io_schedule", tagStack, KindTagWait},
		{"compiler suffix", frames("schedule", "io_schedule", "blk_mq_get_tag.isra.0"), KindTagWait},
		{"page wait", ioStack, KindIOWait},
		{"io_schedule_timeout", frames("schedule", "io_schedule_timeout", "wait_for_completion_io"), KindIOWait},
		{"mutex", frames("schedule", "__mutex_lock", "kernfs_fop_write_iter"), KindOther},
		{"no frames", nil, KindOther},
		{"unsymbolized", []event.Frame{{Addr: 0xffffffff81234567}}, KindOther},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.frames); got != tt.want {
				t.Errorf("Classify = %q, want %q", got, tt.want)
			}
		})
	}
}

// spanDevices lists "kind@device" of every blocked span, attributed or not
// ("kind@" when not), with the freeze attribute when set.
func spanDevices(run *Run) []string {
	var out []string
	for _, d := range run.Devices {
		for _, ss := range []Spans{d.QueueWaits, d.TagWaits, d.Freezes} {
			for _, s := range ss {
				v := s.Kind + "@" + d.Name
				if s.Attr != "" {
					v += ":" + s.Attr
				}
				out = append(out, v)
			}
		}
	}
	for _, s := range run.Unattributed {
		out = append(out, s.Kind+"@")
	}
	slices.Sort(out)
	return out
}

func TestBuildAttribution(t *testing.T) {
	tests := []struct {
		name string
		evs  []event.Event
		want []string
	}{
		{
			name: "queue-enter inside the thread's slow submission",
			evs: []event.Event{
				submit(fio, loop0, 100, 20),
				offcpu(fio, 101, 18, queueEnterStack, worker),
			},
			want: []string{"queue-enter@loop0"},
		},
		{
			name: "queue-enter a little past the submission is within slack",
			evs: []event.Event{
				submit(fio, loop0, 100, 20),
				offcpu(fio, 99.5, 21, queueEnterStack, event.Task{}),
			},
			want: []string{"queue-enter@loop0"},
		},
		{
			name: "another thread's submission does not name the device",
			evs: []event.Event{
				submit(fio2, loop0, 100, 20),
				offcpu(fio, 101, 18, queueEnterStack, event.Task{}),
			},
			want: []string{"queue-enter@"},
		},
		{
			name: "tag wait inside a submission",
			evs: []event.Event{
				submit(fio, loop1, 100, 20),
				offcpu(fio, 105, 10, tagStack, event.Task{}),
			},
			want: []string{"tag-wait@loop1"},
		},
		{
			name: "freeze named by the freezer's own sysfs write",
			evs: []event.Event{
				write(worker, "loop0", "queue/scheduler", 90),
				offcpu(worker, 91, 20, freezeStack, event.Task{}),
			},
			want: []string{"freeze-wait@loop0:queue/scheduler"},
		},
		{
			name: "latest write wins",
			evs: []event.Event{
				write(worker, "loop1", "queue/scheduler", 80),
				write(worker, "loop0", "queue/nr_requests", 90),
				offcpu(worker, 91, 20, freezeStack, event.Task{}),
			},
			want: []string{"freeze-wait@loop0:queue/nr_requests"},
		},
		{
			name: "a write over 1 s before does not count; the woken waits name the device",
			evs: []event.Event{
				write(worker, "loop1", "queue/scheduler", 0),
				offcpu(worker, 1500, 20, freezeStack, event.Task{}),
				submit(fio, loop0, 1505, 20),
				offcpu(fio, 1505, 18, queueEnterStack, worker), // ends 3 ms after the freeze
			},
			want: []string{"freeze-wait@loop0", "queue-enter@loop0"},
		},
		{
			name: "woken waits that end too late do not name it; the one stalled device does",
			evs: []event.Event{
				offcpu(worker, 100, 20, freezeStack, event.Task{}),
				submit(fio, loop0, 100, 40),
				offcpu(fio, 101, 38, queueEnterStack, worker), // ends 19 ms after the freeze
			},
			want: []string{"freeze-wait@loop0", "queue-enter@loop0"},
		},
		{
			name: "stalls on two devices leave a freeze unattributed",
			evs: []event.Event{
				offcpu(worker, 100, 20, freezeStack, event.Task{}),
				submit(fio, loop0, 105, 5),
				submit(fio2, loop1, 110, 5),
			},
			want: []string{"freeze-wait@"},
		},
		{
			name: "a queue-enter wait with no submission takes its waker's freeze's device",
			evs: []event.Event{
				write(worker, "loop0", "queue/scheduler", 90),
				offcpu(worker, 91, 20, freezeStack, event.Task{}),
				offcpu(fio, 95, 17, queueEnterStack, worker),
			},
			want: []string{"freeze-wait@loop0:queue/scheduler", "queue-enter@loop0"},
		},
		{
			name: "io-wait and other spans are only counted",
			evs: []event.Event{
				offcpu(fio, 95, 17, ioStack, event.Task{}),
				offcpu(fio, 195, 17, nil, event.Task{}),
			},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := Build(newTimeline(tt.evs...), Options{})
			if got := spanDevices(run); !slices.Equal(got, tt.want) {
				t.Errorf("spans %q, want %q", got, tt.want)
			}
			n := 0
			for _, c := range run.OffCPUByKind {
				n += c
			}
			offs := 0
			for _, e := range tt.evs {
				if _, ok := e.(event.OffCPU); ok {
					offs++
				}
			}
			if n != offs {
				t.Errorf("OffCPUByKind counts %d spans (%v), want %d", n, run.OffCPUByKind, offs)
			}
		})
	}
}

func TestBuildSpansAndPoints(t *testing.T) {
	tl := newTimeline(
		submit(fio, loop0, 100, 20),
		offcpu(fio, 101, 18, queueEnterStack, worker),
		write(worker, "loop0", "queue/scheduler", 90),
		offcpu(worker, 91, 20, freezeStack, event.Task{}),
		offcpu(fio, 300, 5, ioStack, event.Task{}),
		event.Uevent{Time: at(50), Action: "change", Subsystem: "block", DevName: "/dev/loop0", DevType: "disk"},
		event.Uevent{Time: at(60), Action: "change", Subsystem: "block", DevName: "loop0p1", DevType: "partition"},
		event.Uevent{Time: at(70), Action: "add", Subsystem: "net", DevName: "loop0"},
		event.Uevent{Time: at(80), Action: "change", Subsystem: "block", DevName: "sdz"},
	)
	h := tl.Device(loop0)
	for range 99 {
		h.Service.Add(uint64(50 * time.Microsecond))
	}
	h.Service.Add(uint64(2 * time.Millisecond))
	tl.Holders = []event.Holder{{Upper: "bcache0", Lower: "loop0"}, {Upper: "loop0", Lower: "sdz"}}
	run := Build(tl, Options{})

	if run.Duration != 10*time.Second || run.Kernel != "6.18.0" || run.Window != DefaultWindow {
		t.Errorf("run header: duration %v kernel %q window %v", run.Duration, run.Kernel, run.Window)
	}
	if len(run.Devices) != 1 {
		t.Fatalf("devices %d, want loop0 only (sdz has only a uevent)", len(run.Devices))
	}
	d := run.Devices[0]
	if d.Name != "loop0" || d.ID != "7:0" {
		t.Errorf("device %s %s", d.Name, d.ID)
	}
	if want := (Span{Start: msd(100), End: msd(120), Kind: KindSubmit, Pid: 900, Tgid: 900, Comm: "fio", Device: "loop0"}); len(d.Stalls) != 1 || !spanEq(d.Stalls[0], want) {
		t.Errorf("stalls %+v, want %+v", d.Stalls, want)
	}
	if len(d.QueueWaits) != 1 || d.QueueWaits[0].Start != msd(101) || d.QueueWaits[0].Waker.Pid != 500 || len(d.QueueWaits[0].KernelStack) != 5 {
		t.Errorf("queue waits %+v", d.QueueWaits)
	}
	if len(d.Freezes) != 1 || d.Freezes[0].Comm != "(udev-worker)" || d.Freezes[0].Attr != "queue/scheduler" {
		t.Errorf("freezes %+v", d.Freezes)
	}
	// a uevent is timed when read: up to DefaultUeventLate late
	if want := (Points{{At: msd(50), Device: "loop0", What: "change", Late: DefaultUeventLate}}); !slices.Equal(d.Uevents, want) {
		t.Errorf("uevents %+v, want %+v", d.Uevents, want)
	}
	if len(run.Uevents) != 4 {
		t.Errorf("run uevents %d, want 4", len(run.Uevents))
	}
	if want := (Points{{At: msd(90), Pid: 500, Comm: "(udev-worker)", Device: "loop0", What: "queue/scheduler"}}); !slices.Equal(d.SysfsWrites, want) {
		t.Errorf("sysfs writes %+v", d.SysfsWrites)
	}
	if !slices.Equal(d.Upper, []string{"bcache0"}) || !slices.Equal(d.Lower, []string{"sdz"}) {
		t.Errorf("upper %v lower %v", d.Upper, d.Lower)
	}
	if d.Service.Count != 100 || d.Service.MaxUs != 2000 || math.Abs(d.Service.P50Us-50) > 50*0.125 || d.Service.P99Us > 2000 {
		t.Errorf("service %+v", d.Service)
	}
	want := map[string]int{KindQueueEnter: 1, KindFreezeWait: 1, KindIOWait: 1}
	for k, v := range want {
		if run.OffCPUByKind[k] != v {
			t.Errorf("OffCPUByKind %v, want %v", run.OffCPUByKind, want)
		}
	}
}

func spanEq(a, b Span) bool {
	return a.Start == b.Start && a.End == b.End && a.Kind == b.Kind && a.Pid == b.Pid && a.Comm == b.Comm && a.Device == b.Device
}

func TestBuildDeviceNames(t *testing.T) {
	tl := newTimeline(
		event.SlowSubmit{Start: at(1), Latency: msd(2), Task: fio, Dev: event.Device{Major: 8, Minor: 0}},
		write(worker, "loop3", "queue/scheduler", 5),
	)
	tl.Device(event.Device{Major: 8, Minor: 0, Name: "sda"})
	run := Build(tl, Options{})
	var names []string
	for _, d := range run.Devices {
		names = append(names, d.Name+"="+d.ID)
	}
	if want := []string{"loop3=", "sda=8:0"}; !slices.Equal(names, want) {
		t.Errorf("devices %v, want %v (a nameless submit takes the histogram's name)", names, want)
	}
	if got := run.Find("sda"); got == nil || len(got.Stalls) != 1 {
		t.Errorf("sda stalls: %+v", got)
	}
}

func TestBuildNil(t *testing.T) {
	run := Build(nil, Options{})
	if run == nil || run.Window != DefaultWindow || run.OffCPUByKind == nil || len(run.Devices) != 0 {
		t.Errorf("Build(nil) = %+v", run)
	}
}

func execAt(ms float64, file, parent string, pid uint32) event.Exec {
	return event.Exec{Time: at(ms), Task: event.Task{Pid: pid, Tgid: pid, Comm: file[len(file)-4:]}, PPid: 42,
		ParentComm: parent, Filename: file, Args: []string{file, "-x"}}
}

func TestBuildCommands(t *testing.T) {
	everyMs := func(file, parent string, times ...float64) []event.Event {
		var out []event.Event
		for i, ms := range times {
			out = append(out, execAt(ms, file, parent, uint32(1000+i)))
		}
		return out
	}
	tests := []struct {
		name     string
		times    []float64
		period   time.Duration
		periodic bool
	}{
		{"clockwork", []float64{0, 5000, 10000, 15000}, 5 * time.Second, true},
		{"small jitter", []float64{0, 5100, 9900, 15050, 20000}, 5025 * time.Millisecond, true},
		{"one missed run among many", []float64{0, 2000, 4000, 6000, 10000, 12000, 14000}, 2 * time.Second, true},
		{"two runs", []float64{0, 5000}, 0, false},
		{"irregular", []float64{0, 1000, 5000, 5500, 9000}, 2250 * time.Millisecond, false},
		{"all at once", []float64{7, 7, 7}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			run := Build(newTimeline(everyMs("/usr/bin/mon", "monitord", tt.times...)...), Options{})
			if len(run.Commands) != 1 {
				t.Fatalf("commands %d", len(run.Commands))
			}
			c := run.Commands[0]
			if c.Period != tt.period || c.Periodic != tt.periodic || c.Count != len(tt.times) || len(c.Pids) != len(tt.times) {
				t.Errorf("period %v periodic %v count %d (jitter %.3f), want %v %v %d", c.Period, c.Periodic, c.Count, c.Jitter, tt.period, tt.periodic, len(tt.times))
			}
			if c.Filename != "/usr/bin/mon" || c.ParentComm != "monitord" || c.PPid != 42 || c.Comm != "/mon" || !slices.Equal(c.Args, []string{"/usr/bin/mon", "-x"}) {
				t.Errorf("command %+v", c)
			}
		})
	}

	// grouping: same file from two parents is two commands
	evs := append(everyMs("/usr/bin/mon", "monitord", 0, 10), everyMs("/usr/bin/mon", "bash", 5)...)
	run := Build(newTimeline(evs...), Options{})
	if len(run.Commands) != 2 || run.Commands[0].ParentComm != "bash" || run.Commands[1].Count != 2 {
		t.Errorf("grouping by file and parent: %+v", run.Commands)
	}
}
