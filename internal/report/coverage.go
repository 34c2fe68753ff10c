package report

import (
	"fmt"
	"slices"
	"strings"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
)

// Coverage says, for a run in an armed mode (--armed-mode, experimental),
// when the programs on the hot hooks (sys_enter, sys_exit, sched_switch,
// sched_waking) were attached, and which probes that gated: while they
// were off, what those probes see was not seen. Absent in the default
// mode, where every program is attached all the run. Times are seconds
// from the start of the observation window.
type Coverage struct {
	// ArmedMode is "auto" (armed on trouble signals) or "test-disarmed"
	// (never armed, for measurements).
	ArmedMode string `json:"armed_mode"`
	// Armed are the intervals the hot-hook programs were attached ([]
	// when never), ArmedSeconds their sum, DisarmedSeconds the rest of
	// the run.
	Armed           []CoverageInterval `json:"armed"`
	ArmedSeconds    float64            `json:"armed_seconds"`
	DisarmedSeconds float64            `json:"disarmed_seconds"`
	// Probes are the run's probes, each with whether it was gated.
	Probes []CoverageProbe `json:"probes"`
	// Errors are armings or disarmings that failed (the state stayed as
	// it was); absent when none did.
	Errors []string `json:"errors,omitempty"`
}

// CoverageInterval is a stretch of the run the hot-hook programs were
// attached.
type CoverageInterval struct {
	FromSeconds float64 `json:"from_seconds"`
	ToSeconds   float64 `json:"to_seconds"`
	// By is the trouble source whose signal armed it.
	By string `json:"by,omitempty"`
}

// CoverageProbe is one probe of the run: whether an armed mode gated it,
// and if so what it did not see while disarmed.
type CoverageProbe struct {
	Probe      string `json:"probe"`
	Gated      bool   `json:"gated"`
	NotSeenOff string `json:"not_seen_while_disarmed,omitempty"`
}

// notSeenOff says what a gated probe does not see while disarmed.
var notSeenOff = map[string]string{
	event.ProbeSyscall: "storage system calls: their latency, blocked stages and memory stalls (affected processes); calls in progress at the arming are counted and reported unfinished from it",
	event.ProbeOffCPU:  "off-CPU waits (tag, queue-enter, freeze and other D sleeps), their stacks and wakers; sleeps in progress at the arming are seeded from it",
	event.ProbeSysfs:   "writes to block queue attributes (who froze a queue through sysfs)",
	event.ProbeExec:    "failed execs",
}

// coverageOf builds the coverage section; nil in the default mode.
func coverageOf(tl *timeline.Timeline) *Coverage {
	c := tl.Coverage
	if c == nil {
		return nil
	}
	at := func(m event.Mono) float64 { return seconds(m.Sub(tl.Start)) }
	out := &Coverage{ArmedMode: c.Mode, Armed: []CoverageInterval{}, Probes: []CoverageProbe{}, Errors: c.Errors}
	for _, s := range c.Armed {
		out.Armed = append(out.Armed, CoverageInterval{FromSeconds: at(s.From), ToSeconds: at(s.To), By: string(s.By)})
	}
	out.ArmedSeconds = seconds(c.ArmedTime())
	out.DisarmedSeconds = seconds(c.DisarmedTime())
	names := slices.Clone(c.Probes)
	slices.Sort(names)
	for _, p := range names {
		cp := CoverageProbe{Probe: p, Gated: slices.Contains(c.Gated, p)}
		if cp.Gated {
			cp.NotSeenOff = notSeenOff[p]
			if cp.NotSeenOff == "" {
				cp.NotSeenOff = "what its programs on the hot hooks see"
			}
		}
		out.Probes = append(out.Probes, cp)
	}
	return out
}

// coverageLines is the text report's account of the coverage section:
// a line saying how much of the run was disarmed, then, when it was,
// what the gated probes did not see meanwhile.
func coverageLines(c *Coverage) []string {
	var gated []CoverageProbe
	for _, p := range c.Probes {
		if p.Gated {
			gated = append(gated, p)
		}
	}
	var b strings.Builder
	total := c.ArmedSeconds + c.DisarmedSeconds
	switch {
	case c.DisarmedSeconds == 0:
		fmt.Fprintf(&b, "armed mode %s: armed all the run", c.ArmedMode)
	case len(c.Armed) == 0:
		fmt.Fprintf(&b, "armed mode %s: DISARMED ALL THE RUN (%s)", c.ArmedMode, fmtSeconds(total))
	default:
		fmt.Fprintf(&b, "armed mode %s: PARTLY DISARMED: armed %s of %s (%s, first at %s by %s), disarmed %s",
			c.ArmedMode, fmtSeconds(c.ArmedSeconds), fmtSeconds(total), countOf(len(c.Armed), "interval", "intervals"),
			fmtSeconds(c.Armed[0].FromSeconds), c.Armed[0].By, fmtSeconds(c.DisarmedSeconds))
	}
	if len(c.Errors) > 0 {
		fmt.Fprintf(&b, "; %s failed: %s", countOf(len(c.Errors), "arming or disarming", "armings or disarmings"), c.Errors[0])
	}
	lines := []string{b.String()}
	if c.DisarmedSeconds > 0 {
		for _, p := range gated {
			lines = append(lines, fmt.Sprintf("not seen while disarmed, %s: %s", p.Probe, p.NotSeenOff))
		}
	}
	return lines
}
