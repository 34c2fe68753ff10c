package report

import (
	"bytes"
	"fmt"
	"github.com/whyslow/whyslow/internal/escape"
	"io"
	"path"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/olekukonko/tablewriter"
	"github.com/olekukonko/tablewriter/renderer"
	"github.com/olekukonko/tablewriter/tw"
)

// TextOptions control the text rendering.
type TextOptions struct {
	// Color adds ANSI colours; set it only when writing to a terminal.
	Color bool
	// Width is where prose wraps; 0 means 100 columns.
	Width int
}

// ANSI styles used when TextOptions.Color is set.
const (
	sgrBold   = "\x1b[1m"
	sgrRed    = "\x1b[1;31m"
	sgrYellow = "\x1b[1;33m"
	sgrCyan   = "\x1b[36m"
	sgrDim    = "\x1b[2m"
	sgrReset  = "\x1b[0m"
)

// indent is the left margin of everything under a finding's headline.
const indent = "   "

// Text writes the report for people: a header about the run, the ranked
// findings with their chain, evidence, trigger, blocked stacks and remedy,
// then a devices table and a probes table. Every string that came from the
// host (commands, arguments, paths, frames) is printed as data: control and
// bidirectional-formatting characters are shown escaped, never sent raw.
func Text(w io.Writer, r *Report, opts TextOptions) error {
	if opts.Width <= 0 {
		opts.Width = 100
	}
	t := &textWriter{opts: opts}
	t.header(r)
	t.findings(r)
	if err := t.affected(r); err != nil {
		return err
	}
	if err := t.devices(r); err != nil {
		return err
	}
	if err := t.probes(r); err != nil {
		return err
	}
	_, err := w.Write(t.buf.Bytes())
	return err
}

type textWriter struct {
	buf   bytes.Buffer
	opts  TextOptions
	shown []*Finding // findings whose stacks were printed
}

func (t *textWriter) printf(format string, args ...any) { fmt.Fprintf(&t.buf, format, args...) }

// paint wraps s in an ANSI style when colours are on.
func (t *textWriter) paint(style, s string) string {
	if !t.opts.Color || s == "" {
		return s
	}
	return style + s + sgrReset
}

