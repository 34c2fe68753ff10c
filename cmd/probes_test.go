package cmd

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/probes"
)

// TestProbeTable: `whyslow probes` prints a table at most probeTableWidth
// columns wide, whatever the descriptions, reasons and skipped mechanisms,
// and loses no word of them: the last column's wrapped lines, joined, give
// each probe's text back.
func TestProbeTable(t *testing.T) {
	long := strings.Repeat("a reason that goes on and on, ", 8) + "/sys/kernel/tracing/events/block/block_rq_issue/format"
	for _, tc := range []struct {
		name   string
		status func(p probes.Probe) event.ProbeStatus
	}{
		{"all ok", func(p probes.Probe) event.ProbeStatus {
			return event.ProbeStatus{Name: p.Decl().Name, Mechanism: event.MechTPBTF, Status: event.StatusOK}
		}},
		{"skipped mechanisms", func(p probes.Probe) event.ProbeStatus {
			return event.ProbeStatus{Name: p.Decl().Name, Mechanism: event.MechTPBTF, Status: event.StatusOK,
				Skipped: []event.Skip{{Mechanism: event.MechFentry, Reason: "load denied (EPERM)"},
					{Mechanism: event.MechKprobe, Reason: "CONFIG_KPROBES not set (no kprobe PMU)"}}}
		}},
		{"long reasons", func(p probes.Probe) event.ProbeStatus {
			return event.ProbeStatus{Name: p.Decl().Name, Status: event.StatusUnavailable, Reason: long,
				Skipped: []event.Skip{{Mechanism: event.MechKprobe, Reason: long}}}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var sts []event.ProbeStatus
			want := map[string]string{}
			for _, p := range probes.All() {
				st := tc.status(p)
				sts = append(sts, st)
				why := p.Decl().Describe
				if st.Reason != "" {
					why = st.Reason
				}
				for _, s := range st.Skipped {
					why += " " + string(s.Mechanism) + " skipped: " + s.Reason
				}
				want[st.Name] = why
			}
			var b bytes.Buffer
			if err := writeProbeTable(&b, sts); err != nil {
				t.Fatal(err)
			}
			for _, l := range strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n") {
				if n := utf8.RuneCountInString(l); n > probeTableWidth {
					t.Errorf("%d columns, want at most %d: %q", n, probeTableWidth, l)
				}
			}
			got := map[string]string{}
			cur := ""
			for _, l := range strings.Split(b.String(), "\n") {
				cells := strings.Split(l, "│")
				if len(cells) != 6 || strings.Contains(cells[1], "PROBE") {
					continue
				}
				if name := strings.TrimSpace(cells[1]); name != "" {
					cur = name
				}
				got[cur] = strings.TrimSpace(got[cur] + " " + strings.TrimSpace(cells[4]))
			}
			for name, w := range want {
				if got[name] != w {
					t.Errorf("%s: the table says\n%q\nwant\n%q\n%s", name, got[name], w, b.String())
				}
			}
		})
	}
}

func TestWrapLines(t *testing.T) {
	for _, tc := range []struct {
		in    string
		width int
		want  string
	}{
		{"short", 10, "short"},
		{"one two three four", 9, "one two\n  three\n  four"},
		{"a\nb c d", 3, "a\nb c\n  d"},
		{"averyveryverylongword x", 5, "averyveryverylongword\n  x"},
		{"", 5, ""},
	} {
		if got := wrapLines(tc.in, tc.width); got != tc.want {
			t.Errorf("wrapLines(%q, %d) = %q, want %q", tc.in, tc.width, got, tc.want)
		}
	}
}
