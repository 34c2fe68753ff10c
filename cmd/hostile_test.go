package cmd

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
)

// storyTrace writes the trace of storyTimeline and returns its path.
func storyTrace(t *testing.T, dev, host string, args []string) string {
	t.Helper()
	tl := storyTimeline(dev, host, args, 10)
	path := filepath.Join(t.TempDir(), "story.trace.gz")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := tracefile.Write(f, tl, tracefile.Info{Version: "test", StartedAt: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Duration: 40 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// storyTimeline is a run with the udev freeze chain: a command run every
// 3 s with args (runs times), a change uevent for dev after each run, udev
// rewriting its queue/scheduler and freezing the queue, a submitter stalled
// behind it.
func storyTimeline(dev, host string, args []string, runs int) *timeline.Timeline {
	ms := func(f float64) time.Duration { return time.Duration(f * float64(time.Millisecond)) }
	start := event.Mono(1000 * time.Second)
	d := event.Device{Major: 7, Minor: 0, Name: dev}
	udev := event.Task{Pid: 611, Tgid: 611, Comm: "(udev-worker)"}
	fio := event.Task{Pid: 2000, Tgid: 2000, Comm: "fio"}
	freezeStack := []event.Frame{{Addr: 1, Symbol: "schedule"}, {Addr: 2, Symbol: "blk_mq_freeze_queue_wait"}, {Addr: 3, Symbol: "elv_iosched_store"}}
	enterStack := []event.Frame{{Addr: 4, Symbol: "schedule"}, {Addr: 5, Symbol: "__bio_queue_enter"}, {Addr: 6, Symbol: "submit_bio_noacct"}}
	tl := &timeline.Timeline{Start: start, End: start.Add(40 * time.Second), Kernel: "6.18.0", Hostname: host, MinLatency: time.Millisecond}
	for _, p := range []string{"exec", "offcpu", "service", "submit", "sysfs", "uevent"} {
		tl.Probes = append(tl.Probes, event.ProbeStatus{Name: p, Mechanism: event.MechTracepoint, Status: event.StatusOK})
	}
	h := tl.Device(d)
	for i := range 100 {
		h.Submit.Add(uint64(1000 + i))
		h.Service.Add(uint64(200000 + i))
	}
	for i := range runs {
		at := start.Add(time.Second + time.Duration(i)*3*time.Second)
		pid := uint32(5000 + i)
		tl.Add(event.Exec{Time: at, Forked: at - event.Mono(ms(0.2)), Task: event.Task{Pid: pid, Tgid: pid, Comm: args[0]}, PPid: 900,
			ParentComm: "raidmon", Filename: "/usr/sbin/" + args[0], Args: args})
		tl.Add(event.Exit{Time: at.Add(ms(30)), Pid: pid})
		tl.Add(event.Uevent{Time: at.Add(ms(6)), Action: "change", DevPath: "/devices/virtual/block/" + dev, Subsystem: "block",
			DevName: dev, DevType: "disk", Seqnum: uint64(100 + i)})
		fz := at.Add(ms(12))
		tl.Add(event.SysfsWrite{Time: fz - event.Mono(ms(0.1)), Task: udev, Device: dev, Attr: "queue/scheduler",
			Path: "/sys/devices/virtual/block/" + dev + "/queue/scheduler"})
		tl.Add(event.OffCPU{Start: fz, Duration: ms(15), Task: udev, KernelStack: freezeStack})
		tl.Add(event.SlowSubmit{Start: fz.Add(ms(0.5)), Latency: ms(14.6), Task: fio, Dev: d, Op: "WS", End: "getrq", Bytes: 4096})
		tl.Add(event.OffCPU{Start: fz.Add(ms(0.51)), Duration: ms(14.4), Task: fio, Waker: udev, KernelStack: enterStack})
	}
	tl.Sort()
	return tl
}

// Hostile host strings: a terminal escape that clears the screen, a new
// line that forges a finding, Markdown and HTML, a bidi override and a
// byte that is not UTF-8.
const (
	hostileDev  = "loop0\x1b[2J\n#1 CRITICAL forged dev"
	hostileHost = "host\x1b]0;pwned\x07\r"
)

var hostileArgs = []string{"arcconf", "x\n#1 CRITICAL score 999.0  forged finding", "*[click](https://evil.example)*", "<img src=x onerror=alert(1)>", "\u202egnp.exe", "bad\xffbyte"}

// visibleText reports the first rune of out that is neither a line break
// nor a rune that prints as itself (a control, a bidi override, invalid
// UTF-8), or "".
func visibleText(out string) string {
	if !utf8.ValidString(out) {
		return "invalid UTF-8"
	}
	for _, r := range out {
		if r != '\n' && (r == utf8.RuneError || r < 0x20 || r == 0x7f || !unicode.IsGraphic(r)) {
			return string(r)
		}
	}
	return ""
}

// Every host string is escaped in every format and on stderr: none can
// move the cursor, recolor the terminal or start a line of its own.
func TestHostileStringsEverywhere(t *testing.T) {
	// The same run with benign names gives the chain, with its trigger.
	benign := storyTrace(t, "loop0", "host", []string{"arcconf", "getconfig", "1"})
	ios, out, errb := testIO()
	if code := Execute(ios, []string{"analyze", benign, "-f", "json"}); code != ExitOK {
		t.Fatalf("exit %d: %s", code, errb)
	}
	var rep report.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || len(rep.Findings) == 0 || rep.Findings[0].Trigger == nil ||
		rep.Findings[0].Rule != "queue-freeze-stall" || len(rep.Findings[0].Steps) != 3 {
		t.Fatalf("the benign run does not give the chain with its trigger (%v): %s", err, out)
	}

	trace := storyTrace(t, hostileDev, hostileHost, hostileArgs)
	forged := regexp.MustCompile(`(?m)^[ \t>*#|-]*(#1 CRITICAL (forged|score 999)|forged)`)
	for _, format := range reportFormats {
		t.Run(format, func(t *testing.T) {
			ios, out, errb := testIO()
			if code := Execute(ios, []string{"analyze", trace, "-f", format}); code != ExitOK {
				t.Fatalf("exit %d: %s", code, errb)
			}
			s := out.String()
			if format == "json" {
				var rep report.Report
				if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
					t.Fatal(err)
				}
				// JSON keeps host strings as data (invalid UTF-8 aside).
				if len(rep.Findings) == 0 || rep.Findings[0].Trigger == nil || rep.Findings[0].Trigger.Args[1] != hostileArgs[1] ||
					rep.Devices[0].Name != hostileDev || rep.Host.Hostname != hostileHost {
					t.Errorf("the JSON report does not keep the host strings as they were: %+v", rep.Devices)
				}
				// Prose is text for every format: escaped where values entered it.
				for _, f := range rep.Findings {
					if strings.Contains(f.Explanation+f.Remedy, "\n#1") || strings.Contains(f.Title, "\x1b") {
						t.Errorf("finding prose holds a raw host string: %q %q", f.Title, f.Remedy)
					}
				}
				return
			}
			if r := visibleText(s); r != "" {
				t.Errorf("--format %s holds %q raw", format, r)
			}
			if m := forged.FindString(s); m != "" {
				t.Errorf("--format %s: a host string starts a line: %q", format, m)
			}
			switch format {
			case "text":
				if n := len(regexp.MustCompile(`(?m)^#\d+ `).FindAllString(s, -1)); n != len(rep.Findings) {
					t.Errorf("%d finding headings for %d findings", n, len(rep.Findings))
				}
				for _, want := range []string{`loop0\x1b[2J\n#1 CRITICAL forged dev`, `x\n#1 CRITICAL score 999.0`, `\u202egnp.exe`, `bad\xffbyte`} {
					if !strings.Contains(s, want) {
						t.Errorf("text lacks the escaped %q", want)
					}
				}
			case "markdown":
				if m := regexp.MustCompile(`(^|[^\\])(<img|\]\(https?:|\*\[)`).FindString(stripCode(s)); m != "" {
					t.Errorf("a host string is Markdown or HTML outside code, unescaped: %q", m)
				}
			case "html":
				if strings.Contains(s, "<img src=x") {
					t.Errorf("a host string is HTML")
				}
			}
		})
	}

	// stderr: --device names the trace's devices, escaped, in one line.
	ios, _, errb = testIO()
	if code := Execute(ios, []string{"analyze", trace, "--device", "sdz\x1b[31m"}); code != ExitError {
		t.Fatalf("exit %d, want %d", code, ExitError)
	}
	checkStderr(t, errb.String(), `"sdz\x1b[31m": no such device`, `only loop0\x1b[2J\n#1 CRITICAL forged dev`)

	// stderr: a rule that fails on the device names it escaped, in one line.
	rule := filepath.Join(t.TempDir(), "fails.yaml")
	if err := os.WriteFile(rule, []byte("id: fails\ntitle: x\nseverity: info\nscope: device\nwhen: Device.Stalls[99].Start > duration(\"0s\")\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ios, _, errb = testIO()
	if code := Execute(ios, []string{"analyze", trace, "--rules", rule}); code != ExitError {
		t.Fatalf("exit %d, want %d: %s", code, ExitError, errb)
	}
	checkStderr(t, errb.String(), "rule failed: fails at ", `(on loop0\x1b[2J\n#1 CRITICAL forged dev)`)
}

// checkStderr wants one line of visible text holding each of want.
func checkStderr(t *testing.T, s string, want ...string) {
	t.Helper()
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		t.Errorf("stderr is not one line: %q", s)
	}
	if r := visibleText(s); r != "" {
		t.Errorf("stderr holds %q raw: %q", r, s)
	}
	for _, w := range want {
		if !strings.Contains(s, w) {
			t.Errorf("stderr %q lacks %q", s, w)
		}
	}
}

// stripCode removes fenced blocks and code spans from Markdown (roughly:
// the escaping of what is left is checked by the report's own tests).
func stripCode(md string) string {
	var b bytes.Buffer
	inFence := false
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inFence = !inFence
			continue
		}
		if inFence {
			continue
		}
		b.WriteString(regexp.MustCompile("`+[^`]*`+").ReplaceAllString(line, ""))
		b.WriteByte('\n')
	}
	return b.String()
}
