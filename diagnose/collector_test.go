package diagnose

import (
	"testing"

	"github.com/whyslow/whyslow/event"
	"github.com/whyslow/whyslow/timeline"
)

// Past its memory bound the collector drops events and counts them as lost,
// per probe.
func TestCollectorBound(t *testing.T) {
	tl := &timeline.Timeline{}
	u := event.Uevent{Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block", DevName: "loop0"}
	per := eventBytes(u)
	c := newCollector(tl, 10*per)
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
	if c.Counts()["uevents"] != 10 {
		t.Errorf("counts %v", c.Counts())
	}
}

func TestEventBytes(t *testing.T) {
	small := eventBytes(event.Exit{})
	big := eventBytes(event.OffCPU{UserStack: make([]event.Frame, 20)})
	if small <= 0 || big <= small {
		t.Errorf("exit %d bytes, off-CPU span with 20 user frames %d", small, big)
	}
}