func (t *textWriter) header(r *Report) {
	if r.Incomplete {
		t.printf("%s\n\n", t.paint(sgrRed, "!! INCOMPLETE: "+incompleteLine(r)))
	}
	version := r.Tool.Version
	if version == "" {
		version = "(unknown version)"
	}
	t.printf("%s\n", t.paint(sgrBold, fmt.Sprintf("%s %s: storage diagnosis", escape.String(r.Tool.Name), escape.String(version))))
	host := escape.String(r.Host.Hostname)
	if host == "" {
		host = "(unknown host)"
	}
	if r.Host.Kernel != "" {
		host += ", kernel " + escape.String(r.Host.Kernel)
	}
	t.printf("  %-11s %s\n", "host", host)
	if !r.StartedAt.IsZero() {
		t.printf("  %-11s %s\n", "started", r.StartedAt.Format(time.RFC3339))
	}
	observed := fmtSeconds(r.DurationSeconds)
	if r.RequestedDurationSeconds > 0 && r.DurationSeconds < r.RequestedDurationSeconds*0.99 {
		observed += fmt.Sprintf(" (stopped early; asked for %s)", fmtSeconds(r.RequestedDurationSeconds))
	}
	t.printf("  %-11s %s\n", "observed", observed)
	devs := "all"
	if len(r.DeviceFilter) > 0 {
		devs = escapeJoin(r.DeviceFilter, ", ")
	}
	t.printf("  %-11s min latency %s, devices: %s\n", "options", fmtUs(r.MinLatencyUs), devs)
	ok, unavailable := 0, 0
	for _, p := range r.Probes {
		if p.Status == "ok" {
			ok++
		} else {
			unavailable++
		}
	}
	probes := fmt.Sprintf("%d ok, %d unavailable", ok, unavailable)
	if unavailable > 0 {
		probes = t.paint(sgrYellow, probes) + " (see the probes table)"
	}
	t.printf("  %-11s %s\n", "probes", probes)
	if r.Trouble != nil {
		t.printf("  %-11s %s\n", "trouble", escape.String(troubleLine(r.Trouble)))
	}
	if r.Coverage != nil {
		for i, l := range coverageLines(r.Coverage) {
			name := "coverage"
			if i > 0 {
				name = ""
			}
			if i == 0 && r.Coverage.DisarmedSeconds > 0 {
				l = t.paint(sgrYellow, escape.String(l))
			} else {
				l = escape.String(l)
			}
			t.printf("  %-11s %s\n", name, l)
		}
	}
	if r.LostEvents == 0 {
		t.printf("  %-11s none\n", "lost events")
	} else {
		t.printf("  %-11s %s\n", "lost events", t.paint(sgrRed, fmt.Sprintf("%d", r.LostEvents)))
		t.printf("\n%s\n", t.paint(sgrRed, fmt.Sprintf("!! %d EVENTS WERE LOST: counts below are too low and a cause may be missing.", r.LostEvents)))
		for _, l := range r.Losses {
			t.printf("!!   %s: %s: %d%s\n", escape.String(l.Probe), escape.String(l.What), l.Count, overlapNote(l))
		}
	}
	if n := len(r.RuleErrors); n > 0 {
		t.printf("\n%s\n", t.paint(sgrRed, fmt.Sprintf("!! %s FAILED: %s missing from this report.", countOf(n, "RULE", "RULES"), pick(n, "its findings are", "their findings are"))))
		for _, e := range r.RuleErrors {
			t.printf("!!   %s (%s): %s\n", escape.String(e.Rule), escape.String(rulePlace(e)), escape.String(e.Error))
		}
	}
	if n := len(r.NotEvaluated); n > 0 {
		t.printf("\n%s\n", t.paint(sgrYellow, fmt.Sprintf("!! %s NOT EVALUATED: no probe of this run supplied what %s.", countOf(n, "RULE", "RULES"), pick(n, "it needs", "they need"))))
		for _, e := range r.NotEvaluated {
			t.printf("!!   %s: %s\n", escape.String(e.Rule), escape.String(e.Reason))
		}
	}
	t.printf("\n")
}

// rulePlace is where a failed rule is: FILE:LINE:COLUMN.
func rulePlace(e RuleError) string { return fmt.Sprintf("%s:%d:%d", e.File, e.Line, e.Column) }

// countOf is "1 rule", "2 rules".
func countOf(n int, one, many string) string { return fmt.Sprintf("%d %s", n, pick(n, one, many)) }

