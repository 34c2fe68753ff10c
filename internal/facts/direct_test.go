package facts

import (
	"fmt"
	"slices"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// Direct measurements replace the off-CPU inference of the same waits, so
// nothing counts twice; without them the inference stays.
func TestBuildDirectReplacesInferred(t *testing.T) {
	qe := func(tk event.Task, startMs, durMs float64) event.QueueEnter {
		return event.QueueEnter{Start: at(startMs), Duration: msd(durMs), Task: tk, Dev: loop0,
			Func: "__bio_queue_enter", Mechanism: event.MechKprobe}
	}
	fz := event.Freeze{Start: at(99), Duration: msd(31), Task: worker, Unfreezer: worker, Dev: loop0,
		Func: "blk_freeze_queue_start", Mechanism: event.MechFentry, KernelStack: frames("blk_freeze_queue_start", "elevator_change")}
	inferred := []event.Event{
		write(worker, "loop0", "queue/scheduler", 98),
		submit(fio, loop0, 100, 30),
		offcpu(fio, 100.5, 29, queueEnterStack, worker),
		offcpu(worker, 100, 29.5, freezeStack, event.Task{}),
	}
	directProbe := func(name string, mech event.Mechanism) event.ProbeStatus {
		return event.ProbeStatus{Name: name, Mechanism: mech, Status: event.StatusOK}
	}
	tests := []struct {
		name        string
		evs         []event.Event
		probes      []event.ProbeStatus
		wantWaits   []string // Source of each queue wait on loop0
		wantFreezes []string // Kind/Source of each freeze on loop0
		wantAttr    string
	}{
		{
			name:        "off-CPU only",
			evs:         inferred,
			wantWaits:   []string{SourceOffCPU},
			wantFreezes: []string{KindFreezeWait + " " + SourceOffCPU},
			wantAttr:    "queue/scheduler",
		},
		{
			name:        "both: direct wins",
			evs:         append(slices.Clone(inferred), qe(fio, 100.4, 29.2), qe(fio2, 101, 28), fz),
			wantWaits:   []string{"direct: kprobe __bio_queue_enter", "direct: kprobe __bio_queue_enter"},
			wantFreezes: []string{KindFreeze + " direct: fentry blk_freeze_queue_start"},
			wantAttr:    "queue/scheduler",
		},
		{
			name: "direct probes ran but saw nothing: no inferred spans either",
			evs:  inferred,
			probes: []event.ProbeStatus{directProbe(event.ProbeQueueEnter, event.MechFentry),
				directProbe(event.ProbeFreeze, event.MechKprobe)},
		},
		{
			name:        "probe on its fallback: inference stays",
			evs:         inferred,
			probes:      []event.ProbeStatus{directProbe(event.ProbeQueueEnter, event.MechTPBTF), directProbe(event.ProbeFreeze, event.MechTPBTF)},
			wantWaits:   []string{SourceOffCPU},
			wantFreezes: []string{KindFreezeWait + " " + SourceOffCPU},
			wantAttr:    "queue/scheduler",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tl := newTimeline(tt.evs...)
			tl.Probes = tt.probes
			run := Build(tl, Options{})
			d := run.Find("loop0")
			if d == nil {
				t.Fatal("no loop0")
			}
			var waits, freezes []string
			for _, w := range d.QueueWaits {
				waits = append(waits, w.Source)
			}
			for _, f := range d.Freezes {
				freezes = append(freezes, f.Kind+" "+f.Source)
				if f.Attr != tt.wantAttr {
					t.Errorf("freeze attr %q, want %q", f.Attr, tt.wantAttr)
				}
			}
			if !slices.Equal(waits, tt.wantWaits) || !slices.Equal(freezes, tt.wantFreezes) {
				t.Errorf("waits %q freezes %q, want %q %q", waits, freezes, tt.wantWaits, tt.wantFreezes)
			}
			if run.OffCPUByKind[KindQueueEnter] != 1 || run.OffCPUByKind[KindFreezeWait] != 1 {
				t.Errorf("OffCPUByKind %v: blocked spans are still counted", run.OffCPUByKind)
			}
		})
	}
}

