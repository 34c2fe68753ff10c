package probes

import (
	"slices"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Every probe of timeline.Sources has its code here and every probe here
// is in timeline.Sources; each declares its mechanisms and documentation.
func TestRegistryMatchesSources(t *testing.T) {
	names := timeline.ProbeNames()
	for _, n := range names {
		if _, ok := registry[n]; !ok {
			t.Errorf("timeline.Sources lists probe %q, but no file of package probes registers it", n)
		}
	}
	for n := range registry {
		if !slices.Contains(names, n) {
			t.Errorf("probe %q is registered but not in timeline.Sources (which gives its order and event kinds)", n)
		}
	}
	if got := len(All()); got != len(names) {
		t.Errorf("All() has %d probes, timeline.Sources %d", got, len(names))
	}
	for _, p := range All() {
		d := p.Decl()
		if len(d.Mechanisms) == 0 || d.Describe == "" || d.Attach == "" || d.Records == "" {
			t.Errorf("probe %s: declaration incomplete: %+v", d.Name, d)
		}
		for _, r := range d.Mechanisms {
			if r.InferredBy != "" && (!slices.Contains(names, r.InferredBy) || r.InferredBy == d.Name) {
				t.Errorf("probe %s: rung %s inferred by %q, not another probe", d.Name, r.Mech, r.InferredBy)
			}
		}
	}
}

// A forceable probe climbs exactly the rungs it declares, in their order;
// only those are forceable.
func TestLaddersMatchDeclarations(t *testing.T) {
	for _, p := range All() {
		d := p.Decl()
		l, isLadder := p.(ladder)
		if isLadder != d.Forceable {
			t.Errorf("probe %s: Forceable %v, but climbs a ladder: %v", d.Name, d.Forceable, isLadder)
			continue
		}
		if !isLadder {
			continue
		}
		var got []event.Mechanism
		for _, r := range l.rungs(Config{}, nil, nil) {
			got = append(got, r.mech)
		}
		if !slices.Equal(got, d.Mechs()) {
			t.Errorf("probe %s: rungs %v, declared %v", d.Name, got, d.Mechs())
		}
	}
}
