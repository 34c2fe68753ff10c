package report

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/facts"
	machine "github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/rules"
)

// Tests of the Markdown and HTML renderers: golden files, escaping of host
// strings, and the HTML page as headless Chromium renders it.

// withExecs adds to a scenario the command its trigger names, with its
// execs, as facts.Build would, so the HTML picture marks them.
func withExecs(sc scenario) scenario {
	for _, f := range sc.findings {
		if tr := f.Trigger; tr != nil && sc.run != nil {
			c := &facts.Command{Filename: tr.Filename, Comm: tr.Comm, ParentComm: tr.ParentComm, Args: tr.Args, Count: tr.Count, Period: tr.Period}
			for i := 0; i < tr.Count; i++ {
				at := time.Duration(i)*tr.Period - 50*time.Millisecond
				c.Execs = append(c.Execs, facts.Point{At: max(at, 0), Pid: tr.Pid + uint32(i), Comm: tr.Comm, What: tr.Filename})
				c.Pids = append(c.Pids, tr.Pid+uint32(i))
			}
			sc.run.Commands = append(sc.run.Commands, c)
		}
	}
	return sc
}

func renderMarkdown(t *testing.T, r *Report) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := Markdown(&b, r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func renderHTML(t *testing.T, sc scenario) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := HTML(&b, sc.build(), sc.run); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestGoldenMarkdownAndHTML(t *testing.T) {
	for _, s := range scenarios {
		t.Run(s.name, func(t *testing.T) {
			sc := withExecs(s.make())
			golden(t, s.name+".md.golden", renderMarkdown(t, sc.build()))
			golden(t, s.name+".html.golden", renderHTML(t, sc))
		})
	}
}

const hostileCmd = `</script><img src=x onerror=alert(1)>`

// hostileScenario puts markup, Markdown and control characters everywhere
// a host string can appear.
func hostileScenario() scenario {
	sc := freezeChain()
	comm := hostileCmd
	f := &sc.findings[1]
	f.Title = "udev " + hostileCmd + " [click](https://evil.example) | col"
	f.Explanation = "# not a heading\n" + hostileCmd + " *em* @someone www.evil.example\n\n1. not a list"
	f.Remedy = "run `rm -rf /` " + hostileCmd
	f.Processes[0].Comm = comm
	f.Trigger.Comm = comm
	f.Trigger.ParentComm = "sh\n<b>"
	f.Trigger.Args = []string{"arcconf", hostileCmd, "a|b", "```", "line\nbreak"}
	f.Trigger.Filename = "/tmp/" + hostileCmd
	f.Trigger.Pipeline = hostileCmd + " | grep x"
	f.Evidence = append(f.Evidence, rules.Evidence{Name: "who<i>", Value: hostileCmd + "|x"})
	sc.run.Devices[1].Freezes[0].Comm = hostileCmd
	sc.run.Devices[1].Stalls[0].Comm = hostileCmd
	sc.tl.Hostname = hostileCmd
	sc.tl.Probes[0].Reason = hostileCmd
	for i := range sc.run.Devices[1].QueueWaits {
		sc.run.Devices[1].QueueWaits[i].Comm = hostileCmd
		if k := sc.run.Devices[1].QueueWaits[i].KernelStack; len(k) > 0 {
			ks := append([]event.Frame(nil), k...)
			ks[0].Symbol = hostileCmd + "```"
			sc.run.Devices[1].QueueWaits[i].KernelStack = ks
		}
	}
	sc = withProcesses(sc, hostileCmd, "/a|b\n"+hostileCmd, hostileCmd+"```")
	return withExecs(sc)
}

func TestHTMLEscapesHostStrings(t *testing.T) {
	page := string(renderHTML(t, hostileScenario()))
	for _, bad := range []string{"<img", "<script", "</script>", "sh\n<b>", "<i>"} {
		if strings.Contains(strings.ToLower(page), bad) {
			t.Errorf("page holds %q unescaped", bad)
		}
	}
	if !strings.Contains(page, "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") {
		t.Errorf("the hostileCmd string is not shown escaped")
	}
	for _, forbidden := range []string{"<script", "src=\"http", "href=\"http", "@import", "url("} {
		if strings.Contains(page, forbidden) {
			t.Errorf("page loads or runs something: %q", forbidden)
		}
	}
}

func TestMarkdownEscapesHostStrings(t *testing.T) {
	md := string(renderMarkdown(t, hostileScenario().build()))
	// Outside code spans and fences, nothing may be live markup.
	prose := stripCode(md)
	for _, re := range []string{`(^|[^\\])<img`, `(^|[^\\])</script`, `(^|[^\\])<b>`, `(^|[^\\])\]\(`, `(^|[^\\])\[click`, `(?m)^# not a heading`, `(?m)^1\. not a list`, `(^|[^\\])@someone`, `(^|[^\\])https://evil`, `www\.evil`} {
		if regexp.MustCompile(re).MatchString(prose) {
			t.Errorf("markdown prose matches %s: it would be live", re)
		}
	}
	// Tables keep their columns: every row of a table has as many cells as its header.
	var cols int
	for _, line := range strings.Split(md, "\n") {
		if !strings.HasPrefix(line, "| ") {
			cols = 0
			continue
		}
		n := len(regexp.MustCompile(`(^|[^\\])\|`).FindAllString(line, -1)) - 1
		if cols == 0 {
			cols = n
		} else if n != cols && !strings.HasPrefix(line, "| ---") {
			t.Errorf("table row has %d cells, header %d: %s", n, cols, line)
		}
	}
	if strings.Contains(md, "line\nbreak") || strings.Contains(md, "sh\n<b>") {
		t.Errorf("a host newline reached the Markdown")
	}
}

// chromium returns the browser binary, or skips (fails under CI, where
// .ci/run installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (the Makefile's TEST_DEBS and .ci/run install Debian's chromium)")
	}
	t.Skip("chromium not installed (apt-get install chromium): the HTML page is not checked in a browser")
	return ""
}

