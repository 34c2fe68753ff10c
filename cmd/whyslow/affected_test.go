package main

// The application's view, end to end: the processes whose storage calls
// were slow, with their calls and the stages of their blocked time, checked
// against what the application itself measured (fio's own report).

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

// findAffected returns the report's entry of process pid.
func findAffected(rep *report.Report, pid int) (report.Affected, bool) {
	for _, a := range rep.Affected {
		if int(a.Pid) == pid {
			return a, true
		}
	}
	return report.Affected{}, false
}

func affectedCall(a report.Affected, syscall string) (report.AffectedCall, bool) {
	for _, c := range a.Calls {
		if c.Syscall == syscall {
			return c, true
		}
	}
	return report.AffectedCall{}, false
}

func affectedSummary(rep *report.Report) string {
	var b strings.Builder
	for _, a := range rep.Affected {
		fmt.Fprintf(&b, "%s (pid %d, %v) %.1fms, blocked %.1fms:", a.Comm, a.Pid, a.Devices, a.TotalMs, a.BlockedMs)
		for _, c := range a.Calls {
			fmt.Fprintf(&b, " %s n=%d p50=%.0fus p99=%.0fus max=%.0fus;", c.Syscall, c.Count, c.P50Us, c.P99Us, c.MaxUs)
		}
		for _, s := range a.Stages {
			fmt.Fprintf(&b, " %s=%.1fms(%.0f%%)", s.Stage, s.TotalMs, s.Share*100)
			if s.Frames != "" {
				fmt.Fprintf(&b, "[%s]", s.Frames)
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}

// writerInWindow starts fio (start: scenario.Writer or RateWriter, for less
// than d) inside a diagnosis of d that starts first: every call fio makes
// is inside the window the report covers, so that its counts and the
// report's are of the same calls.
func writerInWindow(t *testing.T, start func() *scenario.Fio, d time.Duration, args ...string) (*report.Report, *scenario.Fio, *scenario.FioResult) {
	t.Helper()
	var w *scenario.Fio
	rep := diagnoseUnder(t, d, func() func() {
		w = start()
		return func() {}
	}, args...)
	res, err := w.Wait()
	if err != nil {
		t.Fatal(err)
	}
	return rep, w, res
}

// agree reports whether whyslow's latency (us, from its histogram: within
// 12.5%) agrees with fio's for the same calls: within 25% (the two
// histograms' resolutions, both ways) plus 30 µs (fio times each call from
// user space, around the system call whyslow times from its entry to its
// exit).
func agree(whyslowUs float64, fio time.Duration) bool {
	f := float64(fio) / float64(time.Microsecond)
	return math.Abs(whyslowUs-f) <= 0.25*f+30
}

// The seed's chain, seen from the application: fio, whose writes stall in
// the queue udev freezes again and again, is an affected process; most of
// its blocked time is queue_freeze; it made as many writes and fdatasyncs
// as fio itself counted, and their latencies agree with fio's. As in the
// seed, the journal is fast (a loop device in memory, where a write and a
// flush take microseconds) and under a steady load (500 writes a second a
// thread): over a file on this host's disk each flush takes a millisecond,
// and a writer at full speed keeps both CPUs busy, so that the device or
// the run queue would be what it mostly waits for, freezes or not.
func TestAffectedSeedChain(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.MemLoopDevice(t, 256<<20)
	scenario.QueueRule(t, dev)
	scenario.Monitor(t, dev, 500*time.Millisecond)
	rep, w, res := writerInWindow(t, func() *scenario.Fio { return scenario.RateWriter(t, dev, 8*time.Second, 500) }, 12*time.Second)
	t.Logf("fio: %s; clat p50 %v p99 %v, fdatasync p50 %v p99 %v", res, res.ClatP50, res.ClatP99, res.SyncP50, res.SyncP99)
	t.Logf("affected:\n%s", affectedSummary(rep))
	a, ok := findAffected(rep, w.Pid)
	if !ok {
		t.Fatalf("fio (pid %d) is not in affected[]", w.Pid)
	}
	if len(a.Devices) == 0 || a.Devices[0] != dev {
		t.Errorf("fio's devices %v, want %s first", a.Devices, dev)
	}
	// The run queue is CPU time others took: under `go test ./...` other
	// packages build and run on the same two CPUs while this test runs, so
	// it can be any share. Of the rest, the freezes must come first.
	var top *report.StageShare
	var freeze, rest float64
	for i, s := range a.Stages {
		if s.Stage == "runqueue" {
			continue
		}
		if top == nil {
			top = &a.Stages[i]
		}
		rest += s.TotalMs
		if s.Stage == "queue_freeze" {
			freeze = s.TotalMs
		}
	}
	if top == nil || top.Stage != "queue_freeze" || freeze < 0.4*rest {
		t.Errorf("fio's stages: %+v, want queue_freeze first and at least 40%% of the time not spent in the run queue", a.Stages)
	}
	var shares float64
	for _, s := range a.Stages {
		shares += s.Share
		switch s.Stage {
		case "queue_freeze", "device", "runqueue", "other":
		default:
			t.Errorf("fio blocked in stage %s (%.1f ms), which nothing here causes", s.Stage, s.TotalMs)
		}
	}
	if math.Abs(shares-1) > 0.01 {
		t.Errorf("stage shares add up to %.3f, want 1", shares)
	}
	for _, c := range []struct {
		syscall  string
		fio      int64
		p50, p99 time.Duration
	}{{"pwrite64", res.Writes, res.ClatP50, res.ClatP99}, {"fdatasync", res.Syncs, res.SyncP50, res.SyncP99}} {
		got, ok := affectedCall(a, c.syscall)
		if !ok {
			t.Errorf("fio's %s calls are not in its entry: %+v", c.syscall, a.Calls)
			continue
		}
		if diff := math.Abs(float64(got.Count) - float64(c.fio)); diff > 0.03*float64(c.fio) {
			t.Errorf("%s: whyslow counted %d calls, fio %d: more than 3%% apart", c.syscall, got.Count, c.fio)
		}
		if !agree(got.P50Us, c.p50) || !agree(got.P99Us, c.p99) {
			t.Errorf("%s latency: whyslow p50 %.0fµs p99 %.0fµs, fio p50 %v p99 %v: they do not agree", c.syscall, got.P50Us, got.P99Us, c.p50, c.p99)
		}
	}
	if rep.LostEvents != 0 {
		t.Logf("note: %d events lost: %+v", rep.LostEvents, rep.Losses)
	}
}

// Without the freezes, the same writer blocks on its device only: no stage
// that nothing caused.
func TestAffectedFastWriter(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.LoopDevice(t, 256<<20)
	rep, w, res := writerInWindow(t, func() *scenario.Fio { return scenario.Writer(t, dev, 5*time.Second) }, 8*time.Second)
	t.Logf("fio: %s\naffected:\n%s", res, affectedSummary(rep))
	a, ok := findAffected(rep, w.Pid)
	if !ok {
		t.Fatalf("fio (pid %d) is not in affected[]", w.Pid)
	}
	for _, s := range a.Stages {
		switch s.Stage {
		case "device", "runqueue":
		case "other":
			if s.Share > 0.05 {
				t.Errorf("%.0f%% of fio's blocked time is other: %s", s.Share*100, s.Frames)
			}
		default:
			t.Errorf("fio blocked in stage %s (%.1f ms) with nothing to cause it", s.Stage, s.TotalMs)
		}
	}
	if c, ok := affectedCall(a, "pwrite64"); !ok || math.Abs(float64(c.Count)-float64(res.Writes)) > 0.03*float64(res.Writes) {
		t.Errorf("pwrite64: %+v, fio made %d", c, res.Writes)
	}
}

// An idle host: no process blocks in a queue freeze or a tag wait, and
// whyslow does not report its own calls.
func TestAffectedIdleHost(t *testing.T) {
	scenario.RequireRoot(t)
	scenario.Hold(t)
	rep := diagnoseJSON(t, "--duration", "4s")
	t.Logf("affected:\n%s", affectedSummary(rep))
	for _, a := range rep.Affected {
		if a.Comm == "whyslow" || int(a.Pid) == os.Getpid() {
			t.Errorf("affected lists whyslow itself: %+v", a)
		}
		for _, s := range a.Stages {
			if s.Stage == "queue_freeze" || s.Stage == "tag_wait" {
				t.Errorf("%s (pid %d) blocked %.1f ms in %s on an idle host", a.Comm, a.Pid, s.TotalMs, s.Stage)
			}
		}
	}
}
