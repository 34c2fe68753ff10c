package main

import (
	"strings"
	"testing"
)

// The rss section's peak is a row of the targets table, met below
// rssTarget only, and its own section says what was run.
func TestRenderRSS(t *testing.T) {
	for _, tt := range []struct {
		name string
		peak float64
		want []string
	}{
		{"met", 87.4, []string{"| peak RSS of a 1m0s run at full load | 87 MiB | < 100 MiB | met |"}},
		{"missed", 131, []string{"| peak RSS of a 1m0s run at full load | 131 MiB | < 100 MiB | **missed** |"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := &Results{RSS: &RSSResult{
				Seconds: 60, Fio: fioConfig{Engine: "libaio", Depth: 32, Jobs: 2}, IOPS: 120000,
				RSSMiB:          []RSSSample{{At: 0.5, MiB: 40}, {At: 30, MiB: 70}, {At: 61, MiB: tt.peak}},
				ObservedPeakMiB: 72.5, PeakRSSMiB: tt.peak, CPUSeconds: 9, AnalysisSeconds: 1.2, LostEvents: 3,
			}}
			got := renderMarkdown(r)
			for _, w := range append(tt.want,
				"### 7. Memory of a 1m0s diagnosis at full load",
				"`whyslow diagnose storage --duration 1m0s`",
				"fio --rw=randwrite --bs=4k --direct=1 --ioengine=libaio --iodepth=32 --numjobs=2",
				"| peak RSS while observing | 72.5 MiB |",
				"| CPU time | 9.0 s (15% of one CPU) |",
				"| lost_events in the JSON report | 3 |",
			) {
				if !strings.Contains(got, w) {
					t.Errorf("rendering lacks %q:\n%s", w, got)
				}
			}
		})
	}
	if got := renderMarkdown(&Results{}); strings.Contains(got, "peak RSS of a") || strings.Contains(got, "### 7.") {
		t.Errorf("a run without the rss section renders it:\n%s", got)
	}
}