func pick(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func (t *textWriter) findings(r *Report) {
	if len(r.Findings) == 0 {
		t.printf("%s\n", t.paint(sgrBold, "No findings: no rule matched what this run observed."))
		var caveats []string
		if r.LostEvents > 0 {
			caveats = append(caveats, "events were lost")
		}
		for _, p := range r.Probes {
			if p.Status != "ok" {
				caveats = append(caveats, "some probes were unavailable")
				break
			}
		}
		if len(caveats) > 0 {
			t.printf("Note: %s, so a cause may have gone unseen.\n", strings.Join(caveats, " and "))
		}
		t.printf("\n")
		return
	}
	t.printf("%s\n\n", t.paint(sgrBold, fmt.Sprintf("Findings: %d, worst %s", len(r.Findings), r.Summary.WorstSeverity)))
	for i := range r.Findings {
		t.finding(&r.Findings[i])
		t.printf("\n")
	}
}

func (t *textWriter) severity(s string) string {
	label := strings.ToUpper(escape.String(s))
	switch s {
	case "critical":
		return t.paint(sgrRed, label)
	case "warning":
		return t.paint(sgrYellow, label)
	default:
		return t.paint(sgrCyan, label)
	}
}

func (t *textWriter) finding(f *Finding) {
	t.printf("%s %s score %.1f  %s\n", t.paint(sgrBold, fmt.Sprintf("#%d", f.Rank)), t.severity(f.Severity), f.Score, t.paint(sgrBold, escape.String(f.Title)))
	if chain := chainLine(f); chain != "" {
		t.printf("%s%s\n", indent, chain)
	}
	t.printf("%s%s\n", indent, t.paint(sgrDim, "rule "+escape.String(f.Rule)))
	if f.Explanation != "" {
		t.printf("\n")
		t.prose(f.Explanation, indent)
	}
	if len(f.Devices) > 0 || len(f.Processes) > 0 {
		t.printf("\n")
	}
	if len(f.Devices) > 0 {
		t.printf("%sdevices:    %s\n", indent, escapeJoin(f.Devices, ", "))
	}
	if len(f.Processes) > 0 {
		var ps []string
		for _, p := range f.Processes {
			ps = append(ps, fmt.Sprintf("%s (%s)", escape.String(p.Comm), processDetails(p, escape.String)))
		}
		t.printf("%sprocesses:  %s\n", indent, strings.Join(ps, ", "))
	}
	if tr := f.Trigger; tr != nil {
		t.printf("%strigger:    %s\n", indent, commandLine(tr))
		if tr.Pipeline != "" {
			t.printf("%s            in the pipeline: %s\n", indent, escape.String(tr.Pipeline))
		}
		detail := fmt.Sprintf("pid %d (%s), parent pid %d (%s), %d run", tr.Pid, escape.String(tr.Comm), tr.PPid, escape.String(tr.ParentComm), tr.Count)
		if tr.Count != 1 {
			detail += "s"
		}
		if tr.PeriodSeconds > 0 {
			detail += ", every " + fmtSeconds(tr.PeriodSeconds)
		}
		t.printf("%s            %s\n", indent, detail)
	}
	if len(f.Evidence) > 0 {
		t.printf("\n%sevidence:\n", indent)
		rows := make([][]string, 0, len(f.Evidence))
		for _, e := range f.Evidence {
			rows = append(rows, []string{escape.String(e.Name), evidenceValue(e.Name, e.Value)})
		}
		t.table(indent, []string{"name", "value"}, rows, 0)
	}
	if len(f.Stacks) > 0 {
		if rank, ok := t.shownStacks(f); ok {
			t.printf("\n%sblocked stacks: as in #%d\n", indent, rank)
		} else {
			t.stacks(f.Stacks)
		}
	}
	if f.Precision != "" {
		t.printf("\n%sprecision: %s\n", indent, escape.String(f.Precision))
	}
	if f.Remedy != "" {
		t.printf("\n%s%s\n", indent, t.paint(sgrBold, "remedy:"))
		t.prose(f.Remedy, indent+"  ")
	}
}

// shownStacks reports the rank of an earlier finding that showed the same
// stacks, and remembers these ones.
func (t *textWriter) shownStacks(f *Finding) (int, bool) {
	for _, prev := range t.shown {
		if reflect.DeepEqual(prev.Stacks, f.Stacks) {
			return prev.Rank, true
		}
	}
	t.shown = append(t.shown, f)
	return 0, false
}

func (t *textWriter) stacks(stacks []Stack) {
	t.printf("\n%sblocked stacks (most blocked time first):\n", indent)
	for i, s := range stacks {
		wait := "waits"
		if s.Count == 1 {
			wait = "wait"
		}
		t.printf("%s  %d. %s: %d %s, %s total, max %s, by %s\n", indent, i+1, escape.String(s.Kind), s.Count, wait,
			fmtMs(s.TotalMs), fmtMs(s.MaxMs), escapeJoin(s.Processes, ", "))
		for _, fr := range s.Kernel {
			t.printf("%s       %s\n", indent, escape.String(fr))
		}
		if len(s.User) > 0 {
			t.printf("%s       %s\n", indent, t.paint(sgrDim, "-- user --"))
			for _, fr := range s.User {
				t.printf("%s       %s\n", indent, escape.String(fr))
			}
		}
	}
}

// chainLine joins the steps of a chain with arrows, led by the trigger when
// no step already names it. A finding with one step and no trigger has none.
func chainLine(f *Finding) string {
	var parts []string
	if tr := f.Trigger; tr != nil && len(f.Steps) > 0 {
		named := false
		for _, s := range f.Steps {
			for _, name := range []string{tr.Comm, path.Base(tr.Filename)} {
				if name != "" && name != "." && name != "/" && strings.Contains(s.Title, name) {
					named = true
				}
			}
		}
		if !named {
			p := escape.String(tr.Comm) + " runs"
			if tr.ParentComm != "" {
				p = escape.String(tr.ParentComm) + " runs " + escape.String(tr.Comm)
			}
			if tr.PeriodSeconds > 0 {
				p += " every " + fmtSeconds(tr.PeriodSeconds)
			}
			parts = append(parts, p)
		}
	}
	for _, s := range f.Steps {
		parts = append(parts, escape.String(s.Title))
	}
	if len(parts) < 2 {
		return ""
	}
	return strings.Join(parts, " → ")
}

// prose writes rule-authored text, keeping its line breaks and wrapping
// long lines at the configured width.
func (t *textWriter) prose(s, margin string) {
	width := max(t.opts.Width-len(margin), 20)
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		line = escape.String(strings.TrimRight(line, " \t\r"))
		if line == "" {
			t.printf("\n")
			continue
		}
		lead := line[:len(line)-len(strings.TrimLeft(line, " "))]
		cur := ""
		for _, word := range strings.Fields(line) {
			if cur != "" && utf8.RuneCountInString(lead+cur)+1+utf8.RuneCountInString(word) > width {
				t.printf("%s%s%s\n", margin, lead, cur)
				cur = ""
			}
			if cur == "" {
				cur = word
			} else {
				cur += " " + word
			}
		}
		t.printf("%s%s%s\n", margin, lead, cur)
	}
}

