package diagnose

import (
	"reflect"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Past its memory bound the collector drops events and counts them as lost,
// per probe.
func TestCollectorBound(t *testing.T) {
	tl := &timeline.Timeline{}
	u := event.Uevent{Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block", DevName: "loop0"}
	per := timeline.StreamOf(u).Bytes(u)
	// The first uevent also pays for the strings the others share.
	var one timeline.Bound
	one.Admit(&timeline.Timeline{}, u)
	c := newCollector(tl, 10*per+one.Bytes()-per)
	for i := range 25 {
		u.Seqnum = uint64(i)
		c.Event(u)
	}
	c.Event(event.Exec{Filename: "/bin/true"})
	if len(tl.Uevents) != 10 || len(tl.Execs) != 0 {
		t.Fatalf("kept %d uevents and %d execs, want 10 and 0", len(tl.Uevents), len(tl.Execs))
	}
	want := map[string]uint64{"uevent": 15, "exec": 1}
	for _, l := range tl.Losses {
		if l.What != timelineFull || want[l.Probe] != l.Count {
			t.Errorf("loss %+v", l)
		}
		delete(want, l.Probe)
	}
	if len(want) > 0 || tl.LostEvents() != 16 {
		t.Errorf("losses %+v", tl.Losses)
	}
	if ps, lost := c.progress([]string{"exec", "uevent"}); !reflect.DeepEqual(ps, []ProbeProgress{{"exec", 0, 1}, {"uevent", 10, 15}}) || lost != 16 {
		t.Errorf("progress %+v, %d lost", ps, lost)
	}
}

// Progress counts events by the probe that delivers them, the direct
// probes' own included.
func TestCollectorCountsPerProbe(t *testing.T) {
	c := newCollector(&timeline.Timeline{}, 0)
	for _, e := range []event.Event{
		event.SlowSubmit{}, event.SlowSubmit{}, event.OffCPU{}, event.Exec{}, event.Exit{}, event.Uevent{},
		event.SysfsWrite{}, event.QueueEnter{}, event.QueueEnter{}, event.Freeze{}, event.SubmitCall{},
	} {
		c.Event(e)
	}
	c.Loss(event.Loss{Probe: "offcpu", What: "ring buffer full", Count: 4})
	names := []string{"exec", "freeze", "offcpu", "queueenter", "submit", "submitfn", "sysfs", "uevent"}
	want := []ProbeProgress{{"exec", 2, 0}, {"freeze", 1, 0}, {"offcpu", 1, 4}, {"queueenter", 2, 0}, {"submit", 2, 0}, {"submitfn", 1, 0}, {"sysfs", 1, 0}, {"uevent", 1, 0}}
	if got, lost := c.progress(names); !reflect.DeepEqual(got, want) || lost != 4 {
		t.Errorf("progress %+v (%d lost)\nwant     %+v (4 lost)", got, lost, want)
	}
}
