package report

// Formatting helpers of the text renderer: quoting arguments,
// human-friendly durations and evidence values. Host strings are escaped
// with escape.String.

import (
	"fmt"
	"github.com/whyslow/whyslow/internal/escape"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// shellQuote leaves plain words alone, single-quotes words with spaces or
// shell characters, and double-quotes anything escape.String changes, with
// its escapes (a backslash or a double quote of the word itself is
// backslashed, so that every escape reads one way).
func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	plain := true
	for _, r := range s {
		if !(r < utf8.RuneSelf && (unicode.IsLetter(r) || unicode.IsDigit(r) || strings.ContainsRune("_@%+=:,./-", r))) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	if escape.String(s) == s && !strings.ContainsRune(s, '\'') {
		return "'" + s + "'"
	}
	return `"` + escape.String(strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)) + `"`
}

func escapeJoin(ss []string, sep string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = escape.String(s)
	}
	return strings.Join(out, sep)
}

// evidenceValue formats a value for the evidence table; names ending in a
// time unit are shown as durations.
func evidenceValue(name string, v any) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case float64:
		if unit, ok := unitOf(name); ok {
			return fmtNs(x * float64(unit))
		}
		return fmtNum(x)
	case string:
		return escape.String(x)
	case bool:
		return strconv.FormatBool(x)
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = evidenceValue(name, e)
		}
		return strings.Join(parts, ", ")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = escape.String(k) + "=" + evidenceValue(k, x[k])
		}
		return strings.Join(parts, ", ")
	}
	return escape.String(fmt.Sprint(v))
}

func fmtNum(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "-"
	}
	return strconv.FormatFloat(f, 'f', -1, 64)
}

// fmtDur shows a duration in the unit that suits it, with one decimal below
// 10 and none above: 850ns, 7.3µs, 28ms, 2.0s, 1m30s. Every value has a
// form, the most negative one included.
func fmtDur(d time.Duration) string { return fmtNs(float64(d)) }

// hugeNs is where fmtNs shows whole hours (100h): "4167h", not
// "4166h40m0s"; it is far below the largest time.Duration, so that every
// value converted to one fits.
const hugeNs = 100 * float64(time.Hour)

// fmtNs is fmtDur of a number of nanoseconds, which may be anything a
// computation on trace values gives: NaN and infinities are "-", 100 hours
// and more are shown in whole hours (from 10⁹ hours with 3 digits: 2.78e+296h).
func fmtNs(ns float64) string {
	switch {
	case math.IsNaN(ns) || math.IsInf(ns, 0):
		return "-"
	case ns < 0:
		return "-" + fmtNs(-ns) // -ns of a finite negative float is finite and positive
	case ns >= hugeNs:
		h := ns / float64(time.Hour)
		if h >= 1e9 {
			return strconv.FormatFloat(h, 'g', 3, 64) + "h"
		}
		return strconv.FormatFloat(h, 'f', 0, 64) + "h"
	}
	d := time.Duration(ns)
	switch {
	case d == 0:
		return "0"
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d)
	case d < 999500*time.Nanosecond:
		return short(float64(d)/float64(time.Microsecond)) + "µs"
	case d < 999500*time.Microsecond:
		return short(float64(d)/float64(time.Millisecond)) + "ms"
	case d < 99500*time.Millisecond:
		return short(d.Seconds()) + "s"
	}
	return d.Round(time.Second).String()
}

