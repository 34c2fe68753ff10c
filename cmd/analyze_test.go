package cmd

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/whyslow/whyslow/diagnose"
	"github.com/whyslow/whyslow/internal/event"
	"github.com/whyslow/whyslow/internal/timeline"
	"github.com/whyslow/whyslow/internal/tracefile"
)

func TestAnalyzeFlags(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want AnalyzeOptions
	}{
		{"defaults", []string{"t.gz"}, AnalyzeOptions{Trace: "t.gz", Outputs: Outputs{Format: "text", FailOn: "none"}}},
		{"everything", []string{"t.gz", "-f", "html", "-o", "r.html", "--device", "loop0", "--rules", "/r", "--rules", "x.yaml", "--fail-on", "critical", "--stacks-out", "s.pb.gz", "--folded", "s.folded"},
			AnalyzeOptions{Trace: "t.gz", Rules: []string{"/r", "x.yaml"}, Devices: []string{"loop0"}, Outputs: Outputs{Format: "html", Output: "r.html", FailOn: "critical", StacksOut: "s.pb.gz", Folded: "s.folded"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ios, _, _ := testIO()
			var got *AnalyzeOptions
			c := NewCmdAnalyze(ios, func(o *AnalyzeOptions) error { got = o; return nil })
			c.SetArgs(tt.args)
			if err := c.Execute(); err != nil {
				t.Fatal(err)
			}
			if got.Trace != tt.want.Trace || !slices.Equal(got.Rules, tt.want.Rules) || !slices.Equal(got.Devices, tt.want.Devices) || got.Outputs != tt.want.Outputs {
				t.Fatalf("options\n got %+v\nwant %+v", *got, tt.want)
			}
		})
	}
}

func TestFormatsAndOutputsAreChecked(t *testing.T) {
	for _, args := range [][]string{
		{"analyze", "t.gz", "--format", "pdf"},
		{"diagnose", "storage", "--format", "xml"},
		{"diagnose", "storage", "--record", "x", "--folded", "x"},
		{"analyze", "t.gz", "--output", "r", "--stacks-out", "r"},
	} {
		ios, _, errb := testIO()
		if code := Execute(ios, args); code != ExitUsage {
			t.Errorf("%v: exit %d, want %d (%s)", args, code, ExitUsage, errb)
		}
	}
	for _, f := range []string{"markdown", "html"} {
		ios, _, errb := testIO()
		c := NewCmdStorage(ios, func(*StorageOptions) error { return nil })
		c.SetArgs([]string{"--format", f})
		if err := c.Execute(); err != nil {
			t.Errorf("--format %s refused: %v %s", f, err, errb)
		}
	}
}

// A failed analysis leaves none of the files it was to write.
func TestAnalyzeLeavesNoFilesOnError(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "bad.trace.gz")
	if err := os.WriteFile(trace, []byte("not a trace"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, folded := filepath.Join(dir, "r.md"), filepath.Join(dir, "s.folded")
	ios, _, errb := testIO()
	if code := Execute(ios, []string{"analyze", trace, "-f", "markdown", "-o", out, "--folded", folded}); code != ExitError {
		t.Fatalf("exit %d, want %d", code, ExitError)
	}
	if !strings.Contains(errb.String(), trace) {
		t.Errorf("error %q does not name the trace", errb)
	}
	for _, p := range []string{out, folded} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s was left behind", p)
		}
	}
}