// headless runs Chromium on a local file with networking off; extra are
// the action flags (--dump-dom, --screenshot=...).
func headless(t *testing.T, bin, page string, extra ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	args := []string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + t.TempDir()}
	args = append(args, extra...)
	args = append(args, "file://"+page)
	cmd := exec.CommandContext(ctx, bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v\n%s", extra, err, errb.String())
	}
	return out.String()
}

// The page renders in a real browser, with the picture's marks and the
// findings in its DOM, and the hostileCmd strings stay text.
func TestHTMLInChromium(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a browser")
	}
	bin := chromium(t)
	if os.Geteuid() == 0 {
		// A browser takes both CPUs for seconds: not while another test
		// process runs a scenario whose latencies it would change (go
		// test runs packages in parallel).
		machine.Hold(t)
	}
	dir := t.TempDir()
	for _, c := range []struct {
		name string
		sc   scenario
	}{{"freeze-chain", withExecs(freezeChain())}, {"hostileCmd", hostileScenario()}} {
		t.Run(c.name, func(t *testing.T) {
			page := filepath.Join(dir, c.name+".html")
			if err := os.WriteFile(page, renderHTML(t, c.sc), 0o644); err != nil {
				t.Fatal(err)
			}
			dom := headless(t, bin, page, "--dump-dom")
			for _, want := range []*regexp.Regexp{
				regexp.MustCompile(`<rect class="freeze"[^>]*width="[0-9.]+"`),
				regexp.MustCompile(`<line class="uevent"`),
				regexp.MustCompile(`<path class="exec"`),
				regexp.MustCompile(`<circle class="submit"`),
				regexp.MustCompile(`<ol class="findings" id="findings">\s*<li class="finding sev-critical" id="finding-1">`),
				regexp.MustCompile(`<li class="finding sev-info" id="finding-2">`),
			} {
				if !want.MatchString(dom) {
					t.Errorf("rendered DOM lacks %s", want)
				}
			}
			if n := strings.Count(dom, `class="freeze"`); n != 4 {
				t.Errorf("%d freeze spans in the DOM, want 4", n)
			}
			if n := strings.Count(dom, `class="uevent"`); n != 30 {
				t.Errorf("%d uevent marks in the DOM, want 30", n)
			}
			if n := strings.Count(dom, `class="exec"`); n != 30 {
				t.Errorf("%d exec marks in the DOM, want 30", n)
			}
			if strings.Contains(dom, "<img") || strings.Contains(dom, "<script") {
				t.Errorf("the DOM holds an injected element")
			}
			if c.name == "hostileCmd" && !strings.Contains(dom, "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;") {
				t.Errorf("the hostileCmd command line is not shown as text")
			}
			if os.Getenv("WHYSLOW_SCREENSHOT_DIR") != "" {
				shot := filepath.Join(os.Getenv("WHYSLOW_SCREENSHOT_DIR"), c.name+".png")
				headless(t, bin, page, "--screenshot="+shot, "--window-size=1400,1100", "--hide-scrollbars")
				t.Logf("screenshot: %s", shot)
			}
		})
	}
}

// Control and bidi characters from the host never reach the page raw.
func TestMarkdownAndHTMLEscapeControlCharacters(t *testing.T) {
	r := hostile()
	var md, page bytes.Buffer
	if err := Markdown(&md, r); err != nil {
		t.Fatal(err)
	}
	if err := HTML(&page, r, nil); err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{"markdown": md.String(), "html": page.String()} {
		for _, c := range []string{"\x1b", "\x07", "\x9b", "\u202e", "\r", "\x00", "\x7f", "\xff"} {
			if strings.Contains(out, c) {
				t.Errorf("%s output contains %q raw", name, c)
			}
		}
		if !strings.Contains(out, `\u202egnp.exe`) {
			t.Errorf("%s output lacks the escaped bidi override", name)
		}
	}
}

// stripCode removes fenced blocks and code spans (CommonMark: a span closes
// at the next backtick run of the same length), leaving what GitHub would
// interpret as Markdown.
func stripCode(md string) string {
	var out strings.Builder
	fence := ""
	for _, line := range strings.Split(md, "\n") {
		trimmed := strings.TrimLeft(line, " ")
		if fence != "" {
			if strings.TrimSpace(trimmed) == fence {
				fence = ""
			}
			continue
		}
		if strings.HasPrefix(trimmed, "```") {
			fence = trimmed[:len(trimmed)-len(strings.TrimLeft(trimmed, "`"))]
			continue
		}
		for i := 0; i < len(line); {
			if line[i] == '\\' && i+1 < len(line) {
				out.WriteString(line[i : i+2])
				i += 2
				continue
			}
			if line[i] != '`' {
				out.WriteByte(line[i])
				i++
				continue
			}
			n := len(line[i:]) - len(strings.TrimLeft(line[i:], "`"))
			run := line[i : i+n]
			rest := line[i+n:]
			end := -1
			for j := 0; j < len(rest); {
				if rest[j] != '`' {
					j++
					continue
				}
				m := len(rest[j:]) - len(strings.TrimLeft(rest[j:], "`"))
				if m == n {
					end = j
					break
				}
				j += m
			}
			if end < 0 {
				out.WriteString(run)
				i += n
				continue
			}
			i += n + end + n
		}
		out.WriteByte('\n')
	}
	return out.String()
}
