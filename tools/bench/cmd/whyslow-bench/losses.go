package main

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/whyslow/whyslow/internal/event"
)

// LossLine is one line of the losses of whyslow's JSON report (summed over
// the runs of a section): a probe, a cause, how many events, and the
// report's overlap class when other probes' lines count the same events
// (the report's lost_events counts such a class once).
type LossLine struct {
	Probe   string `json:"probe"`
	What    string `json:"what"`
	Count   uint64 `json:"count"`
	Overlap string `json:"overlap,omitempty"`
}

// addLosses adds the report's losses to ls, a line per probe and cause.
func addLosses(ls []LossLine, rep *report) []LossLine {
next:
	for _, l := range rep.Losses {
		for i := range ls {
			if ls[i].Probe == l.Probe && ls[i].What == l.What {
				ls[i].Count += l.Count
				continue next
			}
		}
		ls = append(ls, l)
	}
	return ls
}

// lossKind is a cause shortened to its kind: what comes before its first
// explanation (" (" or ": "), "ring buffer full" whole.
func lossKind(what string) string {
	cut := len(what)
	for _, sep := range []string{" (", ": "} {
		if i := strings.Index(what, sep); i > 0 && i < cut {
			cut = i
		}
	}
	return what[:cut]
}

// lossesText says which probes lost how many events of which kind: per
// probe, the most first, its total (each event once) then its causes,
// the most first. The
// causes of an overlap class (the same events as other probes' causes)
// are marked with a dagger per class, which a note at the end names.
// "none" when nothing was lost.
func lossesText(ls []LossLine) string {
	if len(ls) == 0 {
		return "none"
	}
	type probe struct {
		name  string
		total uint64
		lines []LossLine
	}
	var ps []*probe
	byName := map[string]*probe{}
	for _, l := range ls {
		p := byName[l.Probe]
		if p == nil {
			p = &probe{name: l.Probe}
			byName[l.Probe] = p
			ps = append(ps, p)
		}
		p.lines = append(p.lines, l)
	}
	// A probe's total counts each of its events once: the service
	// probe's per-disk line and its missed-requests line count the same
	// completions (event.Distinct).
	for _, p := range ps {
		own := make([]event.Loss, len(p.lines))
		for i, l := range p.lines {
			own[i] = event.Loss{Probe: l.Probe, What: l.What, Count: l.Count}
		}
		p.total = event.Distinct(own)
	}
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].total != ps[j].total {
			return ps[i].total > ps[j].total
		}
		return ps[i].name < ps[j].name
	})
	var out, classes []string
	for _, p := range ps {
		sort.SliceStable(p.lines, func(i, j int) bool {
			a, b := p.lines[i], p.lines[j]
			return a.Count > b.Count || a.Count == b.Count && a.What < b.What
		})
		var kinds []string
		for _, l := range p.lines {
			k := fmt.Sprintf("%d %s", l.Count, lossKind(l.What))
			if l.Overlap != "" {
				i := slices.Index(classes, l.Overlap)
				if i < 0 {
					i = len(classes)
					classes = append(classes, l.Overlap)
				}
				k += " " + strings.Repeat("†", i+1)
			}
			kinds = append(kinds, k)
		}
		out = append(out, fmt.Sprintf("%s %d: %s", p.name, p.total, strings.Join(kinds, ", ")))
	}
	text := strings.Join(out, "; ")
	for i, c := range classes {
		text += fmt.Sprintf(" (%s %s: the same events, as each of these probes saw them, counted once in lost_events)", strings.Repeat("†", i+1), c)
	}
	// A cell of a Markdown table ends at a pipe.
	return strings.ReplaceAll(text, "|", "\\|")
}
