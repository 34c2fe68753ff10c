package report

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
)

func TestTroubleSection(t *testing.T) {
	const start = event.Mono(100 * time.Second)
	at := func(s float64) event.Mono { return start + event.Mono(s*float64(time.Second)) }
	armedOnce := &trouble.Summary{Start: start, End: at(10), Hold: 5 * time.Second,
		Sources:   []trouble.SourceStatus{{Source: trouble.PSIIO, On: true}, {Source: trouble.PSIMemory, Reason: "no PSI"}},
		Signals:   []trouble.Signal{{Source: trouble.PSIIO, At: at(2), Detail: "io some stall"}},
		Counts:    map[trouble.Source]uint64{trouble.PSIIO: 1},
		First:     map[trouble.Source]event.Mono{trouble.PSIIO: at(2)},
		Intervals: []trouble.Interval{{From: at(2), To: at(7), By: trouble.PSIIO, Signals: 1}},
		PSI:       trouble.PSITotals{Known: true, IOSome: 1500 * time.Millisecond}}
	tests := []struct {
		name      string
		tl        *timeline.Timeline
		want      *Trouble // the fields checked: nil for no section
		wantLine  string
		wantFirst float64
	}{
		{name: "a trace: no section", tl: &timeline.Timeline{Start: start, End: at(10)}},
		{name: "armed once, one slow call before it and one in it",
			tl: &timeline.Timeline{Start: start, End: at(10), Trouble: armedOnce,
				Syscalls:    []event.Syscall{{Start: at(0.5), Duration: time.Second}, {Start: at(3), Duration: time.Second}},
				OffCPU:      []event.OffCPU{{Start: at(1.5), Duration: time.Second}}, // runs into the interval: found in flight
				SlowSubmits: []event.SlowSubmit{{Start: at(0.2), Latency: time.Millisecond}}},
			want:      &Trouble{Mode: "shadow", SignalsTotal: 1, ArmedSeconds: 5, SlowSpans: 3, SlowSpansUnarmed: 1, PSI: &PSIStall{IOSomeMs: 1500}},
			wantLine:  "trouble     shadow armed mode: armed 1 interval, 5.0s in all, first at 2.0s by psi_io; PSI stall io 1.5s, memory 0; slow calls and blocked spans outside armed time: 1 of 3; off: psi_memory",
			wantFirst: 0.2},
		{name: "never armed", tl: &timeline.Timeline{Start: start, End: at(10), Trouble: &trouble.Summary{Start: start, End: at(10), Hold: 5 * time.Second, Counts: map[trouble.Source]uint64{}}},
			want:     &Trouble{Mode: "shadow"},
			wantLine: "trouble     shadow armed mode: never armed (0 signals)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := Build(tt.tl, nil, nil, Meta{})
			var b bytes.Buffer
			if err := Text(&b, r, TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if tt.want == nil {
				if r.Trouble != nil || strings.Contains(b.String(), "trouble") {
					t.Fatalf("a trouble section for a timeline without a watcher: %+v", r.Trouble)
				}
				return
			}
			g := r.Trouble
			if g == nil {
				t.Fatal("no trouble section")
			}
			if g.Mode != tt.want.Mode || g.SignalsTotal != tt.want.SignalsTotal || g.ArmedSeconds != tt.want.ArmedSeconds ||
				g.SlowSpans != tt.want.SlowSpans || g.SlowSpansUnarmed != tt.want.SlowSpansUnarmed {
				t.Errorf("got %+v, want %+v", g, tt.want)
			}
			if (g.PSI == nil) != (tt.want.PSI == nil) || g.PSI != nil && *g.PSI != *tt.want.PSI {
				t.Errorf("psi %+v, want %+v", g.PSI, tt.want.PSI)
			}
			if tt.want.SignalsTotal > 0 && g.FirstSignalSeconds["psi_io"] != 2 {
				t.Errorf("first_signal_seconds %v, want psi_io at 2", g.FirstSignalSeconds)
			}
			if tt.wantFirst > 0 && (g.FirstSlowSeconds == nil || *g.FirstSlowSeconds != tt.wantFirst) {
				t.Errorf("first slow %v, want %v", g.FirstSlowSeconds, tt.wantFirst)
			}
			if !strings.Contains(b.String(), "  "+tt.wantLine+"\n") {
				t.Errorf("text report has no line %q:\n%s", tt.wantLine, b.String())
			}
		})
	}
}
