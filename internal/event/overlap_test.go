package event

import (
	"math"
	"testing"
)

// One missed block completion is a loss line of the service, the submit
// and the devfault probes: the total counts it once, at the largest
// probe's count, while losses of their own add up.
func TestDistinct(t *testing.T) {
	svc := func(n uint64) Loss { return Loss{Probe: ProbeService, What: ServiceMissedWhat, Count: n} }
	sub := func(what string, n uint64) Loss { return Loss{Probe: ProbeSubmit, What: what, Count: n} }
	dev := func(n uint64) Loss { return Loss{Probe: ProbeDevFault, What: DevFaultUnseenWhat, Count: n} }
	ring := func(probe string, n uint64) Loss { return Loss{Probe: probe, What: "ring buffer full", Count: n} }
	for _, tt := range []struct {
		name   string
		losses []Loss
		want   uint64
	}{
		{"none", nil, 0},
		{"own losses add up", []Loss{ring(ProbeService, 3), ring(ProbeSubmit, 4), {Probe: ProbeSubmit, What: "map full", Count: 5}}, 12},
		{"service alone", []Loss{svc(480)}, 480},
		{"service and submit count the same completions: the larger", []Loss{svc(480), sub(SubmitMissedWhat, 600)}, 600},
		{"devfault echoes the larger: counted once", []Loss{svc(480), sub(SubmitMissedWhat, 300), dev(480)}, 480},
		{"submit's causes in the class add up before the largest is taken",
			[]Loss{svc(10), sub(SubmitMissedWhat, 4), sub(SubmitEndsUnseenWhat, 5), sub(SubmitStaleWhat, 6), dev(15)}, 15},
		{"a class and own losses", []Loss{svc(480), dev(480), ring(ProbeService, 7), ring(ProbeDevFault, 2)}, 489},
		{"a submit cause outside the class adds", []Loss{svc(10), sub(SubmitMissedWhat, 10), sub("I/O accounting unreadable", 1)}, 11},
		{"the same cause under another probe is its own", []Loss{svc(10), {Probe: ProbeSubmit, What: ServiceMissedWhat, Count: 10}}, 20},
		// The service probe's per-disk lines count the same completions
		// as its missed line: summed apart, the larger taken.
		{"per-disk shortfalls beside service's missed: the larger",
			[]Loss{svc(5), {Probe: ProbeService, What: DiskUnseenPrefix + "loop0 ...", Count: 3}, {Probe: ProbeService, What: DiskUnseenPrefix + "vda ...", Count: 4}, sub(SubmitMissedWhat, 6), dev(7)}, 7},
		{"per-disk shortfall below service's missed", []Loss{svc(9), {Probe: ProbeService, What: DiskUnseenPrefix + "vda ...", Count: 4}}, 9},
		{"saturates in a class", []Loss{sub(SubmitMissedWhat, math.MaxUint64), sub(SubmitStaleWhat, 1), svc(1)}, math.MaxUint64},
		{"saturates across", []Loss{ring(ProbeService, math.MaxUint64), svc(1)}, math.MaxUint64},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Distinct(tt.losses); got != tt.want {
				t.Errorf("Distinct(%v) = %d, want %d", tt.losses, got, tt.want)
			}
		})
	}
}

// Every cause the class names is in it, under its probe only.
func TestOverlap(t *testing.T) {
	for _, tt := range []struct {
		l    Loss
		want string
	}{
		{Loss{Probe: ProbeService, What: ServiceMissedWhat}, OverlapMissedCompletions},
		{Loss{Probe: ProbeService, What: DiskUnseenPrefix + "vda (/sys/block/vda/stat) ..."}, OverlapMissedCompletions},
		{Loss{Probe: ProbeSubmit, What: DiskUnseenPrefix + "vda ..."}, ""},
		{Loss{Probe: ProbeSubmit, What: SubmitMissedWhat}, OverlapMissedCompletions},
		{Loss{Probe: ProbeSubmit, What: SubmitEndsUnseenWhat}, OverlapMissedCompletions},
		{Loss{Probe: ProbeSubmit, What: SubmitStaleWhat}, OverlapMissedCompletions},
		{Loss{Probe: ProbeDevFault, What: DevFaultUnseenWhat}, OverlapMissedCompletions},
		{Loss{Probe: ProbeDevFault, What: ServiceMissedWhat}, ""},
		{Loss{Probe: ProbeService, What: "ring buffer full"}, ""},
	} {
		if got := tt.l.Overlap(); got != tt.want {
			t.Errorf("%s/%.30s: Overlap() = %q, want %q", tt.l.Probe, tt.l.What, got, tt.want)
		}
	}
}
