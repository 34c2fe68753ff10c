package main

// End-to-end tests: the real whyslow binary, run the way a user runs it,
// against the story reproduced for real (udevd, loop device, udev rule,
// monitoring daemon, fio). They need root and run in CI.

import (
	"bytes"
	"encoding/json"
	"fmt"
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

var whyslowBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "whyslow-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// In the qemu kernel matrix (make vmtest) there is no Go toolchain: the
	// guest has a prebuilt binary.
	if whyslowBin = os.Getenv("WHYSLOW_BIN"); whyslowBin == "" {
		whyslowBin = filepath.Join(dir, "whyslow")
		build := exec.Command("go", "build", "-o", whyslowBin, ".")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "building whyslow: %v\n%s", err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	code           int
	stdout, stderr string
}

func run(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(whyslowBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running whyslow %v: %v", args, err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func diagnoseJSON(t *testing.T, args ...string) *report.Report {
	t.Helper()
	r := run(t, append([]string{"diagnose", "storage", "--format", "json"}, args...)...)
	if r.code != 0 {
		t.Fatalf("whyslow diagnose exited %d\nstderr: %s", r.code, r.stderr)
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, r.stdout)
	}
	logTrouble(t, &rep)
	return &rep
}

// logTrouble logs the report's trouble section (shadow armed mode) on one
// line: when each scenario would have armed, and by which signal.
func logTrouble(t *testing.T, rep *report.Report) {
	t.Helper()
	if rep.Trouble == nil {
		t.Log("trouble: none")
		return
	}
	tr := *rep.Trouble
	tr.Sources = nil
	b, _ := json.Marshal(tr)
	t.Logf("trouble: %s", b)
}

// tracePath is where a scenario's diagnosis records its trace NAME: in
// the kernel matrix the results directory (WHYSLOW_RECORD_DIR: make vmtest
// brings it back as <out>/<kernel>/NAME.trace.gz, which is how the guests'
// traces in testdata/traces are recorded), else testdata/traces with
// -record, else a temporary file.
func tracePath(t *testing.T, name string) string {
	t.Helper()
	if dir := os.Getenv("WHYSLOW_RECORD_DIR"); dir != "" {
		return filepath.Join(dir, name+".trace.gz")
	}
	if *record {
		return filepath.Join(tracesDir, name+".trace.gz")
	}
	return filepath.Join(t.TempDir(), name+".trace.gz")
}

// diagnoseUnder runs a diagnosis for d with load running only while it
// observes: load starts once whyslow says every probe is attached
// (--ready-file) and is stopped when the d of observation are over, so that
// the start and the analysis do not compete with it for the CPU (under
// qemu's emulation a busy writer makes them several times slower).
func diagnoseUnder(t *testing.T, d time.Duration, load func() (stop func()), args ...string) *report.Report {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	args = append([]string{"diagnose", "storage", "--format", "json", "--duration", d.String(), "--ready-file", ready}, args...)
	cmd := exec.Command(whyslowBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("whyslow %v ended before it was ready: %v; stderr: %s", args, err, errb.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	stop := load()
	time.Sleep(d)
	stop()
	if err := <-done; err != nil {
		t.Fatalf("whyslow %v: %v; stderr: %s", args, err, errb.String())
	}
	var rep report.Report
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out.String())
	}
	logTrouble(t, &rep)
	return &rep
}

func summary(rep *report.Report) string {
	var b strings.Builder
	for _, f := range rep.Findings {
		fmt.Fprintf(&b, "#%d %s %s score=%.1f devices=%v processes=%v trigger=%+v\n", f.Rank, f.Rule, f.Severity, f.Score, f.Devices, f.Processes, f.Trigger)
	}
	for _, d := range rep.Devices {
		fmt.Fprintf(&b, "device %s submit=%+v service=%+v stalls=%+v queue_waits=%+v freezes=%+v uevents=%+v\n", d.Name, d.Submit, d.Service, d.Stalls, d.QueueWaits, d.Freezes, d.Uevents)
	}
	for _, p := range rep.Probes {
		fmt.Fprintf(&b, "probe %s %s %s %s\n", p.Name, p.Mechanism, p.Status, p.Reason)
	}
	return b.String()
}

// udevComms are the names systemd-udevd's workers run under.
var udevComms = []string{"(udev-worker)", "systemd-udevd", "udevd"}

// The story on a loop device: the top finding must be the queue freeze on
// that device, with udev's worker as the freezer and the monitoring
// daemon's periodic command as the trigger.
func TestDiagnoseFindsTheUdevFreezeChain(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 256<<20)
	scenario.QueueRule(t, dev)
	mon := scenario.Monitor(t, dev, 2*time.Second)
	w := scenario.Writer(t, dev, 30*time.Second)
	time.Sleep(2 * time.Second) // let fio open the device and settle

	rep := diagnoseJSON(t, "--duration", "16s")
	t.Logf("findings:\n%s", summary(rep))
	_ = w

	if len(rep.Findings) == 0 {
		t.Fatal("no findings")
	}
	top := rep.Findings[0]
	if top.Rule != "queue-freeze-stall" {
		t.Fatalf("top finding is %q, want queue-freeze-stall", top.Rule)
	}
	if !slices.Contains(top.Devices, dev) {
		t.Errorf("top finding names devices %v, want %s", top.Devices, dev)
	}
	var freezer bool
	for _, p := range top.Processes {
		if p.Role == "freezer" && slices.Contains(udevComms, p.Comm) {
			freezer = true
		}
	}
	if !freezer {
		t.Errorf("top finding's processes %+v name no udev worker as freezer", top.Processes)
	}
	tr := top.Trigger
	if tr == nil {
		t.Fatal("top finding has no trigger")
	}
	if tr.Comm != "arcconf" || tr.ParentComm != "raidmon" || int(tr.PPid) != mon.Pid {
		t.Errorf("trigger = %+v, want arcconf run by raidmon (pid %d)", tr, mon.Pid)
	}
	if tr.PeriodSeconds < 1.5 || tr.PeriodSeconds > 2.5 {
		t.Errorf("trigger period %.2fs, want about 2s", tr.PeriodSeconds)
	}
	var rules []string
	for _, s := range top.Steps {
		rules = append(rules, s.Rule)
	}
	if want := []string{"periodic-trigger", "uevent-freeze", "queue-freeze-stall"}; !slices.Equal(rules, want) {
		t.Errorf("chain steps %v, want %v", rules, want)
	}
	if rep.LostEvents != 0 {
		t.Logf("note: %d events lost: %+v", rep.LostEvents, rep.Losses)
	}
}