// affected writes the processes whose storage calls the run traced: per
// process its calls and where their blocked time went. Nothing when the
// run traced none (recorded runs before the syscall probe).
func (t *textWriter) affected(r *Report) error {
	if len(r.Affected) == 0 {
		return nil
	}
	t.printf("%s\n", t.paint(sgrBold, "Affected processes"))
	for _, a := range r.Affected {
		t.printf("  %s on %s: %s in storage calls, %s\n", affectedWho(a, escape.String), escapeJoin(a.Devices, ", "),
			fmtMs(a.TotalMs), blockedPart(a))
		if err := t.table("  ", affectedHeader, affectedRows(a), 0); err != nil {
			return err
		}
		if len(a.Stages) > 0 {
			t.printf("  blocked: %s\n", stageList(a.Stages, escape.String))
		}
		for _, l := range unfinishedLines(a, escape.String) {
			t.printf("  %s\n", l)
		}
		t.printf("\n")
	}
	return nil
}

func (t *textWriter) devices(r *Report) error {
	t.printf("%s\n", t.paint(sgrBold, "Devices"))
	if len(r.Devices) == 0 {
		t.printf("  no block I/O seen\n\n")
		return nil
	}
	rows := make([][]string, 0, len(r.Devices))
	for _, d := range r.Devices {
		name := escape.String(d.Name)
		if len(d.Lower) > 0 {
			name += " (on " + escapeJoin(d.Lower, ", ") + ")"
		}
		stalls := strconv.Itoa(d.Stalls.Count)
		if d.Stalls.Count > 0 {
			stalls += ", max " + fmtMs(d.Stalls.MaxMs)
		}
		freezes := strconv.Itoa(d.Freezes.Count)
		if d.Freezes.Count > 0 {
			freezes += ", " + fmtMs(d.Freezes.TotalMs) + " total"
		}
		rows = append(rows, []string{
			name, strconv.FormatUint(d.Submit.Count, 10),
			latencyCell(d.Submit, d.Submit.P50Us), latencyCell(d.Submit, d.Submit.P99Us), latencyCell(d.Submit, d.Submit.MaxUs),
			latencyCell(d.Service, d.Service.P99Us),
			stalls, freezes, ueventCell(d.Uevents, escape.String),
		})
	}
	err := t.table("", []string{"device", "submits", "submit p50", "submit p99", "submit max", "service p99", "stalls", "freezes", "uevents"}, rows, 0)
	t.printf("\n")
	return err
}

