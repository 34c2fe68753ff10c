package timeline

import (
	"math"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

func TestAddSortsEachStream(t *testing.T) {
	var tl Timeline
	tl.Add(event.Uevent{Time: 30, Action: "change"})
	tl.Add(event.Exec{Time: 20, Filename: "/bin/b"})
	tl.Add(event.Uevent{Time: 10, Action: "add"})
	tl.Add(event.Exec{Time: 5, Filename: "/bin/a"})
	tl.Sort()
	if len(tl.Uevents) != 2 || tl.Uevents[0].Action != "add" || tl.Uevents[1].Action != "change" {
		t.Fatalf("uevents not in time order: %+v", tl.Uevents)
	}
	if len(tl.Execs) != 2 || tl.Execs[0].Filename != "/bin/a" {
		t.Fatalf("execs not in time order: %+v", tl.Execs)
	}
}

func TestSortIsStableForEqualTimes(t *testing.T) {
	var tl Timeline
	for _, a := range []string{"first", "second", "third"} {
		tl.Add(event.Uevent{Time: 7, Action: a})
	}
	tl.Sort()
	for i, want := range []string{"first", "second", "third"} {
		if tl.Uevents[i].Action != want {
			t.Fatalf("uevent %d = %q, want %q", i, tl.Uevents[i].Action, want)
		}
	}
}

func TestWindow(t *testing.T) {
	s := []event.Uevent{{Time: 1}, {Time: 5}, {Time: 5}, {Time: 9}, {Time: 12}}
	tests := []struct {
		name     string
		from, to event.Mono
		want     int
	}{
		{"all", 0, 100, 5},
		{"half open at end", 5, 9, 2},
		{"empty before", -10, 0, 0},
		{"empty after", 13, 20, 0},
		{"inverted", 9, 5, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := len(Window(s, tt.from, tt.to)); got != tt.want {
				t.Fatalf("Window(%d,%d) has %d events, want %d", tt.from, tt.to, got, tt.want)
			}
		})
	}
}

func TestLossesAccumulatePerProbeAndCause(t *testing.T) {
	var tl Timeline
	tl.AddLoss(event.Loss{Probe: "offcpu", What: "ring buffer full", Count: 3})
	tl.AddLoss(event.Loss{Probe: "offcpu", What: "ring buffer full", Count: 2})
	tl.AddLoss(event.Loss{Probe: "exec", What: "ring buffer full", Count: 1})
	tl.AddLoss(event.Loss{Probe: "exec", What: "map full", Count: 0})
	if len(tl.Losses) != 2 || tl.LostEvents() != 6 {
		t.Fatalf("losses = %+v (total %d), want 2 entries totalling 6", tl.Losses, tl.LostEvents())
	}
}

func TestDeviceMergesByNumber(t *testing.T) {
	var tl Timeline
	tl.Device(event.Device{Major: 7, Minor: 0}).Submit.Add(100)
	tl.Device(event.Device{Major: 7, Minor: 0, Name: "loop0"}).Submit.Add(200)
	if len(tl.Devices) != 1 || tl.Devices[0].Dev.Name != "loop0" || tl.Devices[0].Submit.Count != 2 {
		t.Fatalf("devices = %+v", tl.Devices)
	}
}

// The direct measurements go to their own streams and are sorted by time.
func TestAddDirectEvents(t *testing.T) {
	var tl Timeline
	for _, e := range []event.Event{
		event.QueueEnter{Start: 30}, event.Freeze{Start: 20}, event.SubmitCall{Start: 10},
		event.QueueEnter{Start: 3}, event.Freeze{Start: 2}, event.SubmitCall{Start: 1},
	} {
		tl.Add(e)
	}
	tl.Sort()
	for _, tt := range []struct {
		name  string
		times []event.Mono
		want  []event.Mono
	}{
		{"queue enters", []event.Mono{tl.QueueEnters[0].Start, tl.QueueEnters[1].Start}, []event.Mono{3, 30}},
		{"freezes", []event.Mono{tl.Freezes[0].Start, tl.Freezes[1].Start}, []event.Mono{2, 20}},
		{"submit calls", []event.Mono{tl.SubmitCalls[0].Start, tl.SubmitCalls[1].Start}, []event.Mono{1, 10}},
	} {
		if tt.times[0] != tt.want[0] || tt.times[1] != tt.want[1] {
			t.Errorf("%s at %v, want %v", tt.name, tt.times, tt.want)
		}
	}
}

// Loss totals saturate: losses of 1 and 2^64-1 are not 0 lost events.
func TestLossesSaturate(t *testing.T) {
	tl := &Timeline{}
	tl.AddLoss(event.Loss{Probe: "offcpu", What: "ring buffer full", Count: 1})
	tl.AddLoss(event.Loss{Probe: "exec", What: "ring buffer full", Count: math.MaxUint64})
	if n := tl.LostEvents(); n != math.MaxUint64 {
		t.Errorf("LostEvents = %d, want %d", n, uint64(math.MaxUint64))
	}
	tl.AddLoss(event.Loss{Probe: "offcpu", What: "ring buffer full", Count: math.MaxUint64 - 1})
	if c := tl.Losses[0].Count; c != math.MaxUint64 {
		t.Errorf("a probe's count = %d, want %d", c, uint64(math.MaxUint64))
	}
	// Two loss records of a trace, read as they are.
	tl = &Timeline{Losses: []event.Loss{{Probe: "a", What: "x", Count: 1}, {Probe: "a", What: "x", Count: math.MaxUint64}}}
	if n := tl.LostEvents(); n != math.MaxUint64 {
		t.Errorf("LostEvents of two records = %d", n)
	}
}