// The control: the same writer, the same udev rule, no monitoring daemon.
// Nothing may blame a queue freeze or udev.
func TestDiagnoseControlBlamesNoFreeze(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 256<<20)
	scenario.QueueRule(t, dev)
	scenario.Writer(t, dev, 20*time.Second)
	time.Sleep(2 * time.Second)

	rep := diagnoseJSON(t, "--duration", "10s")
	checkControl(t, rep, dev)
}

// checkControl checks a control run's report: no freeze, udev or trigger
// cause, and the writer's submissions on dev were seen.
func checkControl(t *testing.T, rep *report.Report, dev string) {
	t.Helper()
	t.Logf("findings:\n%s", summary(rep))
	for _, f := range rep.Findings {
		switch f.Rule {
		case "queue-freeze-stall", "uevent-freeze", "periodic-trigger":
			t.Errorf("control run reports %s: %s", f.Rule, f.Title)
		}
	}
	if !sawSubmissions(rep, dev) {
		t.Errorf("control run saw no submissions on %s: the probes did not observe the writer", dev)
	}
}

// sawSubmissions reports whether the report counted submissions on dev.
func sawSubmissions(rep *report.Report, dev string) bool {
	for _, d := range rep.Devices {
		if d.Name == dev && d.Submit.Count > 0 {
			return true
		}
	}
	return false
}