func (t *textWriter) probes(r *Report) error {
	t.printf("%s\n", t.paint(sgrBold, "Probes"))
	if len(r.Probes) == 0 {
		t.printf("  none reported\n")
		return nil
	}
	rows := make([][]string, 0, len(r.Probes))
	for _, p := range r.Probes {
		reason := escape.String(p.Reason)
		if len(p.Skipped) > 0 {
			var sk []string
			for _, s := range p.Skipped {
				sk = append(sk, escape.String(s.Mechanism)+": "+escape.String(s.Reason))
			}
			skipped := "not " + strings.Join(sk, "; not ")
			if reason == "" {
				reason = skipped
			} else {
				reason += "; " + skipped
			}
		}
		status := escape.String(p.Status)
		if p.Status != "ok" {
			status = strings.ToUpper(status)
		}
		mech := escape.String(p.Mechanism)
		if mech == "" {
			mech = "-"
		}
		rows = append(rows, []string{escape.String(p.Name), mech, status, reason})
	}
	return t.table("", []string{"probe", "mechanism", "status", "reason"}, rows, 60)
}

// table renders rows (already cleaned) with a margin; maxCell > 0 wraps
// longer cells.
func (t *textWriter) table(margin string, header []string, rows [][]string, maxCell int) error {
	var b bytes.Buffer
	opts := []tablewriter.Option{
		tablewriter.WithRenderer(renderer.NewBlueprint(tw.Rendition{Symbols: tw.NewSymbols(tw.StyleLight)})),
		tablewriter.WithHeaderAutoFormat(tw.Off),
		tablewriter.WithHeaderAlignment(tw.AlignLeft),
	}
	if maxCell > 0 {
		opts = append(opts, tablewriter.WithRowMaxWidth(maxCell))
	}
	tb := tablewriter.NewTable(&b, opts...)
	h := make([]any, len(header))
	for i, s := range header {
		h[i] = s
	}
	tb.Header(h...)
	for _, row := range rows {
		cells := make([]any, len(row))
		for i, s := range row {
			cells[i] = s
		}
		if err := tb.Append(cells...); err != nil {
			return fmt.Errorf("table row: %w", err)
		}
	}
	if err := tb.Render(); err != nil {
		return fmt.Errorf("rendering table: %w", err)
	}
	for _, line := range strings.SplitAfter(b.String(), "\n") {
		if line != "" {
			t.buf.WriteString(margin + line)
		}
	}
	return nil
}

// commandLine shows a trigger's command as a shell would read it, with the
// executed file when it differs from argv[0].
func commandLine(tr *Trigger) string {
	var parts []string
	for _, a := range tr.Args {
		parts = append(parts, shellQuote(a))
	}
	s := strings.Join(parts, " ")
	switch {
	case s == "":
		s = escape.String(tr.Filename)
	case tr.Filename != "" && (len(tr.Args) == 0 || tr.Args[0] != tr.Filename):
		s += "  [" + escape.String(tr.Filename) + "]"
	}
	return s
}

// incompleteLine says that a report covers only part of the run, and why:
// its trace was cut.
func incompleteLine(r *Report) string {
	covered := 0.0
	if r.CoveredSeconds != nil {
		covered = *r.CoveredSeconds
	}
	of := ""
	if r.RequestedDurationSeconds > 0 {
		of = " of the " + fmtSeconds(r.RequestedDurationSeconds) + " asked for"
	}
	return fmt.Sprintf("the trace was cut (%s): this report covers only the first %s%s, what the trace holds (the run was killed or the machine lost power as it recorded, or the file was cut).",
		escape.String(r.IncompleteReason), fmtSeconds(covered), of)
}
