package report

import (
	"bytes"
	"fmt"
	"github.com/whyslow/whyslow/internal/escape"
	"io"
	"strconv"
	"strings"
	"time"
)

// Markdown writes the report as GitHub-flavoured Markdown, to paste into a
// ticket as is: a run table, one section per finding (chain, explanation,
// trigger, evidence table, blocked stacks in fenced blocks, remedy), then
// the devices and probes tables.
//
// Host strings (task names, arguments, paths, frames) are shown in code
// spans or fenced blocks, where Markdown interprets nothing; prose that
// rules built from them is escaped, so that no host string can open a link,
// an image, HTML, emphasis or a table cell, or start a new line.
func Markdown(w io.Writer, r *Report) error {
	m := &mdWriter{}
	m.header(r)
	m.findings(r)
	m.affected(r)
	m.devices(r)
	m.probes(r)
	_, err := w.Write(m.buf.Bytes())
	return err
}

type mdWriter struct {
	buf   bytes.Buffer
	shown []*Finding
}

func (m *mdWriter) printf(format string, a ...any) { fmt.Fprintf(&m.buf, format, a...) }

// mdEscaped are the characters escaped in prose: those that open markup
// anywhere in a line, plus '@' (mentions, mail links) and '$' (math).
const mdEscaped = "\\`*_[]<>|~&$@"

// mdText escapes a host-derived string for use in prose or a table cell.
func mdText(s string) string {
	s = escape.String(s)
	var b strings.Builder
	lower := strings.ToLower(s)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case strings.IndexByte(mdEscaped, c) >= 0:
			b.WriteByte('\\')
		case c == ':' && strings.HasPrefix(s[i:], "://"): // http://... autolinks
			b.WriteByte('\\')
		case c == '.' && i >= 3 && lower[i-3:i] == "www": // www.example.com autolinks
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	out := b.String()
	// What would start a block at the beginning of a line.
	if len(out) > 0 && strings.IndexByte("#-+=>", out[0]) >= 0 {
		out = "\\" + out
	} else if i := strings.IndexFunc(out, func(r rune) bool { return r < '0' || r > '9' }); i > 0 && (out[i] == '.' || out[i] == ')') {
		out = out[:i] + "\\" + out[i:]
	}
	return out
}

// mdCode shows a host string verbatim in a code span.
func mdCode(s string) string {
	s = escape.String(s)
	if s == "" {
		return "` `"
	}
	longest, run := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == '`' {
			run++
			longest = max(longest, run)
		} else {
			run = 0
		}
	}
	fence := strings.Repeat("`", longest+1)
	pad := ""
	if strings.HasPrefix(s, "`") || strings.HasSuffix(s, "`") || strings.HasPrefix(s, " ") && strings.HasSuffix(s, " ") {
		pad = " "
	}
	return fence + pad + s + pad + fence
}

// mdCell is mdCode for a table cell: a '|' would end the cell even inside
// a code span, so it is escaped (GitHub shows it as '|').
func mdCell(s string) string { return strings.ReplaceAll(mdCode(s), "|", `\|`) }

func mdCodes(ss []string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = mdCode(s)
	}
	return strings.Join(out, ", ")
}

// mdProse writes rule-authored text as paragraphs, escaped line by line.
func (m *mdWriter) mdProse(s string) {
	for _, para := range strings.Split(strings.TrimSpace(s), "\n\n") {
		var lines []string
		for _, l := range strings.Split(para, "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, mdText(l))
			}
		}
		if len(lines) > 0 {
			m.printf("%s\n\n", strings.Join(lines, "\n"))
		}
	}
}

func (m *mdWriter) table(header []string, rows [][]string) {
	m.printf("| %s |\n|%s\n", strings.Join(header, " | "), strings.Repeat(" --- |", len(header)))
	for _, r := range rows {
		m.printf("| %s |\n", strings.Join(r, " | "))
	}
	m.printf("\n")
}

