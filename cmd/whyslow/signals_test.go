package main

// Signals during a real run (loop device, fio, the udev story): SIGHUP,
// SIGTERM and SIGINT end the observation early and the report and trace
// are written (exit 0); a second signal aborts at once (128 + the signal)
// and removes nothing but its own temporary files; SIGKILL during --record
// leaves a trace that analyze reads up to its last checkpoint, saying it
// is incomplete.

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
	"github.com/whyslow/whyslow/internal/synth"
	"github.com/whyslow/whyslow/internal/tracefile"
)

// running is a whyslow started in the background.
type running struct {
	cmd         *exec.Cmd
	out, errb   scenario.Buffer
	done        chan struct{}
	code        int
	signaled    syscall.Signal // the signal that ended it, if one did
	waitElapsed time.Duration
}

// unignoreSignals undoes, for the processes the tests start, the stop
// signals this test process was started with ignored: under nohup (SIGHUP
// ignored) whyslow would be started with SIGHUP ignored too, and keep it
// ignored as it should (see cmd/signals.go), so the SIGHUP of a test would
// not end its run. A signal this process handles is at its default in a
// process it starts (exec resets handlers, not ignored signals), so the
// ignored ones are handled here, by dropping them.
var unignoreSignals = sync.OnceFunc(func() {
	var sigs []os.Signal
	for _, sig := range []os.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM} {
		if signal.Ignored(sig) {
			sigs = append(sigs, sig)
		}
	}
	if len(sigs) == 0 {
		return
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	go func() {
		for range ch {
		}
	}()
})

// start runs whyslow with args in the background, with the stop signals
// at their defaults (unignoreSignals).
func start(t *testing.T, args ...string) *running {
	t.Helper()
	unignoreSignals()
	r := &running{cmd: exec.Command(whyslowBin, args...), done: make(chan struct{})}
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.errb
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(r.done)
		err := r.cmd.Wait()
		if ee, ok := err.(*exec.ExitError); ok {
			r.code = ee.ExitCode()
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				r.signaled = ws.Signal()
			}
		}
	}()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		<-r.done
	})
	return r
}

// startDiagnose runs a diagnosis in the background and returns once every
// probe is attached (--ready-file).
func startDiagnose(t *testing.T, args ...string) *running {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "ready")
	r := start(t, append([]string{"diagnose", "storage", "--ready-file", ready}, args...)...)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return r
		}
		select {
		case <-r.done:
			t.Fatalf("whyslow ended before it was ready: exit %d; stderr %s", r.code, r.errb.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 60s; stderr %s", r.errb.String())
		}
	}
}

// wait waits for it to end, at most d.
func (r *running) wait(t *testing.T, d time.Duration) {
	t.Helper()
	startWait := time.Now()
	select {
	case <-r.done:
		r.waitElapsed = time.Since(startWait)
	case <-time.After(d):
		t.Fatalf("whyslow did not end within %s; stderr %s", d, r.errb.String())
	}
}

func readReport(t *testing.T, path string) (*report.Report, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("no report: %v", err)
	}
	var rep report.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, b)
	}
	return &rep, b
}

// SIGHUP (an ssh session that drops), SIGTERM (kill, systemd, timeout) and
// SIGINT (Ctrl-C) during the observation end it early: the report covers
// what was observed, the trace is complete and analyze gives the same
// report, and the exit code is that of a full run (0).
func TestSignalEndsTheObservation(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 128<<20)
	scenario.QueueRule(t, dev)
	scenario.Monitor(t, dev, time.Second)
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			p := func(n string) string { return filepath.Join(dir, n) }
			r := startDiagnose(t, "--duration", "60s", "--format", "json", "-o", p("live.json"), "--record", p("run.trace.gz"))
			fio := scenario.Writer(t, dev, 6*time.Second)
			time.Sleep(3 * time.Second)
			if err := r.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			r.wait(t, 30*time.Second)
			fio.Wait()
			if r.code != 0 || r.signaled != 0 || r.errb.String() != "" {
				t.Fatalf("exit %d (signal %v), stderr %q; want 0 and nothing on stderr", r.code, r.signaled, r.errb.String())
			}
			rep, live := readReport(t, p("live.json"))
			if rep.DurationSeconds < 2 || rep.DurationSeconds > 20 || rep.RequestedDurationSeconds != 60 || rep.Incomplete {
				t.Errorf("observed %.3fs of %.0fs asked for (incomplete %v): want the 3s before the signal", rep.DurationSeconds, rep.RequestedDurationSeconds, rep.Incomplete)
			}
			if !sawSubmissions(rep, dev) {
				t.Errorf("the report saw no submission on %s", dev)
			}
			again := run(t, "analyze", p("run.trace.gz"), "--format", "json")
			if again.code != 0 || again.stderr != "" {
				t.Fatalf("analyze of the trace: exit %d, stderr %q", again.code, again.stderr)
			}
			if !bytes.Equal([]byte(again.stdout), live) {
				t.Errorf("the trace's report is not the live one")
			}
			if names, _ := os.ReadDir(dir); len(names) != 2 {
				t.Errorf("files left: %v", names)
			}
		})
	}
}

