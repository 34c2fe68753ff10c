package main

// Recorded runs: `analyze` on the traces in testdata/traces must give the
// golden reports next to them (no root needed), a live run's report must
// equal the report of its own trace (root), and bad trace files must fail
// with one clear line.
//
// Adding a trace: drop NAME.trace.gz into testdata/traces and run
//   go test ./cmd/whyslow -run TestAnalyzeTraces -update
// to write its golden reports (NAME.txt, .json, .md, .html, .folded).
// The loop-device traces are recorded again with (root, udevd, fio)
//   go test ./cmd/whyslow -run TestRecordTraces -record
// and those named after a kernel of the matrix (NAME-6.12) by make vmtest:
// its scenarios record into the guest's results (tracePath), see
// docs/trace-format.md.

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

var (
	update = flag.Bool("update", false, "rewrite the golden reports of testdata/traces")
	record = flag.Bool("record", false, "record the loop-device traces of testdata/traces again (root)")
)

var tracesDir = filepath.Join("..", "..", "testdata", "traces")

// goldenFormats are the report formats compared, with their file suffix.
var goldenFormats = []struct{ format, ext string }{
	{"text", ".txt"}, {"json", ".json"}, {"markdown", ".md"}, {"html", ".html"},
}

func TestAnalyzeTraces(t *testing.T) {
	traces, err := filepath.Glob(filepath.Join(tracesDir, "*.trace.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if len(traces) == 0 {
		t.Fatalf("no traces in %s", tracesDir)
	}
	for _, trace := range traces {
		name := strings.TrimSuffix(filepath.Base(trace), ".trace.gz")
		t.Run(name, func(t *testing.T) {
			base := filepath.Join(tracesDir, name)
			for _, f := range goldenFormats {
				r := run(t, "analyze", trace, "--format", f.format)
				if r.code != 0 || r.stderr != "" {
					t.Fatalf("analyze --format %s: exit %d, stderr %q", f.format, r.code, r.stderr)
				}
				compareGolden(t, base+f.ext, []byte(r.stdout))
			}
			folded := filepath.Join(t.TempDir(), "stacks.folded")
			profile := filepath.Join(t.TempDir(), "stacks.pb.gz")
			if r := run(t, "analyze", trace, "--folded", folded, "--stacks-out", profile, "--output", filepath.Join(t.TempDir(), "r.txt")); r.code != 0 {
				t.Fatalf("analyze --folded: exit %d, stderr %q", r.code, r.stderr)
			}
			got, err := os.ReadFile(folded)
			if err != nil {
				t.Fatal(err)
			}
			compareGolden(t, base+".folded", got)
			checkProfile(t, profile)
		})
	}
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test ./cmd/whyslow -run TestAnalyzeTraces -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the report analyze writes now (go test ./cmd/whyslow -run TestAnalyzeTraces -update rewrites it); got:\n%s", path, got)
	}
}

// checkProfile parses the pprof profile with pprof itself.
func checkProfile(t *testing.T, path string) {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Logf("go not in PATH: profile %s not parsed", path)
		return
	}
	out, err := exec.Command(goBin, "tool", "pprof", "-raw", path).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof -raw %s: %v\n%s", path, err, out)
	}
	if !strings.Contains(string(out), "samples/count blocked/microseconds") {
		t.Errorf("profile lacks the sample types:\n%s", out)
	}
}