func (m *mdWriter) header(r *Report) {
	version := r.Tool.Version
	if version == "" {
		version = "(unknown version)"
	}
	if r.Incomplete {
		m.printf("> [!CAUTION]\n> **Incomplete:** %s\n\n", mdText(incompleteLine(r)))
	}
	m.printf("# %s %s: storage diagnosis\n\n", mdText(r.Tool.Name), mdText(version))
	host := mdCell(r.Host.Hostname)
	if r.Host.Hostname == "" {
		host = "(unknown host)"
	}
	if r.Host.Kernel != "" {
		host += ", kernel " + mdCell(r.Host.Kernel)
	}
	rows := [][]string{{"host", host}}
	if !r.StartedAt.IsZero() {
		rows = append(rows, []string{"started", r.StartedAt.Format(time.RFC3339)})
	}
	observed := fmtSeconds(r.DurationSeconds)
	if r.RequestedDurationSeconds > 0 && r.DurationSeconds < r.RequestedDurationSeconds*0.99 {
		observed += fmt.Sprintf(" (stopped early; asked for %s)", fmtSeconds(r.RequestedDurationSeconds))
	}
	rows = append(rows, []string{"observed", observed})
	devs := "all"
	if len(r.DeviceFilter) > 0 {
		devs = strings.ReplaceAll(mdCodes(r.DeviceFilter), "|", `\|`)
	}
	rows = append(rows, []string{"options", fmt.Sprintf("min latency %s, devices: %s", fmtUs(r.MinLatencyUs), devs)})
	ok := 0
	for _, p := range r.Probes {
		if p.Status == "ok" {
			ok++
		}
	}
	rows = append(rows, []string{"probes", fmt.Sprintf("%d ok, %d unavailable", ok, len(r.Probes)-ok)})
	lost := "none"
	if r.LostEvents > 0 {
		lost = fmt.Sprintf("**%d**", r.LostEvents)
	}
	rows = append(rows, []string{"lost events", lost})
	m.table([]string{"run", ""}, rows)
	if r.LostEvents > 0 {
		m.printf("> [!WARNING]\n> %d events were lost: counts below are too low and a cause may be missing.\n", r.LostEvents)
		for _, l := range r.Losses {
			m.printf("> - %s: %s: %d%s\n", mdCode(l.Probe), mdCode(l.What), l.Count, mdText(overlapNote(l)))
		}
		m.printf("\n")
	}
	if n := len(r.RuleErrors); n > 0 {
		m.printf("> [!CAUTION]\n> %s failed while evaluated: %s missing from this report.\n", countOf(n, "rule", "rules"), pick(n, "its findings are", "their findings are"))
		for _, e := range r.RuleErrors {
			m.printf("> - %s (%s): %s\n", mdCode(e.Rule), mdCode(rulePlace(e)), mdText(e.Error))
		}
		m.printf("\n")
	}
	if n := len(r.NotEvaluated); n > 0 {
		m.printf("> [!WARNING]\n> %s not evaluated: no probe of this run supplied what %s.\n", countOf(n, "rule was", "rules were"), pick(n, "it needs", "they need"))
		for _, e := range r.NotEvaluated {
			m.printf("> - %s: %s\n", mdCode(e.Rule), mdText(e.Reason))
		}
		m.printf("\n")
	}
}

func (m *mdWriter) findings(r *Report) {
	if len(r.Findings) == 0 {
		m.printf("## No findings\n\nNo rule matched what this run observed.")
		for _, p := range r.Probes {
			if p.Status != "ok" || r.LostEvents > 0 {
				m.printf(" Some probes were unavailable or events were lost, so a cause may have gone unseen.")
				break
			}
		}
		m.printf("\n\n")
		return
	}
	m.printf("## Findings: %d, worst %s\n\n", len(r.Findings), mdText(r.Summary.WorstSeverity))
	for i := range r.Findings {
		m.finding(&r.Findings[i])
	}
}

