package synth

import (
	"reflect"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	"github.com/whyslow/whyslow/rules"
)

func TestCountAndMix(t *testing.T) {
	const n = 20000
	tl := Timeline(Options{Events: n})
	got := len(tl.SlowSubmits) + len(tl.OffCPU) + len(tl.Execs) + len(tl.Exits) + len(tl.Uevents) + len(tl.SysfsWrites)
	if got != n {
		t.Fatalf("%d events, want %d", got, n)
	}
	for name, c := range map[string]int{"slow submits": len(tl.SlowSubmits), "off-CPU spans": len(tl.OffCPU), "execs": len(tl.Execs),
		"exits": len(tl.Exits), "uevents": len(tl.Uevents), "sysfs writes": len(tl.SysfsWrites)} {
		if c < n/50 {
			t.Errorf("%d %s of %d events", c, name, n)
		}
	}
	if d := tl.Duration(); d != New(Options{Events: n}).Duration() || d <= 0 {
		t.Errorf("duration %v", d)
	}
	for i := 1; i < len(tl.OffCPU); i++ {
		if tl.OffCPU[i].Start < tl.OffCPU[i-1].Start {
			t.Fatal("not sorted")
		}
	}
}

func TestDeterministic(t *testing.T) {
	a := Timeline(Options{Events: 5000, Seed: 3})
	b := Timeline(Options{Events: 5000, Seed: 3})
	c := Timeline(Options{Events: 5000, Seed: 4})
	if !reflect.DeepEqual(a, b) {
		t.Error("the same seed gave different runs")
	}
	if reflect.DeepEqual(a.SlowSubmits, c.SlowSubmits) {
		t.Error("different seeds gave the same run")
	}
}

// The generated run holds the story, and the rules find it.
func TestRulesFindTheStory(t *testing.T) {
	tl := Timeline(Options{Events: 200000})
	run := facts.Build(tl, facts.Options{})
	set, err := rules.Default()
	if err != nil {
		t.Fatal(err)
	}
	findings, err := rules.Evaluate(set, run)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range findings {
		if f.Rule != "queue-freeze-stall" || f.Trigger == nil {
			continue
		}
		if f.Trigger.Filename != "/usr/sbin/arcconf" || f.Trigger.ParentComm != "raidmon" {
			t.Errorf("trigger %+v", f.Trigger)
		}
		var steps []string
		for _, s := range f.Steps {
			steps = append(steps, s.Rule)
		}
		if !reflect.DeepEqual(steps, []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}) {
			t.Errorf("steps %v", steps)
		}
		return
	}
	for _, f := range findings {
		t.Logf("%s %v %s", f.Rule, f.Devices, f.Title)
	}
	t.Fatal("no queue-freeze-stall finding with its trigger")
}

func TestStacksClassify(t *testing.T) {
	for _, tt := range []struct {
		stacks [][]event.Frame
		kind   string
	}{{queueEnterStacks, facts.KindQueueEnter}, {freezeStacks, facts.KindFreezeWait}, {tagStacks, facts.KindTagWait},
		{ioStacks, facts.KindIOWait}, {otherStacks, facts.KindOther}} {
		for _, s := range tt.stacks {
			if k := facts.Classify(s); k != tt.kind {
				t.Errorf("%v: %s, want %s", s[2], k, tt.kind)
			}
		}
	}
}