// The report of a trace is the report of the live run that recorded it,
// byte for byte, and so are the stack files.
func TestRecordedRunReportsTheSameAsAnalyze(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 128<<20)
	scenario.QueueRule(t, dev)
	scenario.Monitor(t, dev, time.Second)
	scenario.Writer(t, dev, 15*time.Second)
	time.Sleep(time.Second)

	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	live := run(t, "diagnose", "storage", "--duration", "5s", "--format", "html", "--output", p("live.html"),
		"--record", p("run.trace.gz"), "--stacks-out", p("live.pb.gz"), "--folded", p("live.folded"))
	if live.code != 0 {
		t.Fatalf("diagnose: exit %d, stderr %q", live.code, live.stderr)
	}
	again := run(t, "analyze", p("run.trace.gz"), "--format", "html", "--output", p("again.html"),
		"--stacks-out", p("again.pb.gz"), "--folded", p("again.folded"))
	if again.code != 0 {
		t.Fatalf("analyze: exit %d, stderr %q", again.code, again.stderr)
	}
	for _, pair := range [][2]string{{"live.html", "again.html"}, {"live.folded", "again.folded"}, {"live.pb.gz", "again.pb.gz"}} {
		a, err := os.ReadFile(p(pair[0]))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(p(pair[1]))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s and %s differ: the analysis of the trace is not the live report", pair[0], pair[1])
		}
	}
	if fi, err := os.Stat(p("run.trace.gz")); err == nil {
		t.Logf("trace of 5s: %d bytes", fi.Size())
	}
}

// TestRecordTraces records the loop-device traces of testdata/traces again:
// the story (a monitor whose command makes udev rewrite queue attributes)
// and a control without the monitor; and the story seen from the
// application (loop-affected: a fast loop device in memory and a steady
// writer, recorded with the syscall probe, so that the report has its
// affected processes). Only with -record; -run 'TestRecordTraces/NAME'
// records one.
func TestRecordTraces(t *testing.T) {
	if !*record {
		t.Skip("records testdata/traces again only with -record")
	}
	scenario.RequireRoot(t)
	for _, tc := range []struct {
		name    string
		monitor time.Duration
		fast    bool // a loop device in memory and a writer held to 500 writes a second a thread
	}{{"loop-udev-freeze", time.Second, false}, {"loop-control", 0, false}, {"loop-affected", 500 * time.Millisecond, true}} {
		t.Run(tc.name, func(t *testing.T) {
			dev := scenario.LoopDevice
			if tc.fast {
				dev = scenario.MemLoopDevice
			}
			d := dev(t, 128<<20)
			scenario.QueueRule(t, d)
			if tc.monitor > 0 {
				scenario.Monitor(t, d, tc.monitor)
			}
			if tc.fast {
				scenario.RateWriter(t, d, 12*time.Second, 500)
			} else {
				scenario.Writer(t, d, 12*time.Second)
			}
			time.Sleep(time.Second)
			trace := filepath.Join(tracesDir, tc.name+".trace.gz")
			r := run(t, "diagnose", "storage", "--duration", "5s", "--record", trace, "--output", os.DevNull)
			if r.code != 0 {
				t.Fatalf("diagnose: exit %d, stderr %q", r.code, r.stderr)
			}
			fi, _ := os.Stat(trace)
			t.Logf("recorded %s (%d bytes); now run go test ./cmd/whyslow -run TestAnalyzeTraces -update", trace, fi.Size())
		})
	}
}

// Corrupt, foreign and future trace files fail with one line naming the
// file and what is wrong (a cut one is read up to where it was cut:
// TestAnalyzeCutTrace).
func TestAnalyzeBadTraces(t *testing.T) {
	good, err := os.ReadFile(filepath.Join(tracesDir, "loop-udev-freeze.trace.gz"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	gz := func(s string) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write([]byte(s))
		zw.Close()
		return b.Bytes()
	}
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)/2] ^= 0x55
	tests := []struct {
		name string
		data []byte
		want string
	}{
		{"corrupt", corrupt, ": line "},
		{"foreign", []byte("%PDF-1.7\n"), "not a whyslow trace"},
		{"report instead of trace", []byte(`{"schema":"whyslow.report/v1"}` + "\n"), "not a whyslow trace"},
		{"future", gz(`{"format":"whyslow.trace","version":7,"writer":"whyslow 9.9"}` + "\n"), "trace format version 7 is newer than this whyslow reads (2)"},
		{"empty", nil, "empty file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".trace.gz")
			if err := os.WriteFile(path, tt.data, 0o644); err != nil {
				t.Fatal(err)
			}
			r := run(t, "analyze", path)
			checkOneLineError(t, r, 1, "reading trace "+path+": ")
			if !strings.Contains(r.stderr, tt.want) {
				t.Errorf("stderr %q does not say %q", r.stderr, tt.want)
			}
		})
	}
	t.Run("missing", func(t *testing.T) {
		checkOneLineError(t, run(t, "analyze", filepath.Join(dir, "nope.trace.gz")), 1, "nope.trace.gz: no such file")
	})
	t.Run("no argument", func(t *testing.T) {
		checkOneLineError(t, run(t, "analyze"), 2, "accepts 1 arg")
	})
	t.Run("same file twice", func(t *testing.T) {
		checkOneLineError(t, run(t, "analyze", "x", "--folded", "a", "--stacks-out", "a"), 2, "name the same file")
	})
}

