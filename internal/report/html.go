package report

import (
	_ "embed"
	"fmt"
	"github.com/whyslow/whyslow/internal/escape"
	"html/template"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/whyslow/whyslow/internal/facts"
)

//go:embed templates/report.html.tmpl
var htmlTemplate string

var htmlTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"ms":          fmtMs,
	"us":          func(l Latency, v float64) string { return latencyCell(l, v) },
	"secs":        fmtSeconds,
	"clean":       escape.String,
	"incomplete":  incompleteLine,
	"overlapNote": func(l Loss) string { return escape.String(overlapNote(l)) },
	"upper":       func(s string) string { return strings.ToUpper(escape.String(s)) },
	"chain":       chainSteps,
	"command":     func(tr *Trigger) string { return escape.String(commandText(tr)) },
	"evidence":    evidenceValue,
	"join":        escapeJoin,
	"rfc3339":     func(t time.Time) string { return t.Format(time.RFC3339) },
	"dur":         fmtUs,
	"plural": func(n int, one, many string) string {
		if n == 1 {
			return one
		}
		return many
	},
	"paras": func(s string) []string {
		var out []string
		for _, p := range strings.Split(strings.TrimSpace(s), "\n\n") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, escape.String(strings.ReplaceAll(p, "\n", " ")))
			}
		}
		return out
	},
	"probeReason": func(p Probe) string {
		parts := []string{}
		if p.Reason != "" {
			parts = append(parts, escape.String(p.Reason))
		}
		for _, s := range p.Skipped {
			parts = append(parts, "not "+escape.String(s.Mechanism)+": "+escape.String(s.Reason))
		}
		return strings.Join(parts, "; ")
	},
	"place":        func(e RuleError) string { return escape.String(rulePlace(e)) },
	"percent":      percent,
	"blocked":      blockedPart,
	"affectedRows": affectedRows,
	"unfinished":   func(a Affected) []string { return unfinishedLines(a, func(s string) string { return s }) },
	"stageBar":     stageBar,
	"stageSwatch":  func(stage string) template.CSS { return template.CSS("background:" + stageColor(stage)) },
	"uevents":      func(u UeventStats) string { return ueventCell(u, escape.String) },
}).Parse(htmlTemplate))

// stageColors are the colours of the stages in the bars: whyslow's own
// strings only, so that the CSS written is never the host's.
var stageColors = map[string]string{
	"queue_freeze": "#cf222e", "tag_wait": "#bc4c00", "wbt": "#bf8700", "cgroup_throttle": "#8250df",
	"iocost": "#a475f9", "dirty_throttle": "#e16f24", "journal": "#1a7f37", "writeback_wait": "#4ac26b",
	"device": "#0969da", "reclaim": "#d4a72c", "lock": "#953800", "runqueue": "#57606a", "other": "#8c959f",
}

func stageColor(stage string) string {
	if c, ok := stageColors[stage]; ok {
		return c
	}
	return "#8c959f"
}

// stageBar is the style of one stage's part of a process's bar: its share
// of the width, in its colour.
func stageBar(s StageShare) template.CSS {
	w := math.Max(0, math.Min(100, s.Share*100))
	return template.CSS(fmt.Sprintf("width:%.2f%%;background:%s", w, stageColor(s.Stage)))
}

