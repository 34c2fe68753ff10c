package main

import (
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/event"
)

// The bench says which probes lost how many events of which kind: per
// probe, the most first, each cause shortened to its kind, the lines
// that count other probes' events marked; a run's lines summed over the
// runs of a section.
func TestLossesText(t *testing.T) {
	const (
		ring   = "ring buffer full"
		skips  = "runs of sub_rq_complete skipped by the kernel: another BPF program was running on its CPU (recursion_misses)"
		missed = "requests whose completion never reached the probe (issued again while their earlier issue still waited): their service time not counted"
	)
	for _, tt := range []struct {
		name string
		runs [][]LossLine
		want string
	}{
		{"none", nil, "none"},
		{"one cause", [][]LossLine{{{Probe: "submit", What: ring, Count: 7}}}, "submit 7: 7 ring buffer full"},
		{"probes by total, causes by count, summed over runs",
			[][]LossLine{
				{{Probe: "offcpu", What: ring, Count: 5}, {Probe: "submit", What: skips, Count: 3}},
				{{Probe: "submit", What: ring, Count: 4}, {Probe: "submit", What: skips, Count: 3}, {Probe: "offcpu", What: "stack map full", Count: 1}},
			},
			"submit 10: 6 runs of sub_rq_complete skipped by the kernel, 4 ring buffer full; offcpu 6: 5 ring buffer full, 1 stack map full"},
		{"an overlap marked",
			[][]LossLine{{{Probe: "service", What: missed, Count: 480, Overlap: "block completions missed"}}},
			"service 480: 480 requests whose completion never reached the probe † († block completions missed: the same events, as each of these probes saw them, counted once in lost_events)"},
		{"two probes of one class, and another class",
			[][]LossLine{{{Probe: "service", What: missed, Count: 480, Overlap: "block completions missed"},
				{Probe: "submit", What: "bios whose end the accounting missed (no end)", Count: 500, Overlap: "block completions missed"},
				{Probe: "submit", What: ring, Count: 1},
				{Probe: "x", What: "y", Count: 1, Overlap: "z"}}},
			"submit 501: 500 bios whose end the accounting missed †, 1 ring buffer full; service 480: 480 requests whose completion never reached the probe †; x 1: 1 y †† († block completions missed: the same events, as each of these probes saw them, counted once in lost_events) (†† z: the same events, as each of these probes saw them, counted once in lost_events)"},
		{"one probe's two lines of the same completions count them once in its total",
			[][]LossLine{{{Probe: event.ProbeService, What: event.DiskUnseenPrefix + "loop0 (/sys/block/loop0/stat)", Count: 295, Overlap: event.OverlapMissedCompletions},
				{Probe: event.ProbeService, What: event.ServiceMissedWhat, Count: 295, Overlap: event.OverlapMissedCompletions},
				{Probe: event.ProbeService, What: ring, Count: 2}}},
			"service 297: 295 " + lossKind(event.DiskUnseenPrefix+"loop0 (/sys/block/loop0/stat)") + " †, 295 requests whose completion never reached the probe †, 2 ring buffer full († block completions missed: the same events, as each of these probes saw them, counted once in lost_events)"},
		{"a pipe cannot end a table cell", [][]LossLine{{{Probe: "uevent", What: "a|b", Count: 1}}}, `uevent 1: 1 a\|b`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var ls []LossLine
			for _, run := range tt.runs {
				ls = addLosses(ls, &report{Losses: run})
			}
			if got := lossesText(ls); got != tt.want {
				t.Errorf("lossesText =\n%s\nwant\n%s", got, tt.want)
			}
		})
	}
}

// Each section that ran whyslow shows its losses by probe; results kept
// before the bench recorded them render as they did.
func TestRenderLosses(t *testing.T) {
	ls := []LossLine{{Probe: "submit", What: "ring buffer full", Count: 10414}}
	zero, lost := uint64(0), uint64(10414)
	for _, tt := range []struct {
		name    string
		r       *Results
		want    []string
		notWant []string
	}{
		{"rss", &Results{RSS: &RSSResult{Seconds: 60, LostEvents: 10414, Losses: ls}},
			[]string{"| losses by probe and kind | submit 10414: 10414 ring buffer full |"}, nil},
		{"rss, old results", &Results{RSS: &RSSResult{Seconds: 60, LostEvents: 10414}},
			nil, []string{"losses by probe and kind"}},
		{"cost", &Results{Cost: &CostResult{Rounds: 3, LostEvents: &lost, Losses: ls}},
			[]string{"whyslow lost 10414 events over these 3 runs: submit 10414: 10414 ring buffer full."}, nil},
		{"cost, none lost", &Results{Cost: &CostResult{Rounds: 3, LostEvents: &zero}},
			[]string{"whyslow lost 0 events over these 3 runs."}, nil},
		{"cost, old results", &Results{Cost: &CostResult{Rounds: 3}}, nil, []string{"whyslow lost"}},
		{"io", &Results{IO: &IOResult{Rounds: 2, Configs: []IOConfigResult{{Name: "whyslow", Lost: 10414, Losses: ls}}}},
			[]string{"whyslow lost 10414 events over its 2 runs: submit 10414: 10414 ring buffer full."}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := renderMarkdown(tt.r)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("rendering lacks %q:\n%s", w, got)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("rendering has %q:\n%s", w, got)
				}
			}
		})
	}
}