func (m *mdWriter) finding(f *Finding) {
	m.printf("### %d. %s (score %.1f): %s\n\n", f.Rank, strings.ToUpper(mdText(f.Severity)), f.Score, mdText(f.Title))
	if steps := chainSteps(f); len(steps) >= 2 {
		for i, s := range steps {
			steps[i] = mdText(s)
		}
		m.printf("%s\n\n", strings.Join(steps, " → "))
	}
	m.printf("rule %s\n\n", mdCode(f.Rule))
	if f.Explanation != "" {
		m.mdProse(f.Explanation)
	}
	var items []string
	if len(f.Devices) > 0 {
		items = append(items, "**devices:** "+mdCodes(f.Devices))
	}
	if len(f.Processes) > 0 {
		var ps []string
		for _, p := range f.Processes {
			ps = append(ps, fmt.Sprintf("%s (%s)", mdCode(p.Comm), processDetails(p, mdText)))
		}
		items = append(items, "**processes:** "+strings.Join(ps, ", "))
	}
	if tr := f.Trigger; tr != nil {
		s := "**trigger:** " + mdCode(commandText(tr))
		if tr.Filename != "" && (len(tr.Args) == 0 || tr.Args[0] != tr.Filename) {
			s += " (" + mdCode(tr.Filename) + ")"
		}
		if tr.Pipeline != "" {
			s += ", in the pipeline " + mdCode(tr.Pipeline)
		}
		runs := "runs"
		if tr.Count == 1 {
			runs = "run"
		}
		s += fmt.Sprintf("; pid %d (%s), parent pid %d (%s), %d %s", tr.Pid, mdCode(tr.Comm), tr.PPid, mdCode(tr.ParentComm), tr.Count, runs)
		if tr.PeriodSeconds > 0 {
			s += ", every " + fmtSeconds(tr.PeriodSeconds)
		}
		items = append(items, s)
	}
	for _, it := range items {
		m.printf("- %s\n", it)
	}
	if len(items) > 0 {
		m.printf("\n")
	}
	if len(f.Evidence) > 0 {
		rows := make([][]string, 0, len(f.Evidence))
		for _, e := range f.Evidence {
			rows = append(rows, []string{mdCell(e.Name), mdCell(evidenceValue(e.Name, e.Value))})
		}
		m.table([]string{"evidence", "value"}, rows)
	}
	if len(f.Stacks) > 0 {
		if rank, ok := m.shownStacks(f); ok {
			m.printf("Blocked stacks: as in finding %d.\n\n", rank)
		} else {
			m.stacks(f.Stacks)
		}
	}
	if f.Precision != "" {
		m.printf("Precision: %s\n\n", mdText(f.Precision))
	}
	if f.Remedy != "" {
		m.printf("**Remedy**\n\n")
		m.mdProse(f.Remedy)
	}
}

func (m *mdWriter) shownStacks(f *Finding) (int, bool) {
	for _, prev := range m.shown {
		if stacksEqual(prev.Stacks, f.Stacks) {
			return prev.Rank, true
		}
	}
	m.shown = append(m.shown, f)
	return 0, false
}

func (m *mdWriter) stacks(stacks []Stack) {
	m.printf("**Blocked stacks** (most blocked time first)\n\n")
	for i, s := range stacks {
		wait := "waits"
		if s.Count == 1 {
			wait = "wait"
		}
		m.printf("%d. %s: %d %s, %s total, max %s, by %s\n\n", i+1, mdText(s.Kind), s.Count, wait, fmtMs(s.TotalMs), fmtMs(s.MaxMs), mdCodes(s.Processes))
		lines := make([]string, 0, len(s.Kernel)+len(s.User)+1)
		for _, fr := range s.Kernel {
			lines = append(lines, escape.String(fr))
		}
		if len(s.User) > 0 {
			lines = append(lines, "-- user --")
			for _, fr := range s.User {
				lines = append(lines, escape.String(fr))
			}
		}
		m.fenced(lines, "   ")
	}
}

// fenced writes lines in a fenced block whose fence no line can close.
func (m *mdWriter) fenced(lines []string, margin string) {
	n := 3
	for _, l := range lines {
		run := 0
		for i := 0; i < len(l); i++ {
			if l[i] == '`' {
				run++
				n = max(n, run+1)
			} else {
				run = 0
			}
		}
	}
	fence := strings.Repeat("`", n)
	m.printf("%s%s\n", margin, fence)
	for _, l := range lines {
		m.printf("%s%s\n", margin, l)
	}
	m.printf("%s%s\n\n", margin, fence)
}