// short formats f with one decimal below 10 and none from there.
func short(f float64) string {
	if f < 9.95 {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return strconv.FormatFloat(f, 'f', 0, 64)
}

// latencyCell shows one value of a latency summary, or "-" when it has none.
func latencyCell(l Latency, us float64) string {
	if l.Count == 0 {
		return "-"
	}
	return fmtUs(us)
}

func fmtUs(v float64) string      { return fmtNs(v * float64(time.Microsecond)) }
func fmtMs(v float64) string      { return fmtNs(v * float64(time.Millisecond)) }
func fmtSeconds(v float64) string { return fmtNs(v * float64(time.Second)) }

// maxActions is how many uevent actions a device table cell names.
const maxActions = 3

// ueventCell is a device's uevents for a table: the rate and the count of
// each action, most frequent first, e.g. "0.34/s (change 7)", "0.50/s
// (change 7, add 2, +1 more)"; "0" without any. esc escapes the actions
// (host strings) for the format.
func ueventCell(u UeventStats, esc func(string) string) string {
	if u.Count == 0 {
		return "0"
	}
	parts := make([]string, 0, maxActions+1)
	for i, a := range u.ByAction {
		if i == maxActions {
			parts = append(parts, fmt.Sprintf("+%d more", len(u.ByAction)-maxActions))
			break
		}
		parts = append(parts, esc(a.Action)+" "+strconv.Itoa(a.Count))
	}
	cell := strconv.FormatFloat(u.PerSecond, 'f', 2, 64) + "/s"
	if len(parts) > 0 {
		cell += " (" + strings.Join(parts, ", ") + ")"
	}
	return cell
}

// processDetails are what the formats print in parentheses after a
// process's name: its pid, its role, its part when the role does not say
// it, its cgroup; esc escapes the strings for the format.
func processDetails(p Process, esc func(string) string) string {
	parts := []string{fmt.Sprintf("pid %d", p.Pid)}
	if p.Role != "" {
		parts = append(parts, esc(p.Role))
	}
	if p.Part != "" && p.Part != p.Role {
		parts = append(parts, esc(p.Part))
	}
	if p.Cgroup != "" {
		parts = append(parts, "cgroup "+esc(p.Cgroup))
	}
	return strings.Join(parts, ", ")
}

// affectedWho names an affected process: "fio (pid 7, cgroup /db)".
func affectedWho(a Affected, esc func(string) string) string {
	who := fmt.Sprintf("%s (pid %d", esc(a.Comm), a.Pid)
	if a.Cgroup != "" {
		who += ", cgroup " + esc(a.Cgroup)
	}
	if a.Blkio != "" {
		who += ", blkio " + esc(a.Blkio)
	}
	return who + ")"
}

// affectedHeader heads the table of an affected process's calls.
var affectedHeader = []string{"call", "count", "p50", "p99", "max", "total"}

// affectedRows are the cells of an affected process's calls (the host's
// strings are the caller's to escape: syscall names are whyslow's own).
func affectedRows(a Affected) [][]string {
	rows := make([][]string, 0, len(a.Calls))
	for _, c := range a.Calls {
		l := Latency{Count: c.Count}
		total := fmtMs(c.TotalMs)
		if c.TotalMs == 0 && c.Count > 0 {
			total = "<10µs" // total_ms is to 0.01 ms
		}
		rows = append(rows, []string{c.Syscall, strconv.FormatUint(c.Count, 10),
			latencyCell(l, c.P50Us), latencyCell(l, c.P99Us), latencyCell(l, c.MaxUs), total})
	}
	return rows
}

// unfinishedLines say, one line each, the calls of an affected process
// still in the kernel when the run ended (the host's strings are the
// caller's to escape).
func unfinishedLines(a Affected, esc func(string) string) []string {
	out := make([]string, 0, len(a.Unfinished))
	for _, u := range a.Unfinished {
		l := fmt.Sprintf("still in the call when the run ended: %s on %s by %s (tid %d), %s so far, %s blocked",
			u.Syscall, esc(u.Device), esc(u.Comm), u.Tid, fmtMs(u.InCallMs), fmtMs(u.BlockedMs))
		if u.Stage != "" {
			l += ", latest sleep in stage " + esc(u.Stage)
		}
		out = append(out, l)
	}
	return out
}

// stageList is a process's blocked time by stage on one line:
// "queue_freeze 812ms (69%), device 310ms (26%), other 12ms (1%: a <- b)".
func stageList(ss []StageShare, esc func(string) string) string {
	parts := make([]string, 0, len(ss))
	for _, s := range ss {
		p := fmt.Sprintf("%s %s (%s", esc(s.Stage), fmtMs(s.TotalMs), percent(s.Share))
		if s.Frames != "" {
			p += ": " + esc(s.Frames)
		}
		parts = append(parts, p+")")
	}
	return strings.Join(parts, ", ")
}

// percent formats a share (0..1) as a whole percentage; "<1%" for a
// share that rounds to 0 but is not.
func percent(f float64) string {
	if p := math.Round(f * 100); p > 0 || f == 0 {
		return fmt.Sprintf("%.0f%%", p)
	}
	return "<1%"
}

// blockedPart says how much of an affected process's call time was off CPU.
func blockedPart(a Affected) string {
	if a.BlockedMs <= 0 {
		return "never blocked"
	}
	return fmtMs(a.BlockedMs) + " of it blocked"
}
