package main

// The noisy neighbour: a deep random reader and a small synced writer on
// one disk-backed loop device. The reader holds the device's queue, the
// writer waits behind it: the top finding must name the reader (and its
// cgroup) as the cause and the writer as a victim. Either load alone is
// no noisy neighbour.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

// neighbours are the loads of the noisy-neighbour scenarios, on dev.
type neighbours struct {
	dev    string
	cgroup *scenario.Cgroup
}

// reader is a deep random O_DIRECT reader, in the neighbours' cgroup.
func (n neighbours) reader(t *testing.T, d time.Duration) *scenario.Fio {
	return scenario.StartJob(t, scenario.Job{Name: "nightly-scan", Dev: n.dev, RW: "randread", BS: "16k",
		Engine: "libaio", IODepth: 64, Direct: true, Duration: d, Cgroup: n.cgroup})
}

// writer is a small synced writer: 4 KiB buffered writes, each followed
// by fdatasync.
func (n neighbours) writer(t *testing.T, d time.Duration) *scenario.Fio {
	return scenario.StartJob(t, scenario.Job{Name: "ledger", Dev: n.dev, RW: "randwrite", BS: "4k",
		Engine: "sync", Fdatasync: 1, Duration: d})
}

// The reader (in a cgroup of its own) and the writer together: the top
// finding is noisy-neighbour, naming the reader, its cgroup and the writer
// as the victim; then each alone, on the same device: no noisy-neighbour.
func TestDiagnoseNoisyNeighbour(t *testing.T) {
	scenario.RequireRoot(t)
	n := neighbours{dev: scenario.DiskLoop(t, 256<<20)}
	n.cgroup = scenario.IOCgroup(t, "batch")

	t.Run("reader and writer", func(t *testing.T) {
		var r, w *scenario.Fio
		rep := diagnoseUnder(t, 10*time.Second, func() func() {
			r, w = n.reader(t, time.Minute), n.writer(t, time.Minute)
			return func() { r.Stop(); w.Stop() }
		})
		logLoads(t, r, w)
		logReport(t, rep)
		if len(rep.Findings) == 0 {
			t.Fatal("no findings")
		}
		top := rep.Findings[0]
		if top.Rule != "noisy-neighbour" {
			t.Fatalf("top finding is %s (%q), want noisy-neighbour", top.Rule, top.Title)
		}
		if !slices.Contains(top.Devices, n.dev) {
			t.Errorf("top finding names devices %v, want %s", top.Devices, n.dev)
		}
		cause, victim := partOf(top, r.Pid, report.PartCause), partOf(top, w.Pid, report.PartVictim)
		if cause == nil || cause.Comm != r.Name || cause.Cgroup != n.cgroup.Path {
			t.Errorf("processes %+v: want %s (pid %d, cgroup %s) as the cause", top.Processes, r.Name, r.Pid, n.cgroup.Path)
		}
		if victim == nil || victim.Comm != w.Name {
			t.Errorf("processes %+v: want %s (pid %d) as a victim", top.Processes, w.Name, w.Pid)
		}
		for _, p := range top.Processes {
			if p.Part == report.PartVictim && p.Comm == r.Name {
				t.Errorf("the cause %s is also listed as a victim: %+v", r.Name, top.Processes)
			}
		}
		if !strings.HasPrefix(top.Title, r.Name) || !strings.Contains(top.Title, n.cgroup.Path) || !strings.Contains(top.Title, w.Name) {
			t.Errorf("title %q does not start with the cause %s and name its cgroup %s and the victim %s", top.Title, r.Name, n.cgroup.Path, w.Name)
		}
		if share, ok := evidenceOf(top, "time_share_pct").(float64); !ok || share < 50 {
			t.Errorf("evidence time_share_pct = %v, want the reader's share, at least 50%%", evidenceOf(top, "time_share_pct"))
		}
		// The victims' time, from their storage calls (the syscall probe):
		// blocked for a tag or for the device behind the reader.
		tagMs, _ := evidenceOf(top, "victim_tag_wait_ms").(float64)
		devMs, _ := evidenceOf(top, "victim_device_ms").(float64)
		if tagMs+devMs < 100 {
			t.Errorf("victims waited %v ms for tags and %v ms for the device: want the writer's blocked time", tagMs, devMs)
		}
		if !strings.Contains(top.Remedy, "io.weight") || !strings.Contains(top.Remedy, "ionice") {
			t.Errorf("remedy %q names neither io.weight nor ionice", top.Remedy)
		}
		for _, f := range rep.Findings {
			if f.Rule == "tag-starvation" && slices.Contains(f.Devices, n.dev) {
				t.Errorf("tag-starvation also reported on %s: %q", n.dev, f.Title)
			}
		}
	})
	for _, alone := range []string{"reader", "writer"} {
		t.Run(alone+" alone", func(t *testing.T) {
			var f *scenario.Fio
			rep := diagnoseUnder(t, 8*time.Second, func() func() {
				if alone == "reader" {
					f = n.reader(t, time.Minute)
				} else {
					f = n.writer(t, time.Minute)
				}
				return func() { f.Stop() }
			})
			logLoads(t, f)
			logReport(t, rep)
			for _, x := range rep.Findings {
				if x.Rule == "noisy-neighbour" {
					t.Errorf("the %s alone gives a noisy-neighbour finding: %q", alone, x.Title)
				}
			}
			if !sawSubmissions(rep, n.dev) {
				t.Errorf("no submissions seen on %s: the probes did not observe the %s", n.dev, alone)
			}
		})
	}
}