// HTML writes the report as one self-contained HTML page: inline CSS, an
// inline SVG timeline drawn here, no script and nothing fetched at view
// time. The timeline shows, per device on one time axis, the slow
// submissions (each one, and the maximum of each second), the queue freezes
// as spans, and above them the uevents and the execs of the commands the
// findings name as triggers; the ranked findings stand beside it. run gives
// the times for the picture (nil draws none). Everything that came from the
// host is escaped by html/template.
func HTML(w io.Writer, r *Report, run *facts.Run) error {
	page := struct {
		R       *Report
		Picture *picture
		OK      int
	}{R: r, Picture: newPicture(r, run)}
	for _, p := range r.Probes {
		if p.Status == "ok" {
			page.OK++
		}
	}
	var b strings.Builder
	if err := htmlTmpl.Execute(&b, page); err != nil {
		return fmt.Errorf("rendering HTML: %w", err)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// The picture's geometry, in SVG user units.
const (
	picWidth      = 900.0
	picLeft       = 70.0 // room for the latency axis labels
	picRight      = 885.0
	picEventsTop  = 28.0
	picEventsH    = 44.0
	picLaneH      = 130.0
	picLaneGap    = 34.0
	picMaxDevices = 6
)

type picture struct {
	Width, Height float64
	Left, Right   float64
	Axis          float64 // y of the time axis
	XTicks        []tick
	EventsTop     float64
	EventsMid     float64
	EventsBottom  float64
	Uevents       []mark
	Execs         []mark
	Lanes         []lane
	Legend        string
	Empty         string // why there is nothing to draw, if so
}

type tick struct {
	At    float64
	Label string
}

type mark struct {
	X     float64
	Title string
}

type point struct {
	X, Y  float64
	Title string
}

type svgSpan struct {
	X, W  float64
	Title string
}

type lane struct {
	Name         string
	Top, Bottom  float64
	LabelY       float64
	YTicks       []tick
	Points       []point
	SecondMax    string // SVG path of the per-second maximum
	Freezes      []svgSpan
	Stalls, More int // slow submissions, and those merged into a drawn point
}

func f1(v float64) float64 { return math.Round(v*10) / 10 }

// newPicture lays out the timeline of a run.
func newPicture(r *Report, run *facts.Run) *picture {
	p := &picture{Width: picWidth, Left: picLeft, Right: picRight}
	if run == nil {
		p.Height = 40
		p.Empty = "no timeline: this report was built without the run's events"
		return p
	}
	dur := r.DurationSeconds
	if !(dur > 0) || math.IsInf(dur, 0) {
		dur = run.Duration.Seconds()
	}
	if !(dur > 0) || math.IsInf(dur, 0) {
		dur = 1
	}
	xs := func(secs float64) float64 {
		v := secs / dur
		if math.IsNaN(v) {
			v = 0
		}
		return f1(p.Left + math.Max(0, math.Min(1, v))*(p.Right-p.Left))
	}
	x := func(d time.Duration) float64 { return xs(d.Seconds()) }

	keep := map[string]bool{}
	for _, d := range r.Devices {
		keep[d.Name] = true
	}
	var devs []*facts.Device
	for _, d := range run.Devices {
		if d != nil && keep[d.Name] && (len(d.Stalls) > 0 || len(d.Freezes) > 0) {
			devs = append(devs, d)
		}
	}
	// The devices with the most stalled time first.
	sort.SliceStable(devs, func(i, j int) bool {
		a, b := devs[i].Stalls.TotalMs()+devs[i].Freezes.TotalMs(), devs[j].Stalls.TotalMs()+devs[j].Freezes.TotalMs()
		if a != b {
			return a > b
		}
		return devs[i].Name < devs[j].Name
	})
	hidden := 0
	if len(devs) > picMaxDevices {
		hidden = len(devs) - picMaxDevices
		devs = devs[:picMaxDevices]
	}

	p.EventsTop = picEventsTop
	p.EventsBottom = picEventsTop + picEventsH
	p.EventsMid = picEventsTop + picEventsH/2
	// Uevents of the drawn devices, or of every reported device.
	shown := map[string]bool{}
	for _, d := range devs {
		shown[d.Name] = true
	}
	for _, d := range run.Devices {
		if d == nil || !keep[d.Name] || len(devs) > 0 && !shown[d.Name] {
			continue
		}
		for _, u := range d.Uevents {
			p.Uevents = append(p.Uevents, mark{X: x(u.At), Title: fmt.Sprintf("uevent %s for %s at %s", escape.String(u.What), escape.String(d.Name), fmtAt(u.At))})
		}
	}
	sort.SliceStable(p.Uevents, func(i, j int) bool { return p.Uevents[i].X < p.Uevents[j].X })
	p.Execs = triggerExecs(r, run, x)

	top := p.EventsBottom + picLaneGap
	for _, d := range devs {
		p.Lanes = append(p.Lanes, newLane(d, top, xs, r.MinLatencyUs, dur))
		top += picLaneH + picLaneGap
	}
	if len(devs) == 0 {
		p.Empty = "no submission slower than the min latency and no queue freeze on the reported devices"
		top += 10
	}
	if hidden > 0 {
		p.Empty = fmt.Sprintf("%d more device(s) with stalls not drawn", hidden)
	}
	p.Axis = top - picLaneGap + 8
	if len(devs) == 0 {
		p.Axis = p.EventsBottom + 14
	}
	p.Height = p.Axis + 34
	for _, t := range timeTicks(dur) {
		p.XTicks = append(p.XTicks, tick{At: xs(t), Label: fmtSeconds(t)})
	}
	return p
}

// triggerExecs marks every exec of the commands the findings name as
// triggers.
func triggerExecs(r *Report, run *facts.Run, x func(time.Duration) float64) []mark {
	var out []mark
	done := map[*facts.Command]bool{}
	type name struct{ file, comm string }
	byName := map[name][]*facts.Command{} // in run order
	for _, c := range run.Commands {
		if c != nil {
			byName[name{c.Filename, c.Comm}] = append(byName[name{c.Filename, c.Comm}], c)
		}
	}
	for _, f := range r.Findings {
		tr := f.Trigger
		if tr == nil {
			continue
		}
		for _, c := range byName[name{tr.Filename, tr.Comm}] {
			if done[c] {
				continue
			}
			done[c] = true
			for i, e := range c.Execs {
				pid := ""
				if i < len(c.Pids) {
					pid = fmt.Sprintf(" (pid %d)", c.Pids[i])
				}
				out = append(out, mark{X: x(e.At), Title: fmt.Sprintf("exec %s%s by %s at %s, trigger of finding %d", escape.String(commandText(tr)), pid, escape.String(c.ParentComm), fmtAt(e.At), f.Rank)})
			}
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].X < out[j].X })
	return out
}

func newLane(d *facts.Device, top float64, xs func(secs float64) float64, minUs, dur float64) lane {
	x := func(d time.Duration) float64 { return xs(d.Seconds()) }
	l := lane{Name: d.Name, Top: top, Bottom: top + picLaneH, LabelY: top - 8, Stalls: len(d.Stalls)}
	// Latency axis: decades around what is drawn, log scale.
	lo, hi := math.Inf(1), 0.0
	for _, s := range d.Stalls {
		ms := float64(s.Duration()) / float64(time.Millisecond)
		if ms > 0 {
			lo, hi = math.Min(lo, ms), math.Max(hi, ms)
		}
	}
	if minUs > 0 && !math.IsInf(minUs, 0) {
		lo = math.Min(lo, minUs/1000)
	}
	if math.IsInf(lo, 1) {
		lo = 1
	}
	if hi < lo {
		hi = lo
	}
	// Decades within what a float holds: at most 24 of them, so that the
	// axis has a handful of ticks whatever the values.
	lo = math.Pow(10, math.Max(math.Floor(math.Log10(lo)), -12))
	hi = math.Pow(10, math.Min(math.Ceil(math.Log10(hi*1.0001)), 12))
	if hi <= lo {
		hi = lo * 10
	}
	y := func(ms float64) float64 {
		if ms <= lo {
			return f1(l.Bottom)
		}
		v := (math.Log10(ms) - math.Log10(lo)) / (math.Log10(hi) - math.Log10(lo))
		return f1(l.Bottom - math.Min(1, v)*picLaneH)
	}
	for v := lo; v <= hi*1.0001; v *= 10 {
		l.YTicks = append(l.YTicks, tick{At: y(v), Label: fmtMs(v)})
	}
	for _, f := range d.Freezes {
		x0, x1 := x(f.Start), x(f.End)
		w := math.Max(x1-x0, 1.5)
		t := fmt.Sprintf("queue freeze of %s by %s (pid %d)", escape.String(d.Name), escape.String(f.Comm), f.Pid)
		if f.Attr != "" {
			t += " writing " + escape.String(f.Attr)
		}
		t += fmt.Sprintf(": %s at %s", fmtDur(f.Duration()), fmtAt(f.Start))
		l.Freezes = append(l.Freezes, svgSpan{X: x0, W: f1(w), Title: t})
	}
	// One point per pixel column, the slowest submission in it.
	type best struct {
		s facts.Span
		n int
	}
	cols := map[int]*best{}
	var order []int
	perSec := map[int]float64{}
	for _, s := range d.Stalls {
		c := int(x(s.Start))
		b := cols[c]
		if b == nil {
			b = &best{s: s}
			cols[c] = b
			order = append(order, c)
		} else if s.Duration() > b.s.Duration() {
			b.s = s
		}
		b.n++
		sec := int(s.Start / time.Second)
		perSec[sec] = math.Max(perSec[sec], float64(s.Duration())/float64(time.Millisecond))
	}
	sort.Ints(order)
	for _, c := range order {
		b := cols[c]
		ms := float64(b.s.Duration()) / float64(time.Millisecond)
		t := fmt.Sprintf("submission by %s (pid %d) took %s at %s", escape.String(b.s.Comm), b.s.Pid, fmtDur(b.s.Duration()), fmtAt(b.s.Start))
		if b.n > 1 {
			t += fmt.Sprintf(" (slowest of %d here)", b.n)
			l.More += b.n - 1
		}
		l.Points = append(l.Points, point{X: float64(c) + 0.5, Y: y(ms), Title: t})
	}
	secs := make([]int, 0, len(perSec))
	for s := range perSec {
		secs = append(secs, s)
	}
	sort.Ints(secs)
	var path strings.Builder
	for _, s := range secs {
		yy := y(perSec[s])
		x0 := x(time.Duration(s) * time.Second)
		x1 := xs(math.Min(float64(s)+1, dur))
		fmt.Fprintf(&path, "M%s %sH%s", num(x0), num(yy), num(math.Max(x1, x0+1)))
	}
	l.SecondMax = path.String()
	return l
}

func num(v float64) string { return strconv.FormatFloat(f1(v), 'f', -1, 64) }

// fmtAt shows a time since the start of the run.
func fmtAt(d time.Duration) string {
	return "+" + strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + "s"
}

// timeTicks picks round seconds for the time axis: about 6 to 12 ticks,
// and never more than 13, however long the window.
func timeTicks(dur float64) []float64 {
	if !(dur > 0) || math.IsInf(dur, 0) {
		return []float64{0}
	}
	step := 0.0
	for _, s := range []float64{0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600} {
		if dur/s <= 12 {
			step = s
			break
		}
	}
	if step == 0 { // beyond 12 hours: 1, 2 or 5 times a power of ten of hours
		h := dur / 3600 / 12
		p := math.Pow(10, math.Floor(math.Log10(h)))
		step = 10 * p * 3600
		for _, m := range []float64{1, 2, 5} {
			if m*p >= h {
				step = m * p * 3600
				break
			}
		}
	}
	n := int(math.Floor(dur/step + 1.0/1000))
	out := make([]float64, 0, n+1)
	for i := 0; i <= n && i <= 12; i++ {
		out = append(out, math.Round(float64(i)*step*1000)/1000)
	}
	return out
}
