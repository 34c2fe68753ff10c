package report

import (
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/trouble"
)

// The coverage section of an armed-mode run: the intervals in seconds
// from the start, the disarmed rest, each probe gated or not; the text
// says plainly how much was disarmed and what the gated probes missed.
func TestCoverageOf(t *testing.T) {
	const s = 1_000_000_000
	for _, tc := range []struct {
		name  string
		cov   *trouble.Coverage
		armed []CoverageInterval
		text  []string
	}{
		{"default mode", nil, nil, nil},
		{"never armed", &trouble.Coverage{Mode: trouble.ModeAuto, Start: 0, End: 10 * s, Probes: []string{"syscall", "submit"}, Gated: []string{"syscall"}},
			[]CoverageInterval{}, []string{"armed mode auto: DISARMED ALL THE RUN (10s)", "not seen while disarmed, syscall: storage system calls"}},
		{"partly", &trouble.Coverage{Mode: trouble.ModeAuto, Start: 0, End: 10 * s, Probes: []string{"offcpu", "submit"}, Gated: []string{"offcpu"},
			Armed: []trouble.Span{{From: 2 * s, To: 6 * s, By: trouble.PSIIO}}},
			[]CoverageInterval{{FromSeconds: 2, ToSeconds: 6, By: "psi_io"}}, []string{"PARTLY DISARMED: armed 4.0s of 10s (1 interval, first at 2.0s by psi_io), disarmed 6.0s", "not seen while disarmed, offcpu: off-CPU waits"}},
		{"armed all along", &trouble.Coverage{Mode: trouble.ModeAuto, Start: 0, End: 10 * s, Probes: []string{"syscall"}, Gated: []string{"syscall"},
			Armed: []trouble.Span{{From: 0, To: 10 * s, By: trouble.DiskBusy}}},
			[]CoverageInterval{{FromSeconds: 0, ToSeconds: 10, By: "disk_busy"}}, []string{"armed mode auto: armed all the run"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := coverageOf(&timeline.Timeline{Start: 0, End: 10 * s, Coverage: tc.cov})
			if tc.cov == nil {
				if c != nil {
					t.Fatalf("coverage %+v in the default mode", c)
				}
				return
			}
			if len(c.Armed) != len(tc.armed) {
				t.Fatalf("armed %+v, want %+v", c.Armed, tc.armed)
			}
			for i := range c.Armed {
				if c.Armed[i] != tc.armed[i] {
					t.Errorf("armed[%d] %+v, want %+v", i, c.Armed[i], tc.armed[i])
				}
			}
			if c.ArmedSeconds+c.DisarmedSeconds != 10 {
				t.Errorf("armed %v + disarmed %v s, want the run's 10", c.ArmedSeconds, c.DisarmedSeconds)
			}
			for _, p := range c.Probes {
				if want := p.Probe != "submit"; p.Gated != want || (p.NotSeenOff != "") != want {
					t.Errorf("probe %+v: gated want %v", p, want)
				}
			}
			text := strings.Join(coverageLines(c), "\n")
			for _, w := range tc.text {
				if !strings.Contains(text, w) {
					t.Errorf("text %q does not say %q", text, w)
				}
			}
			if c.DisarmedSeconds == 0 && strings.Contains(text, "not seen") {
				t.Errorf("armed all the run, but the text says something was not seen: %q", text)
			}
		})
	}
}