// A second SIGTERM or SIGINT, as the run winds down, aborts at once: one
// line, exit 128 + the signal, no report, and nothing left but the trace
// written so far (outputs already there stay).
func TestSecondSignalAborts(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 64<<20)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			p := func(n string) string { return filepath.Join(dir, n) }
			if err := os.WriteFile(p("old.txt"), []byte("yesterday"), 0o644); err != nil {
				t.Fatal(err)
			}
			r := startDiagnose(t, "--duration", "60s", "-o", p("old.txt"), "--record", p("run.trace.gz"))
			fio := scenario.Writer(t, dev, 3*time.Second)
			time.Sleep(2 * time.Second)
			// The signal is sent again every 20 ms until whyslow ends: the
			// probes take longer to stop. Two sent before whyslow ran at
			// all are one pending signal to the kernel (a loaded machine
			// can keep it off the CPU for that long), so one sent later
			// is the second.
			r.cmd.Process.Signal(sig)
			for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
				select {
				case <-r.done:
					deadline = time.Time{}
				case <-time.After(20 * time.Millisecond):
					r.cmd.Process.Signal(sig)
				}
			}
			r.wait(t, 10*time.Second)
			fio.Wait()
			if want := 128 + int(sig); r.code != want {
				t.Errorf("exit %d, want %d; stderr %q", r.code, want, r.errb.String())
			}
			lines := strings.Split(strings.TrimSpace(r.errb.String()), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "whyslow: ") || !strings.Contains(lines[0], "aborted") {
				t.Errorf("stderr %q, want one line saying it aborted", r.errb.String())
			}
			if b, _ := os.ReadFile(p("old.txt")); string(b) != "yesterday" {
				t.Errorf("the report's path now holds %q", b)
			}
			if names, _ := os.ReadDir(dir); len(names) != 2 {
				t.Errorf("files left: %v, want old.txt and the trace", names)
			}
			if _, _, err := tracefile.ReadFile(p("run.trace.gz")); err != nil {
				t.Errorf("the trace written so far does not read: %v", err)
			}
		})
	}
}

// Ctrl-C during a long analysis aborts it at once.
func TestSignalAbortsAnalyze(t *testing.T) {
	dir := t.TempDir()
	trace := filepath.Join(dir, "storm.trace.gz")
	f, err := os.Create(trace)
	if err != nil {
		t.Fatal(err)
	}
	if err := tracefile.Write(f, synth.StormTimeline(synth.StormFreezes, 300_000), tracefile.Info{Version: "test", Duration: time.Minute}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		r := start(t, "analyze", trace, "-o", filepath.Join(dir, "r.txt"))
		time.Sleep(500 * time.Millisecond)
		r.cmd.Process.Signal(sig)
		r.wait(t, 5*time.Second)
		if r.code != 128+int(sig) || !strings.Contains(r.errb.String(), "aborted") || strings.Count(r.errb.String(), "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want %d and one line", sig, r.code, r.errb.String(), 128+int(sig))
		}
		if names, _ := os.ReadDir(dir); len(names) != 1 {
			t.Errorf("%v: files left: %v", sig, names)
		}
	}
}

// SIGKILL while recording: the trace is at its path, and analyze reports
// what it holds up to its last checkpoint (flushed every second), saying
// it is incomplete in every format.
func TestKillDuringRecord(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 128<<20)
	scenario.QueueRule(t, dev)
	scenario.Monitor(t, dev, time.Second)
	dir := t.TempDir()
	trace := filepath.Join(dir, "run.trace.gz")
	// The trace covers the run from its start, before every probe was
	// attached; fio can take a while to start on a loaded machine.
	started := time.Now()
	r := startDiagnose(t, "--duration", "60s", "--record", trace, "-o", os.DevNull)
	fio := scenario.Writer(t, dev, 8*time.Second)
	time.Sleep(5 * time.Second)
	r.cmd.Process.Kill()
	r.wait(t, 5*time.Second)
	killedAfter := time.Since(started)
	fio.Wait()
	a := run(t, "analyze", trace, "--format", "json")
	if a.code != 0 || !strings.Contains(a.stderr, "is incomplete") || strings.Count(a.stderr, "\n") != 1 {
		t.Fatalf("analyze of the cut trace: exit %d, stderr %q; want 0 and one warning", a.code, a.stderr)
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(a.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	covered := 0.0
	if rep.CoveredSeconds != nil {
		covered = *rep.CoveredSeconds
	}
	// Flushed every second: what the trace covers ends at most a second
	// or two before the kill.
	if !rep.Incomplete || covered < killedAfter.Seconds()-3 || covered > killedAfter.Seconds()+1 || rep.IncompleteReason == "" {
		t.Errorf("incomplete %v, covered %.3fs of the %.1fs before the kill (%q)", rep.Incomplete, covered, killedAfter.Seconds(), rep.IncompleteReason)
	}
	if !sawSubmissions(&rep, dev) || len(rep.Probes) == 0 {
		t.Errorf("the cut trace's report saw no submission on %s, or no probe", dev)
	}
	for _, format := range []string{"text", "markdown", "html"} {
		a := run(t, "analyze", trace, "--format", format)
		head := a.stdout[max(0, strings.Index(a.stdout, "<header>")):]
		head = head[:min(len(head), 2000)]
		if a.code != 0 || !strings.Contains(strings.ToLower(head), "incomplete") {
			t.Errorf("%s: exit %d, no incomplete line at the top:\n%s", format, a.code, head)
		}
	}
	if names, _ := os.ReadDir(dir); len(names) != 1 {
		t.Errorf("files left: %v (a temporary file?)", names)
	}
}