// The traces recorded in the kernels of the matrix name their cause: the
// top finding's rule, device and process, and their controls no false
// cause (the goldens hold the whole reports; this says what in them must
// not change when they are rewritten).
func TestGuestTraces(t *testing.T) {
	for _, tc := range []struct {
		trace, rule, dev, comm string
		not                    []string // rules no finding may be (controls)
	}{
		{trace: "iocost-6.12", rule: "iocost", dev: "vdb", comm: "fio"},
		{trace: "iocost-control-6.12", not: []string{"iocost", "cgroup-throttle"}},
		{trace: "iomax-throttle-6.12", rule: "cgroup-throttle", dev: "vdb", comm: "fio"},
		{trace: "iomax-control-no-limit-6.12", not: []string{"cgroup-throttle", "iocost"}},
		{trace: "scsi-timeouts-6.12", rule: "failing-device", dev: "sda", comm: "e2e.test"},
		{trace: "scsi-resets-6.12", rule: "failing-device", dev: "sda", comm: "e2e.test"},
		{trace: "scsi-medium-errors-6.12", rule: "failing-device", dev: "sda", comm: "e2e.test"},
		{trace: "scsi-control-6.12", not: []string{"failing-device"}},
		{trace: "writeback-dirty-memcg-6.12", rule: "dirty-throttling", dev: "vdd", comm: "writer"},
		{trace: "writeback-dirty-control-6.12", not: []string{"dirty-throttling"}},
		{trace: "writeback-journal-xfs-6.12", rule: "journal-commit-wait", dev: "vdd", comm: "victim"},
		{trace: "writeback-wbt-6.12", rule: "wbt-throttling", dev: "whyslow-236", comm: "victim"},
		{trace: "writeback-wbt-control-6.12", not: []string{"wbt-throttling"}},
	} {
		t.Run(tc.trace, func(t *testing.T) {
			r := run(t, "analyze", filepath.Join(tracesDir, tc.trace+".trace.gz"), "--format", "json")
			if r.code != 0 {
				t.Fatalf("analyze: exit %d, stderr %q", r.code, r.stderr)
			}
			var rep report.Report
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatal(err)
			}
			for _, f := range rep.Findings {
				if slices.Contains(tc.not, f.Rule) {
					t.Errorf("control: finding %s (%s)", f.Rule, f.Title)
				}
			}
			if tc.rule == "" {
				return
			}
			if len(rep.Findings) == 0 {
				t.Fatal("no finding")
			}
			top := rep.Findings[0]
			if top.Rule != tc.rule || !slices.Contains(top.Devices, tc.dev) ||
				!slices.ContainsFunc(top.Processes, func(p report.Process) bool { return p.Comm == tc.comm }) {
				t.Errorf("top finding %s on %v naming %v, want %s on %s naming %s: %s",
					top.Rule, top.Devices, findingNames(top), tc.rule, tc.dev, tc.comm, top.Title)
			}
		})
	}
}