// A panic in a command is a bug: one line and exit code 1, never Go's 2
// (which means bad flags).
func TestPanicIsAnErrorNotAUsageMistake(t *testing.T) {
	ios, out, errb := testIO()
	root := NewRootCmd(ios)
	root.AddCommand(&cobra.Command{Use: "boom", RunE: func(*cobra.Command, []string) error {
		var s []int
		_ = s[3]
		return nil
	}})
	if code := execute(ios, root, []string{"boom"}); code != ExitError {
		t.Errorf("exit %d, want %d", code, ExitError)
	}
	lines := strings.Split(strings.TrimRight(errb.String(), "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "whyslow: internal error: runtime error: index out of range") {
		t.Errorf("stderr %q, want one internal-error line", errb)
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q", out)
	}
}

// traceOf is a trace file holding the lines given after its run record.
func traceOf(t *testing.T, lines ...string) string {
	t.Helper()
	all := append([]string{
		`{"format":"whyslow.trace","version":1,"encoding":"json-lines","writer":"whyslow 0.1.0"}`,
		`{"type":"run","version":"0.1.0","started_at":"2026-11-03T10:00:00Z","requested_duration":20000000000,"device_filter":[]}`,
	}, lines...)
	all = append(all, fmt.Sprintf(`{"type":"end","records":%d}`, len(all)-1))
	path := filepath.Join(t.TempDir(), "x.trace")
	if err := os.WriteFile(path, []byte(strings.Join(all, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Extreme values a well-formed trace can hold (at the bounds of
// docs/trace-format.md) give a report in every format; impossible ones are
// one error line naming the file and the line.
func TestAnalyzeExtremeValues(t *testing.T) {
	dev := `"dev":{"major":7,"minor":0,"name":"loop0"}`
	task := `"task":{"pid":1,"tgid":1,"comm":"fio"}`
	tests := []struct {
		name     string
		lines    []string
		wantCode int
		want     string // in stderr when failing, in the text report else
	}{
		{"longest window", []string{`{"type":"timeline","start":0,"end":31622400000000000,"min_latency":31622400000000000}`}, 0, "observed    8784h"},
		{"empty window", []string{`{"type":"timeline","start":5,"end":5}`}, 0, "min latency 0, devices: all"},
		{"longest spans, huge counts", []string{
			`{"type":"timeline","start":3600000000000,"end":31626000000000000}`,
			`{"type":"device",` + dev + `,"submit":{"count":18446744073709551615,"sum_ns":18446744073709551615,"max_ns":31622400000000000,"slots":[[327,18446744073709551615],[0,18446744073709551615]]},"service":{"count":1,"sum_ns":9223372036854775807,"max_ns":31622400000000000,"slots":[[327,1]]}}`,
			`{"type":"slow_submit","start":0,"latency":31622400000000000,` + task + `,` + dev + `}`,
			`{"type":"slow_submit","start":1,"latency":31622399999999999,` + task + `,` + dev + `}`,
			`{"type":"offcpu","start":0,"duration":31622400000000000,` + task + `,"kernel_stack":[{"addr":1,"symbol":"__bio_queue_enter"}]}`,
			`{"type":"freeze","start":0,"duration":31622400000000000,` + task + `,` + dev + `}`,
			`{"type":"uevent","time":31629600000000000,"action":"change","subsystem":"block","devname":"loop0"}`,
		}, 0, "loop0"},
		{"a 292-year window", []string{`{"type":"timeline","start":0,"end":9223372036854775807}`}, 1,
			"line 3: timeline record: field end: a window of 106751 days (0 to 9223372036854775807) is longer than any run (at most 366 days)"},
		{"a latency of 2^62 ns", []string{`{"type":"timeline","start":0,"end":10}`, `{"type":"slow_submit","start":1,"latency":4611686018427387904}`}, 1,
			"line 4: slow_submit record: field latency: 4611686018427387904 ns (53375 days) is longer than any run (at most 366 days)"},
		{"negative min latency", []string{`{"type":"timeline","start":0,"end":9223372036854775807,"min_latency":-9223372036854775808}`}, 1,
			"line 3: timeline record: field min_latency: a duration cannot be negative"},
		{"negative latency", []string{`{"type":"timeline","start":0,"end":10}`, `{"type":"slow_submit","start":1,"latency":-1}`}, 1,
			"line 4: slow_submit record: field latency: a duration cannot be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			trace := traceOf(t, tt.lines...)
			for _, format := range reportFormats {
				ios, out, errb := testIO()
				code := Execute(ios, []string{"analyze", trace, "--format", format, "--folded", filepath.Join(t.TempDir(), "f"), "--stacks-out", filepath.Join(t.TempDir(), "p")})
				if code != tt.wantCode {
					t.Fatalf("--format %s: exit %d, want %d; stderr %q", format, code, tt.wantCode, errb)
				}
				if tt.wantCode != 0 {
					if !strings.HasPrefix(errb.String(), "whyslow: reading trace "+trace+": ") || !strings.Contains(errb.String(), tt.want) || strings.Count(errb.String(), "\n") != 1 {
						t.Errorf("stderr %q, want one line naming %s and saying %q", errb, trace, tt.want)
					}
					continue
				}
				if errb.Len() != 0 {
					t.Errorf("--format %s: stderr %q", format, errb)
				}
				if format == "text" && !strings.Contains(out.String(), tt.want) {
					t.Errorf("report lacks %q:\n%s", tt.want, out)
				}
			}
		})
	}
}

// loopDevice returns the loop device a recorded trace of testdata/traces
// observed (the one its scenario wrote to; which loopN depends on the host
// that recorded it).
func loopDevice(t *testing.T, trace string) string {
	t.Helper()
	tl, _, err := tracefile.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range tl.Devices {
		if strings.HasPrefix(d.Dev.Name, "loop") {
			return d.Dev.Name
		}
	}
	t.Fatalf("%s has no loop device", trace)
	return ""
}

const brokenRule = "id: broken-index\ntitle: x\nseverity: warning\nscope: device\nwhen: |\n  Device.Stalls.Count() >= 0 &&\n    Device.Stalls[100000].Start > duration(\"1s\")\n"

// A rule that fails while evaluated loses nothing else: the report (with
// the other rules' findings and the failed rule named) and the stack files
// are written, stderr says which rule of which file, and the exit code is 1.
func TestAnalyzeRuleFailureKeepsTheReport(t *testing.T) {
	dir := t.TempDir()
	rulesDir := filepath.Join(dir, "rules")
	if err := os.Mkdir(rulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	rule := filepath.Join(rulesDir, "broken.yaml")
	if err := os.WriteFile(rule, []byte(brokenRule), 0o644); err != nil {
		t.Fatal(err)
	}
	trace := filepath.Join("..", "testdata", "traces", "loop-udev-freeze.trace.gz")
	loop := loopDevice(t, trace)
	for _, tt := range []struct{ format, want string }{
		{"json", `"rule": "broken-index"`},
		{"text", "!! 1 RULE FAILED"},
		{"markdown", "`broken-index`"},
		{"html", `id="rule-errors"`},
	} {
		t.Run(tt.format, func(t *testing.T) {
			out, folded := filepath.Join(dir, "report."+tt.format), filepath.Join(dir, "stacks.folded")
			ios, stdout, errb := testIO()
			code := Execute(ios, []string{"analyze", trace, "--rules", rulesDir, "-f", tt.format, "-o", out, "--folded", folded, "--fail-on", "critical"})
			if code != ExitError {
				t.Errorf("exit %d, want %d", code, ExitError)
			}
			lines := strings.Split(strings.TrimRight(errb.String(), "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "whyslow: rule failed: broken-index at "+rule+":7:") ||
				!strings.Contains(lines[0], "when (on "+loop+"): index out of range") {
				t.Errorf("stderr %q, want one line naming the rule and its file", errb)
			}
			rep, err := os.ReadFile(out)
			if err != nil {
				t.Fatalf("the report is gone: %v", err)
			}
			for _, w := range []string{tt.want, "queue-freeze-stall", rule} {
				if !strings.Contains(string(rep), w) {
					t.Errorf("report lacks %q", w)
				}
			}
			if fi, err := os.Stat(folded); err != nil || fi.Size() == 0 {
				t.Errorf("the folded stacks are gone: %v", err)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout %q", stdout)
			}
		})
	}
}

// The live run writes its trace as it goes (streamRecord) and its other
// outputs through the same finish: with a failed rule, the --record trace
// and the report are kept and the run exits 1.
func TestFinishKeepsTheTraceWhenARuleFails(t *testing.T) {
	tl, info, err := tracefile.ReadFile(filepath.Join("..", "testdata", "traces", "loop-control.trace.gz"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rule := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(rule, []byte(brokenRule), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := loadRules([]string{rule})
	if err != nil {
		t.Fatal(err)
	}
	res, err := diagnose.Analyze(tl, set, nil)
	if err != nil {
		t.Fatal(err)
	}
	ios, _, _ := testIO()
	o := Outputs{Format: "json", Output: filepath.Join(dir, "r.json"), FailOn: "none", Record: filepath.Join(dir, "run.trace.gz")}
	outs, err := openOutputs(ios, o, "")
	if err != nil {
		t.Fatal(err)
	}
	rec, done, err := outs.streamRecord(info)
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.Begin(tl); err != nil {
		t.Fatal(err)
	}
	if err := rec.Checkpoint(&timeline.Timeline{Probes: tl.Probes}, tl.Start); err != nil {
		t.Fatal(err)
	}
	if err := rec.Finish(tl); err != nil {
		t.Fatal(err)
	}
	done()
	err = outs.finish(res, info)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != ExitError || !strings.Contains(ee.msg, rule) {
		t.Errorf("finish = %v, want exit %d naming %s", err, ExitError, rule)
	}
	back, _, err := tracefile.ReadFile(o.Record)
	if err != nil {
		t.Fatalf("the trace is gone or broken: %v", err)
	}
	if len(back.SlowSubmits) != len(tl.SlowSubmits) || len(back.Devices) != len(tl.Devices) {
		t.Errorf("the trace lost events")
	}
	if rep, err := os.ReadFile(o.Output); err != nil || !strings.Contains(string(rep), `"rule_errors": [`) {
		t.Errorf("the report is gone or lacks the rule error: %v", err)
	}
}

// A --device the trace has no device of is an error naming those it has,
// as diagnose refuses a device the host does not have.
func TestAnalyzeUnknownDevice(t *testing.T) {
	trace := filepath.Join("..", "testdata", "traces", "loop-control.trace.gz")
	loop := loopDevice(t, trace)
	tests := []struct {
		name     string
		devices  []string
		wantCode int
		want     string
	}{
		{"known", []string{loop}, 0, ""},
		{"unknown", []string{"nosuch"}, ExitError, `whyslow: --device "nosuch": no such device in the trace ` + trace + `, which has only `},
		{"one of two unknown", []string{loop, "sdz", "sdz"}, ExitError, `--device "sdz": no such device`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "r.txt")
			args := []string{"analyze", trace, "-o", out}
			for _, d := range tt.devices {
				args = append(args, "--device", d)
			}
			ios, _, errb := testIO()
			if code := Execute(ios, args); code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.wantCode, errb)
			}
			if tt.wantCode == 0 {
				return
			}
			if !strings.Contains(errb.String(), tt.want) || !strings.Contains(errb.String(), loop) || strings.Count(errb.String(), "\n") != 1 {
				t.Errorf("stderr %q, want one line with %q and the trace's devices", errb, tt.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("a report was written")
			}
		})
	}
}

// A recorded trace whose uevent probe was unavailable: the rules that need
// uevents are reported as not evaluated, with the probe's reason, in every
// format; the queue freeze the trace shows is still found.
func TestAnalyzeNotEvaluated(t *testing.T) {
	tl, info, err := tracefile.ReadFile(filepath.Join("..", "testdata", "traces", "loop-udev-freeze.trace.gz"))
	if err != nil {
		t.Fatal(err)
	}
	const why = "netlink socket: permission denied"
	for i := range tl.Probes {
		if tl.Probes[i].Name == event.ProbeUevent {
			tl.Probes[i] = event.ProbeStatus{Name: event.ProbeUevent, Status: event.StatusUnavailable, Reason: why}
		}
	}
	tl.Uevents = nil
	// Probes newer than the trace ran too: only the uevent rules are not
	// evaluated.
	for _, p := range []string{event.ProbeIOLimits, event.ProbeSyscall, event.ProbeWriteback} {
		if !slices.ContainsFunc(tl.Probes, func(st event.ProbeStatus) bool { return st.Name == p }) {
			tl.Probes = append(tl.Probes, event.ProbeStatus{Name: p, Status: event.StatusOK, Mechanism: event.MechCgroupfs})
		}
	}
	dir := t.TempDir()
	trace := filepath.Join(dir, "no-uevents.trace.gz")
	f, err := os.Create(trace)
	if err != nil {
		t.Fatal(err)
	}
	if err := tracefile.Write(f, tl, info); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tt := range []struct{ format, want string }{
		{"json", `"not_evaluated": [`},
		// (and the rules that need probes the trace predates: their number
		// grows with the rules)
		{"text", "RULES NOT EVALUATED"},
		{"markdown", "rules were not evaluated"},
		{"html", `id="not-evaluated"`},
	} {
		t.Run(tt.format, func(t *testing.T) {
			ios, stdout, errb := testIO()
			if code := Execute(ios, []string{"analyze", trace, "-f", tt.format}); code != ExitOK {
				t.Fatalf("exit %d: %s", code, errb)
			}
			for _, w := range []string{tt.want, "uevent-freeze", "periodic-trigger", "needs Device.Uevents: uevent unavailable (" + why + ")", "queue-freeze-stall"} {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("report lacks %q", w)
				}
			}
		})
	}
}

// No run is longer than a trace may be.
func TestRunLengthIsBounded(t *testing.T) {
	for _, args := range [][]string{{"--duration", "9000h"}, {"--min-latency", "8785h"}} {
		ios, _, errb := testIO()
		if code := Execute(ios, append([]string{"diagnose", "storage"}, args...)); code != ExitUsage ||
			!strings.Contains(errb.String(), "at most 8784h0m0s (366 days)") {
			t.Errorf("%v: exit %d: %s", args, code, errb)
		}
	}
}
