package cmd

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/probes"
	"github.com/whyslow/whyslow/rules"
)

func testIO() (*IO, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &IO{In: strings.NewReader(""), Out: &out, ErrOut: &errb}, &out, &errb
}

func TestStorageFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want StorageOptions
	}{
		{"defaults", nil, StorageOptions{Duration: 60 * time.Second, MinLatency: time.Millisecond, BTF: probes.DefaultBTF, Outputs: Outputs{Format: "text", FailOn: "none"}}},
		{"short flags", []string{"-d", "20s", "-f", "json", "-o", "r.json"}, StorageOptions{Duration: 20 * time.Second, MinLatency: time.Millisecond, BTF: probes.DefaultBTF, Outputs: Outputs{Format: "json", Output: "r.json", FailOn: "none"}}},
		{"repeated devices", []string{"--device", "sda", "--device", "nvme0n1", "--min-latency", "500us", "--fail-on", "warning", "--rules", "/etc/whyslow"},
			StorageOptions{Duration: 60 * time.Second, MinLatency: 500 * time.Microsecond, Devices: []string{"sda", "nvme0n1"}, Rules: []string{"/etc/whyslow"}, BTF: probes.DefaultBTF, Outputs: Outputs{Format: "text", FailOn: "warning"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ios, _, _ := testIO()
			var got *StorageOptions
			c := NewCmdStorage(ios, func(o *StorageOptions) error { got = o; return nil })
			c.SetArgs(tt.args)
			c.SetOut(ios.Out)
			c.SetErr(ios.ErrOut)
			if err := c.Execute(); err != nil {
				t.Fatal(err)
			}
			got.IO = nil
			if got.Duration != tt.want.Duration || got.MinLatency != tt.want.MinLatency || got.Outputs != tt.want.Outputs ||
				!slices.Equal(got.Devices, tt.want.Devices) || !slices.Equal(got.Rules, tt.want.Rules) || got.BTF != tt.want.BTF {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestFailOn(t *testing.T) {
	crit := rules.Finding{Severity: rules.Critical, Title: "queue freezes"}
	warn := rules.Finding{Severity: rules.Warning, Title: "slow disk"}
	info := rules.Finding{Severity: rules.Info, Title: "nothing"}
	tests := []struct {
		level    string
		findings []rules.Finding
		wantExit bool
	}{
		{"none", []rules.Finding{crit}, false},
		{"critical", []rules.Finding{warn, info}, false},
		{"critical", []rules.Finding{warn, crit}, true},
		{"warning", []rules.Finding{warn}, true},
		{"warning", []rules.Finding{info}, false},
		{"warning", nil, false},
	}
	for _, tt := range tests {
		err := failOn(tt.level, tt.findings)
		var ee exitError
		got := err != nil
		if got != tt.wantExit {
			t.Errorf("failOn(%s, %d findings) = %v, want exit %v", tt.level, len(tt.findings), err, tt.wantExit)
			continue
		}
		if got {
			if ok := asExit(err, &ee); !ok || ee.code != ExitFindings || !strings.Contains(ee.msg, "--fail-on "+tt.level) {
				t.Errorf("failOn error %v, want exit code %d with a summary line", err, ExitFindings)
			}
		}
	}
}

func asExit(err error, ee *exitError) bool {
	e, ok := err.(exitError)
	if ok {
		*ee = e
	}
	return ok
}

func TestExecuteCommands(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("id: busy-device\nsummary: A device with many stalls.\ntitle: '{{.Device.Name}} stalls'\nseverity: warning\nscope: device\nwhen: Device.Stalls.Count() > 100\nscore: Device.Stalls.TotalMs()\nexplain: many stalls\nremedy: look\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantOut  []string
	}{
		{"version", []string{"version"}, 0, []string{"whyslow "}},
		{"rules list", []string{"rules", "list"}, 0, []string{"queue-freeze-stall", "uevent-freeze", "periodic-trigger", "slow-device", "nothing-found"}},
		{"rules list with extra dir", []string{"rules", "list", "--rules", dir}, 0, []string{"busy-device", "A device with many stalls."}},
		{"rules check", []string{"rules", "check", good}, 0, []string{"1 rule file(s) OK"}},
		{"completion", []string{"completion", "bash"}, 0, []string{"__start_whyslow"}},
		{"help names the subjects", []string{"diagnose", "--help"}, 0, []string{"storage"}},
		{"diagnose without subject", []string{"diagnose"}, ExitUsage, nil},
		{"unknown armed mode, diagnose", []string{"diagnose", "storage", "--armed-mode", "sometimes"}, ExitUsage, nil},
		{"unknown armed mode, serve", []string{"serve", "--armed-mode", "on"}, ExitUsage, nil},
		{"bad cgroup, diagnose", []string{"diagnose", "storage", "--cgroup", "/whyslow-no-such-cgroup"}, ExitUsage, nil},
		{"bad cgroup, serve", []string{"serve", "--armed-mode", "auto", "--listen", "127.0.0.1:0", "--cgroup", "/whyslow-no-such-cgroup"}, ExitUsage, nil},
		{"cgroup without armed mode auto, serve", []string{"serve", "--cgroup", "/"}, ExitUsage, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ios, out, errb := testIO()
			code := Execute(ios, tt.args)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, errb)
			}
			if strings.HasPrefix(tt.name, "unknown armed mode") && !strings.Contains(errb.String(), "--armed-mode") {
				t.Errorf("the error does not name --armed-mode: %q", errb)
			}
			if strings.Contains(tt.name, "cgroup") && !strings.Contains(errb.String(), "--cgroup") {
				t.Errorf("the error does not name --cgroup: %q", errb)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

var sampleProgress = diagnose.Progress{Elapsed: 3500 * time.Millisecond, Total: 10 * time.Second, Lost: 7,
	Probes: []diagnose.ProbeProgress{{Name: "exec", Events: 12}, {Name: "freeze", Events: 3}, {Name: "offcpu", Events: 40, Lost: 7},
		{Name: "queueenter", Events: 9}, {Name: "submit", Events: 4}, {Name: "uevent", Events: 2}}}

func TestProgressLine(t *testing.T) {
	tests := []struct {
		name  string
		width int
		want  []string
	}{
		{"every probe", 0, []string{"\r\033[K", "3s / 10s", "exec 12", "freeze 3", "offcpu 40 (7 lost)", "queueenter 9", "submit 4", "uevent 2", "LOST 7"}},
		{"cut to the terminal", 40, []string{"\r\033[K3s / 10s  exec 12, freeze 3, offcpu 40 "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ios, _, errb := testIO()
			ios.ErrWidth = tt.width
			progressLine(ios)(sampleProgress)
			got := errb.String()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("progress line %q lacks %q", got, w)
				}
			}
			if strings.Contains(got, "\n") {
				t.Errorf("progress line must stay on one line: %q", got)
			}
			if tt.width > 0 && len(strings.TrimPrefix(got, "\r\033[K")) >= tt.width {
				t.Errorf("progress line %q is not cut to %d columns", got, tt.width)
			}
		})
	}
}

// The progress line goes to a terminal, never to a pipe or in CI: the
// streams are described by the code SystemIO uses (systemIO), with the
// terminal check injected, and the display is the one storageRun uses.
func TestProgressOnlyOnATerminal(t *testing.T) {
	fakeTerm := func(tty bool) func(*os.File) (bool, int) {
		return func(*os.File) (bool, int) { return tty, 120 }
	}
	tests := []struct {
		name string
		term func(*os.File) (bool, int)
		ci   string
		want bool
	}{
		{"terminal", fakeTerm(true), "", true},
		{"terminal in CI", fakeTerm(true), "true", false},
		{"pipe", fakeTerm(false), "", false},
		{"a real pipe, checked for real", terminal, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			ios := systemIO(os.Stdin, w, w, tt.term, func(k string) string {
				if k == "CI" {
					return tt.ci
				}
				return ""
			})
			draw, clear := progress(ios)
			if draw != nil {
				draw(sampleProgress)
			}
			clear()
			w.Close()
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if written := len(got) > 0; written != tt.want {
				t.Errorf("progress written: %v (%q), want %v", written, got, tt.want)
			}
			if tt.want && (!strings.Contains(string(got), "offcpu 40 (7 lost)") || !strings.HasSuffix(string(got), "\r\033[K")) {
				t.Errorf("progress %q: no line, or not cleared at the end", got)
			}
		})
	}
}

// --rules takes files and directories, repeated; every mistake in them is
// on one stderr line, each bad file named with its line and column.
func TestRulesFlag(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rule := func(id string) string {
		return "id: " + id + "\ntitle: x\nseverity: info\nscope: device\nwhen: Device.Stalls.Count() > 1000000\n"
	}
	one := write("one/mine.yaml", rule("mine"))
	write("one/notes.txt", "not a rule")
	two := write("two.rule", rule("other")) // a file named on the command line is read whatever its name
	explains := write("three/explains.yml", rule("explainer")+"explains: other\n")
	badA := write("bad/a.yaml", "id: a\ntitle: x\nseverity: warning\nscope: device\nwhen: Device.Stalls.Count() >\n")
	badB := write("bad/b.yaml", "id: b\ntitle: \"{{.Nope}\"\nseverity: bad\nscope: device\nwhen: \"true\"\n")
	write("bad/ok.yaml", rule("fine"))
	dup := write("dup.yaml", rule("mine"))
	missing := filepath.Join(dir, "nope")
	trace := filepath.Join("..", "testdata", "traces", "loop-control.trace.gz")
	tests := []struct {
		name     string
		args     []string
		wantCode int
		want     []string // in stdout when 0, else in the one stderr line
	}{
		{"a directory", []string{"rules", "list", "--rules", filepath.Dir(one)}, 0, []string{"mine"}},
		{"a file", []string{"rules", "list", "--rules", two}, 0, []string{"other"}},
		{"repeated, explaining across paths", []string{"rules", "list", "--rules", filepath.Dir(one), "--rules", two, "--rules", filepath.Dir(explains)}, 0,
			[]string{"mine", "other", "explainer"}},
		{"analyze with a file", []string{"analyze", trace, "--rules", two, "-f", "json"}, 0, []string{`"schema"`}},
		{"several bad files", []string{"rules", "list", "--rules", filepath.Dir(badA)}, ExitError,
			[]string{"--rules: 3 errors: " + badA + ":5:29: when: unexpected token EOF; " + badB + ":2:", badB + ":3:11: severity"}},
		{"bad files in analyze", []string{"analyze", trace, "--rules", filepath.Dir(badA)}, ExitError, []string{badA + ":5:29", badB + ":3:11"}},
		{"missing path", []string{"rules", "list", "--rules", two, "--rules", missing}, ExitError, []string{"--rules: " + missing + ": no such file or directory"}},
		{"same id in two paths", []string{"rules", "list", "--rules", one, "--rules", dup}, ExitError, []string{dup + ":1:5: duplicate id \"mine\" (first in " + one}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ios, out, errb := testIO()
			code := Execute(ios, tt.args)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, errb)
			}
			if strings.HasPrefix(tt.name, "unknown armed mode") && !strings.Contains(errb.String(), "--armed-mode") {
				t.Errorf("the error does not name --armed-mode: %q", errb)
			}
			got := out.String()
			if tt.wantCode != 0 {
				got = errb.String()
				if lines := strings.Split(strings.TrimRight(got, "\n"), "\n"); len(lines) != 1 || !strings.HasPrefix(lines[0], "whyslow: ") {
					t.Errorf("stderr is not one 'whyslow: ...' line: %q", got)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}
