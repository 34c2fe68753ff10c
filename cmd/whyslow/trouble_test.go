package main

// The trouble watcher in shadow mode (docs/report-schema.md, "trouble"):
// what a scenario's report says about when an armed mode would have armed.

import (
	"strings"
	"testing"

	"github.com/whyslow/whyslow/internal/report"
)

// troubleSource returns the report's status of a trouble source.
func troubleSource(tr *report.Trouble, name string) (report.TroubleSource, bool) {
	for _, s := range tr.Sources {
		if s.Source == name {
			return s, true
		}
	}
	return report.TroubleSource{}, false
}

// checkTroubleArmed checks that a run with slow storage would have armed:
// the report has the trouble section, an armed interval, and the slow
// storage calls and blocked spans mostly inside armed time; where PSI
// watched, the stall on I/O it counted. Where PSI is off (a kernel booted
// without psi=1) the source says why, and the block path's signals arm.
func checkTroubleArmed(t *testing.T, rep *report.Report) {
	t.Helper()
	tr := rep.Trouble
	if tr == nil {
		t.Fatal("the report of a live run has no trouble section")
	}
	if tr.Mode != "shadow" {
		t.Errorf("trouble mode %q, want shadow", tr.Mode)
	}
	if len(tr.Armed) == 0 || tr.FirstArmedSeconds == nil || tr.ArmedSeconds <= 0 {
		t.Fatalf("slow storage, but an armed mode would never have armed: %+v", tr)
	}
	if tr.SlowSpans == 0 || tr.SlowSpansUnarmed*2 > tr.SlowSpans {
		t.Errorf("%d of %d slow calls and blocked spans outside armed time: an armed mode would have lost most of them", tr.SlowSpansUnarmed, tr.SlowSpans)
	}
	psi, ok := troubleSource(tr, "psi_io")
	switch {
	case !ok:
		t.Error("no psi_io source in the trouble section")
	case !psi.On && psi.Reason == "":
		t.Error("psi_io is off without a reason")
	case psi.On && (tr.PSI == nil || tr.PSI.IOSomeMs < 100):
		t.Errorf("PSI watched, but the report has %+v ms of I/O stall for a throttled writer (want ≥ 100 ms)", tr.PSI)
	}
}

// checkNotArmedBy checks that no trouble signal came from dev (a
// scenario's healthy load must not look like trouble): the host's other
// disks and PSI, which is host-wide, may arm a shared machine.
func checkNotArmedBy(t *testing.T, rep *report.Report, dev string) {
	t.Helper()
	if rep.Trouble == nil {
		t.Fatal("the report of a live run has no trouble section")
	}
	for _, s := range rep.Trouble.Signals {
		if dev != "" && strings.HasPrefix(s.Detail, dev+" ") {
			t.Errorf("a healthy load on %s gave a trouble signal: %s at %.3fs: %s", dev, s.Source, s.AtSeconds, s.Detail)
		}
	}
	for _, name := range []string{"psi_io", "psi_memory", "disk_busy", "slow_submit"} {
		if _, ok := troubleSource(rep.Trouble, name); !ok {
			t.Errorf("no %s source in the trouble section", name)
		}
	}
}
