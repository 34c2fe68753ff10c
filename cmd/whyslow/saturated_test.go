package main

// A device at its capacity: a synced O_DIRECT writer (4 KiB random writes,
// each followed by fdatasync, two threads) on a disk-backed loop device
// keeps it busy with its own I/O. Nothing is wrong with the device and no
// neighbour is to blame: the top finding must be device-saturated, an
// info naming the device and fio, and no unexplained-latency or
// nothing-found. Its control: the same writer held to a few writes a
// second leaves the device idle most of the time: no device-saturated.

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/whyslow/whyslow/internal/report"
	"github.com/whyslow/whyslow/internal/scenario"
)

func TestDiagnoseDeviceSaturated(t *testing.T) {
	scenario.RequireRoot(t)
	dev := scenario.DiskLoop(t, 256<<20)

	t.Run("synced writer", func(t *testing.T) {
		var w *scenario.Fio
		rep := diagnoseUnder(t, 8*time.Second, func() func() {
			w = scenario.StartJob(t, scenario.Job{Dev: dev, RW: "randwrite", Direct: true, Fdatasync: 1,
				NumJobs: 2, GroupReporting: true, Duration: time.Minute})
			return func() { w.Stop() }
		})
		logLoads(t, w)
		logReport(t, rep)
		if len(rep.Findings) == 0 {
			t.Fatal("no findings")
		}
		for _, f := range rep.Findings {
			if f.Rule == "unexplained-latency" || f.Rule == "nothing-found" {
				t.Errorf("%s fired: %q", f.Rule, f.Title)
			}
		}
		top := rep.Findings[0]
		if top.Rule != "device-saturated" {
			t.Fatalf("top finding is %s (%q), want device-saturated:\n%s", top.Rule, top.Title, summary(rep))
		}
		t.Logf("title: %s\nexplain: %s\nremedy: %s", top.Title, top.Explanation, top.Remedy)
		if top.Severity != "info" {
			t.Errorf("severity %s, want info", top.Severity)
		}
		if !slices.Contains(top.Devices, dev) || !strings.Contains(top.Title, dev) {
			t.Errorf("finding's devices %v and title %q, want %s", top.Devices, top.Title, dev)
		}
		if v := partOf(top, w.Pid, report.PartVictim); v == nil || v.Comm != "fio" || !strings.Contains(top.Title, "fio") {
			t.Errorf("processes %+v and title %q do not name fio (pid %d)", top.Processes, top.Title, w.Pid)
		}
		if in, _ := evidenceOf(top, "in_service").(float64); in < 0.9 {
			t.Errorf("in_service %v, want at least 0.9 requests in service", evidenceOf(top, "in_service"))
		}
		if sh, _ := evidenceOf(top, "share_pct").(float64); sh < 50 {
			t.Errorf("share_pct %v, want fio's I/O most of the device's", evidenceOf(top, "share_pct"))
		}
		if p99, _ := evidenceOf(top, "service_p99_ms").(float64); p99 <= 0 || p99 >= 30 {
			t.Errorf("service_p99_ms %v, want a normal service time", evidenceOf(top, "service_p99_ms"))
		}
	})
	t.Run("light load", func(t *testing.T) {
		var w *scenario.Fio
		rep := diagnoseUnder(t, 6*time.Second, func() func() {
			w = scenario.StartJob(t, scenario.Job{Dev: dev, RW: "randwrite", Direct: true, Fdatasync: 1,
				RateIOPS: 10, Duration: time.Minute})
			return func() { w.Stop() }
		})
		logLoads(t, w)
		logReport(t, rep)
		if f, ok := findingOf(rep, "device-saturated"); ok {
			t.Errorf("device-saturated fired for a light load: %q", f.Title)
		}
		if !sawSubmissions(rep, dev) {
			t.Errorf("no submissions seen on %s: the probes did not observe the writer", dev)
		}
	})
}