// partOf returns the process of f with pid and part, or nil.
func partOf(f report.Finding, pid int, part string) *report.Process {
	for i, p := range f.Processes {
		if int(p.Pid) == pid && p.Part == part {
			return &f.Processes[i]
		}
	}
	return nil
}

// evidenceOf returns the value of f's evidence item name, or nil.
func evidenceOf(f report.Finding, name string) any {
	for _, e := range f.Evidence {
		if e.Name == name {
			return e.Value
		}
	}
	return nil
}

// logLoads logs what each fio measured.
func logLoads(t *testing.T, fs ...*scenario.Fio) {
	t.Helper()
	for _, f := range fs {
		res, err := f.Wait()
		t.Logf("%s (pid %d): %v %v", f.Name, f.Pid, res, err)
	}
}

func logReport(t *testing.T, rep *report.Report) {
	t.Helper()
	t.Logf("findings:\n%s", summary(rep))
	if rep.LostEvents > 0 {
		t.Logf("lost events: %+v", rep.Losses)
	}
	for _, f := range rep.Findings {
		t.Logf("#%d %s: %s\n%v", f.Rank, f.Rule, f.Title, f.Evidence)
	}
	for _, a := range rep.Affected {
		t.Logf("affected: %s (pid %d, cgroup %q, blkio %q) %.0f ms in %v, %.0f ms blocked: %+v", a.Comm, a.Pid, a.Cgroup, a.Blkio, totalMs(a), a.Devices, a.BlockedMs, a.Stages)
	}
}

// totalMs is an affected process's time in storage calls.
func totalMs(a report.Affected) float64 {
	var ms float64
	for _, c := range a.Calls {
		ms += c.TotalMs
	}
	return ms
}

// TestRecordNoisyTrace records testdata/traces/loop-noisy-neighbour.trace.gz
// again: the reader (in its cgroup) and the writer on a disk-backed loop
// device. Only with -record; then go test ./cmd/whyslow -run
// TestAnalyzeTraces -update writes its goldens.
func TestRecordNoisyTrace(t *testing.T) {
	if !*record {
		t.Skip("records testdata/traces again only with -record")
	}
	scenario.RequireRoot(t)
	n := neighbours{dev: scenario.DiskLoop(t, 256<<20)}
	n.cgroup = scenario.IOCgroup(t, "batch")
	n.reader(t, 12*time.Second)
	n.writer(t, 12*time.Second)
	time.Sleep(time.Second)
	trace := filepath.Join(tracesDir, "loop-noisy-neighbour.trace.gz")
	r := run(t, "diagnose", "storage", "--duration", "5s", "--record", trace, "--output", os.DevNull)
	if r.code != 0 {
		t.Fatalf("diagnose: exit %d, stderr %q", r.code, r.stderr)
	}
	fi, _ := os.Stat(trace)
	t.Logf("recorded %s (%d bytes); now run go test ./cmd/whyslow -run TestAnalyzeTraces -update", trace, fi.Size())
}

// The recorded noisy neighbour, replayed: the top finding names the reader
// (nightly-scan, in its cgroup) as the cause and the writer (ledger) as
// its victim, from the writer's blocked time in its storage calls.
func TestAnalyzeNoisyTrace(t *testing.T) {
	r := run(t, "analyze", filepath.Join(tracesDir, "loop-noisy-neighbour.trace.gz"), "--format", "json")
	if r.code != 0 {
		t.Fatalf("analyze: exit %d, stderr %q", r.code, r.stderr)
	}
	var rep report.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Findings) == 0 || rep.Findings[0].Rule != "noisy-neighbour" {
		t.Fatalf("findings:\n%s", summary(&rep))
	}
	top := rep.Findings[0]
	var cause, victim string
	for _, p := range top.Processes {
		switch p.Part {
		case report.PartCause:
			cause = p.Comm
		case report.PartVictim:
			victim = p.Comm
		}
	}
	if cause != "nightly-scan" || victim != "ledger" {
		t.Errorf("cause %q, victim %q: want nightly-scan and ledger (%+v)", cause, victim, top.Processes)
	}
	if ms, _ := evidenceOf(top, "victim_device_ms").(float64); ms < 100 {
		t.Errorf("victim_device_ms %v: want ledger's time blocked behind the reader", evidenceOf(top, "victim_device_ms"))
	}
}
