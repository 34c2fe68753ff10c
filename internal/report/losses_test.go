package report

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// The report's total counts each lost event once: the service, submit and
// devfault lines of one set of missed block completions count once, at
// the largest; every probe's line stays, and the text says which lines
// count the same events.
func TestLostEventsCountedOnce(t *testing.T) {
	svc := event.Loss{Probe: event.ProbeService, What: event.ServiceMissedWhat, Count: 480}
	sub := event.Loss{Probe: event.ProbeSubmit, What: event.SubmitMissedWhat, Count: 300}
	dev := event.Loss{Probe: event.ProbeDevFault, What: event.DevFaultUnseenWhat, Count: 480}
	ring := event.Loss{Probe: event.ProbeSubmit, What: "ring buffer full", Count: 10}
	for _, tt := range []struct {
		name    string
		losses  []event.Loss
		want    uint64
		overlap int // lines marked as counting others' events
	}{
		{"none", nil, 0, 0},
		{"own losses", []event.Loss{ring}, 10, 0},
		{"service, submit and devfault: the largest once", []event.Loss{svc, sub, dev}, 480, 3},
		{"with an own loss", []event.Loss{svc, sub, dev, ring}, 490, 3},
		{"service alone", []event.Loss{svc}, 480, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tl := &timeline.Timeline{End: event.Mono(time.Minute)}
			for _, l := range tt.losses {
				tl.AddLoss(l)
			}
			r := Build(tl, nil, nil, Meta{Duration: time.Minute})
			if r.LostEvents != tt.want {
				t.Errorf("lost_events = %d, want %d", r.LostEvents, tt.want)
			}
			if len(r.Losses) != len(tt.losses) {
				t.Errorf("%d loss lines, want one per probe and cause (%d)", len(r.Losses), len(tt.losses))
			}
			marked := 0
			for _, l := range r.Losses {
				if l.Overlap != "" {
					marked++
				}
			}
			if marked != tt.overlap {
				t.Errorf("%d lines in an overlap class, want %d: %+v", marked, tt.overlap, r.Losses)
			}
			var b bytes.Buffer
			if err := Text(&b, r, TextOptions{}); err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(b.String(), "counted once in the total"); got != tt.overlap {
				t.Errorf("text marks %d lines as counted once, want %d:\n%s", got, tt.overlap, b.String())
			}
		})
	}
}