// affected writes the processes whose storage calls the run traced;
// nothing when it traced none.
func (m *mdWriter) affected(r *Report) {
	if len(r.Affected) == 0 {
		return
	}
	m.printf("## Affected processes\n\n")
	for _, a := range r.Affected {
		m.printf("**%s** on %s: %s in storage calls, %s\n\n", mdText(affectedWho(a, func(s string) string { return s })),
			mdCodes(a.Devices), fmtMs(a.TotalMs), blockedPart(a))
		m.table(affectedHeader, affectedRows(a))
		if len(a.Stages) > 0 {
			m.printf("Blocked: %s\n\n", stageList(a.Stages, mdText))
		}
		for _, l := range unfinishedLines(a, mdText) {
			m.printf("%s\n\n", strings.ToUpper(l[:1])+l[1:])
		}
	}
}

func (m *mdWriter) devices(r *Report) {
	m.printf("## Devices\n\n")
	if len(r.Devices) == 0 {
		m.printf("No block I/O seen.\n\n")
		return
	}
	rows := make([][]string, 0, len(r.Devices))
	for _, d := range r.Devices {
		name := mdCell(d.Name)
		if len(d.Lower) > 0 {
			name += " (on " + strings.ReplaceAll(mdCodes(d.Lower), "|", `\|`) + ")"
		}
		stalls := strconv.Itoa(d.Stalls.Count)
		if d.Stalls.Count > 0 {
			stalls += ", max " + fmtMs(d.Stalls.MaxMs)
		}
		freezes := strconv.Itoa(d.Freezes.Count)
		if d.Freezes.Count > 0 {
			freezes += ", " + fmtMs(d.Freezes.TotalMs) + " total"
		}
		rows = append(rows, []string{name, strconv.FormatUint(d.Submit.Count, 10),
			latencyCell(d.Submit, d.Submit.P50Us), latencyCell(d.Submit, d.Submit.P99Us), latencyCell(d.Submit, d.Submit.MaxUs),
			latencyCell(d.Service, d.Service.P99Us), stalls, freezes, ueventCell(d.Uevents, mdText)})
	}
	m.table([]string{"device", "submits", "submit p50", "submit p99", "submit max", "service p99", "stalls", "freezes", "uevents"}, rows)
}

func (m *mdWriter) probes(r *Report) {
	m.printf("## Probes\n\n")
	if len(r.Probes) == 0 {
		m.printf("None reported.\n")
		return
	}
	rows := make([][]string, 0, len(r.Probes))
	for _, p := range r.Probes {
		reason := mdText(p.Reason)
		for _, s := range p.Skipped {
			if reason != "" {
				reason += "; "
			}
			reason += "not " + mdText(s.Mechanism) + ": " + mdText(s.Reason)
		}
		mech := mdText(p.Mechanism)
		if mech == "" {
			mech = "-"
		}
		status := mdText(p.Status)
		if p.Status != "ok" {
			status = "**" + strings.ToUpper(status) + "**"
		}
		rows = append(rows, []string{mdText(p.Name), mech, status, reason})
	}
	m.table([]string{"probe", "mechanism", "status", "reason"}, rows)
}

// chainSteps is the chain of a finding as text (unescaped), led by the
// trigger when no step names it; see chainLine.
func chainSteps(f *Finding) []string {
	line := chainLine(f)
	if line == "" {
		return nil
	}
	return strings.Split(line, " → ")
}

// commandText is a trigger's argv as a shell would read it.
func commandText(tr *Trigger) string {
	parts := make([]string, 0, len(tr.Args))
	for _, a := range tr.Args {
		parts = append(parts, shellQuote(a))
	}
	if len(parts) == 0 {
		return tr.Filename
	}
	return strings.Join(parts, " ")
}

func stacksEqual(a, b []Stack) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Kind != y.Kind || x.Count != y.Count || x.TotalMs != y.TotalMs || x.MaxMs != y.MaxMs ||
			strings.Join(x.Processes, "\x00") != strings.Join(y.Processes, "\x00") ||
			strings.Join(x.Kernel, "\x00") != strings.Join(y.Kernel, "\x00") || strings.Join(x.User, "\x00") != strings.Join(y.User, "\x00") {
			return false
		}
	}
	return true
}
