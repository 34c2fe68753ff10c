package main

// Direct reclaim inside storage calls, for real: a buffered writer in a
// memory cgroup whose limit its page cache keeps reaching reclaims inside
// its writes; the same writer without the limit does not.

import (
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

// reclaimRate holds the writer to a rate the device takes easily, so that
// the device is not what is slow: its page cache still fills the cgroup's
// limit within a second.
const reclaimRate = "--rate=128m"

func hasRule(rep *report.Report, rule string) bool {
	return slices.ContainsFunc(rep.Findings, func(f report.Finding) bool { return f.Rule == rule })
}

func namesComm(f report.Finding, comm string) bool {
	return slices.ContainsFunc(f.Processes, func(p report.Process) bool { return p.Comm == comm })
}

// The top finding is memory-reclaim on the writer's device, naming fio
// (its job process, a child of the pid started).
func TestMemoryReclaimInWrites(t *testing.T) {
	scenario.RequireRoot(t)
	dev := fastDevice(t)
	procs := scenario.MemoryCgroup(t, 16<<20)
	var w *scenario.Fio
	rep := diagnoseUnder(t, 6*time.Second, func() func() {
		w = scenario.BufferedWriter(t, dev, 5*time.Second, procs, reclaimRate)
		return func() {}
	})
	w.Wait()
	t.Logf("findings:\n%s", summary(rep))
	if len(rep.Findings) == 0 {
		t.Fatal("no findings")
	}
	top := rep.Findings[0]
	if top.Rule != "memory-reclaim" || !slices.Contains(top.Devices, dev) || !namesComm(top, "fio") {
		t.Errorf("top finding %s on %v naming %+v; want memory-reclaim on %s naming fio", top.Rule, top.Devices, top.Processes, dev)
	}
	if hasRule(rep, "failing-device") {
		t.Errorf("a failing device was found: nothing failed")
	}
}

// The same writer with no memory limit: no memory-reclaim finding.
func TestMemoryReclaimControl(t *testing.T) {
	scenario.RequireRoot(t)
	dev := fastDevice(t)
	var w *scenario.Fio
	rep := diagnoseUnder(t, 6*time.Second, func() func() {
		w = scenario.BufferedWriter(t, dev, 5*time.Second, "", reclaimRate)
		return func() {}
	})
	w.Wait()
	t.Logf("findings:\n%s", summary(rep))
	for _, rule := range []string{"memory-reclaim", "failing-device"} {
		if hasRule(rep, rule) {
			t.Errorf("%s found without its cause", rule)
		}
	}
}

// fastDevice is a loop device in memory, written whole first (outside any
// limited cgroup), so that the writes under test allocate no memory for
// its backing file: what it costs them is their own page cache.
func fastDevice(t *testing.T) string {
	t.Helper()
	dev := scenario.MemLoopDevice(t, 192<<20)
	if out, err := exec.Command("dd", "if=/dev/zero", "of=/dev/"+dev, "bs=1M", "oflag=direct", "status=none").CombinedOutput(); err != nil && !strings.Contains(string(out), "No space left") {
		t.Fatalf("filling %s: %v: %s", dev, err, out)
	}
	return dev
}

// TestRecordReclaimTrace records testdata/traces/loop-memcg-reclaim: the
// writer of TestMemoryReclaimInWrites in its limited memory cgroup. Only
// with -record.
func TestRecordReclaimTrace(t *testing.T) {
	if !*record {
		t.Skip("records testdata/traces again only with -record")
	}
	scenario.RequireRoot(t)
	dev := fastDevice(t)
	procs := scenario.MemoryCgroup(t, 16<<20)
	trace := filepath.Join(tracesDir, "loop-memcg-reclaim.trace.gz")
	diagnoseUnder(t, 5*time.Second, func() func() {
		scenario.BufferedWriter(t, dev, 4*time.Second, procs, reclaimRate)
		return func() {}
	}, "--record", trace)
	fi, err := os.Stat(trace)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %s (%d bytes); now run go test ./cmd/whyslow -run TestAnalyzeTraces -update", trace, fi.Size())
}