func TestSpansSources(t *testing.T) {
	s := Spans{{Source: SourceOffCPU}, {Source: "direct: kprobe __bio_queue_enter"}, {Source: ""},
		{Source: SourceOffCPU}, {Source: SourceSubmitTP}, {Source: "direct: fentry blk_freeze_queue_start"}}
	want := []string{"direct: fentry blk_freeze_queue_start", "direct: kprobe __bio_queue_enter", SourceSubmitTP, SourceOffCPU}
	if got := s.Sources(); !slices.Equal(got, want) {
		t.Errorf("Sources() = %q, want %q", got, want)
	}
	if got := Spans(nil).Sources(); len(got) != 0 {
		t.Errorf("nil Sources() = %q", got)
	}
}

// Slow submit_bio_noacct calls become the device's SubmitCalls.
func TestBuildSubmitCalls(t *testing.T) {
	tl := newTimeline(event.SubmitCall{Start: at(5), Latency: msd(12), Task: fio, Dev: loop1, Func: "submit_bio_noacct", Mechanism: event.MechKprobe})
	tl.Device(loop1).SubmitCall.Add(uint64(msd(12)))
	run := Build(tl, Options{})
	d := run.Find("loop1")
	if d == nil || len(d.SubmitCalls) != 1 || d.SubmitCall.Count != 1 {
		t.Fatalf("device %+v", d)
	}
	if sp := d.SubmitCalls[0]; sp.Kind != KindSubmitCall || sp.Pid != fio.Pid || sp.Duration() != msd(12) || sp.Source != "direct: kprobe submit_bio_noacct" {
		t.Errorf("span %+v", sp)
	}
}

// A device's UpperStalls are the slow submissions of the devices stacked on
// it, one measurement each: the direct calls where the upper device has
// them, else its tracepoint stalls. Devices stacked elsewhere add nothing.
func TestBuildUpperStalls(t *testing.T) {
	bcache0 := event.Device{Major: 252, Minor: 0, Name: "bcache0"}
	md0 := event.Device{Major: 9, Minor: 0, Name: "md0"}
	call := func(dev event.Device, ms, lat float64) event.SubmitCall {
		return event.SubmitCall{Start: at(ms), Latency: msd(lat), Task: fio, Dev: dev, Func: "submit_bio_noacct", Mechanism: event.MechFentry}
	}
	tl := newTimeline(
		call(bcache0, 200, 30), call(bcache0, 100, 20),
		submit(fio, bcache0, 150, 25), // also seen by the tracepoints: not counted again
		submit(fio, md0, 400, 12),     // md0 has no direct calls: its stalls count
		submit(fio, loop1, 500, 9),    // stacked on nothing
	)
	tl.Holders = []event.Holder{{Upper: "bcache0", Lower: "loop0"}, {Upper: "md0", Lower: "loop0"}, {Upper: "bcache0", Lower: "loop1"}}
	tl.Device(loop0)
	run := Build(tl, Options{})
	got := run.Find("loop0").UpperStalls
	var desc []string
	for _, s := range got {
		desc = append(desc, fmt.Sprintf("%s %s %v+%v", s.Device, s.Kind, s.Start, s.Duration()))
	}
	want := []string{"bcache0 submit-call 100ms+20ms", "bcache0 submit-call 200ms+30ms", "md0 submit 400ms+12ms"}
	if !slices.Equal(desc, want) {
		t.Errorf("loop0's upper stalls %q, want %q", desc, want)
	}
	if n := run.Find("loop1").UpperStalls.Count(); n != 2 {
		t.Errorf("loop1 (under bcache0) has %d upper stalls, want bcache0's 2 calls", n)
	}
	if n := run.Find("bcache0").UpperStalls.Count(); n != 0 {
		t.Errorf("bcache0, under nothing, has %d upper stalls", n)
	}
}
